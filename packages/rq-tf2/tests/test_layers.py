"""Fake quantization against rq_common's reference, and layer coverage through export."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import rq_tf2
from rq_common import QParams, QuantSpec
from rq_common import fake_quantize as reference_fake_quantize
from rq_common.format import validate
from rq_tf2.fake_quant import fake_quantize

from conftest import output_step, run_ort

L = keras.layers


@pytest.mark.parametrize("dtype,zero_point", [("int8", 0), ("uint8", 128), ("uint8", 37), ("int8", -128)])
def test_fake_quantize_matches_the_reference_bit_for_bit(dtype, zero_point):
    rng = np.random.default_rng(0)
    scale = np.float32(0.0123)  # not a power of two: division and multiplication by 1/s differ here
    x = (rng.standard_normal(20000) * 1.5).astype(np.float32)
    ties = ((np.arange(-300, 300) + 0.5) * scale).astype(np.float32)  # exact halfway points
    x = np.concatenate([x, ties])
    spec = QuantSpec(dtype=dtype, symmetric=False)
    expected = reference_fake_quantize(x, QParams(scale, np.int64(zero_point), spec))
    got = fake_quantize(x, scale, zero_point, spec.qmin, spec.qmax).numpy()
    np.testing.assert_array_equal(got, expected)


def test_per_channel_fake_quantize_and_straight_through_gradient():
    rng = np.random.default_rng(1)
    w = rng.standard_normal((3, 3, 4, 8)).astype(np.float32)
    scale = (np.abs(w).reshape(-1, 8).max(axis=0) / 127).astype(np.float32)
    spec = QuantSpec(granularity="per_channel", axis=3)
    expected = reference_fake_quantize(w, QParams(scale, np.zeros(8, np.int64), spec, axis=3))
    variable = tf.Variable(w)
    with tf.GradientTape() as tape:
        got = fake_quantize(variable, scale, np.zeros(8, np.float32), -128, 127, axis=3)
        loss = tf.reduce_sum(got * 2.0)
    np.testing.assert_array_equal(got.numpy(), expected)
    np.testing.assert_array_equal(tape.gradient(loss, variable).numpy(), np.full(w.shape, 2.0, np.float32))


def coverage_model() -> keras.Model:
    inputs = keras.Input((8, 8, 4), name="x")
    a = L.SeparableConv2D(8, 3, padding="same", name="sep")(inputs)
    a = L.LeakyReLU(0.1, name="leaky")(a)
    b = L.Conv2DTranspose(8, 2, strides=2, name="up_conv")(L.MaxPooling2D(2, name="down")(inputs))
    b = L.Activation("relu", name="up_relu")(b)
    c = L.Multiply(name="gate")([a, L.Activation("sigmoid", name="sig")(b)])
    d = L.Concatenate(name="cat")([c, L.UpSampling2D(2, name="upsample")(L.AveragePooling2D(2, name="avg")(b))])
    d = L.Conv2D(6, 1, activation="tanh", name="mix")(L.ZeroPadding2D(1, name="pad")(d))
    d = L.Dropout(0.5, name="drop")(L.Flatten(name="flat")(d))
    return keras.Model(inputs, L.Dense(5, activation="softmax", name="head")(d), name="coverage")


@pytest.mark.parametrize("preset", ["npu_cnn", "cpu"])
def test_every_covered_layer_exports_quantized(tmp_path, preset):
    model = coverage_model()
    rng = np.random.default_rng(0)
    for layer in model.layers:  # non-zero biases, so the int bias path is exercised
        if getattr(layer, "bias", None) is not None:
            layer.bias.assign(rng.standard_normal(layer.bias.shape).astype(np.float32) * 0.1)
    qmodel = rq_tf2.quantize_model(model, preset=preset)
    assert qmodel.rq_float_ops == [] or all("pass through" in op.reason for op in qmodel.rq_float_ops)
    rq_tf2.calibrate(qmodel, rng.standard_normal((32, 8, 8, 4)).astype(np.float32), batch_size=8, quiet=True)
    result = rq_tf2.export_onnx(qmodel, tmp_path / "q.onnx")
    assert result.violations == [] and validate(tmp_path / "q.onnx", preset) == []
    x = rng.standard_normal((4, 8, 8, 4)).astype(np.float32)
    expected = np.asarray(qmodel(x, training=False))
    got = run_ort(tmp_path / "q.onnx", {"x": x}, as_written=True)
    assert np.abs(got - expected).max() / output_step(tmp_path / "q.onnx") <= 1.0001
    if preset == "npu_cnn":  # the NPU's LeakyReLU slope: 0.1 rounds to 26/256
        assert qmodel.get_layer("leaky").negative_slope == pytest.approx(26 / 256)
