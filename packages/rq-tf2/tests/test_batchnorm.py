"""A BatchNormalization after every conv type rq-tf2 quantizes is folded (PTQ) or kept apart in
the twin (QAT with freeze_bn_after): no float BatchNormalization is left to break the NPU's fusions."""

import keras
import nets
import numpy as np
import pytest

import rq_tf2
from rq_common.format import validate
from rq_tf2.transform import set_mode

from conftest import run_ort

L = keras.layers

CONVS = {  # kind -> (the layer, one sample's shape)
    "conv1d": (lambda: L.Conv1D(6, 3, name="conv"), (10, 4)),
    "conv2d": (lambda: L.Conv2D(6, 3, name="conv"), (8, 8, 4)),
    "depthwise": (lambda: L.DepthwiseConv2D(3, depth_multiplier=2, name="conv"), (8, 8, 4)),
    "separable": (lambda: L.SeparableConv2D(6, 3, depth_multiplier=2, name="conv"), (8, 8, 4)),
    "separable_no_bias": (lambda: L.SeparableConv2D(6, 3, use_bias=False, name="conv"), (8, 8, 4)),
    "transpose": (lambda: L.Conv2DTranspose(6, 2, strides=2, name="conv"), (4, 4, 4)),
    "dense": (lambda: L.Dense(6, name="conv"), (12,)),
    "dense_3d": (lambda: L.Dense(6, name="conv"), (5, 12)),  # MatMul + its bias Add: BN's shift goes into the Add
    "dense_3d_no_bias": (lambda: L.Dense(6, use_bias=False, name="conv"), (5, 12)),
}


def conv_bn_model(kind: str) -> keras.Model:
    make, shape = CONVS[kind]
    inputs = keras.Input(shape, name="x")
    conv = make()
    y = L.ReLU(name="relu")(L.BatchNormalization(name="bn")(conv(inputs)))
    model = nets.randomize_batchnorm(keras.Model(inputs, y, name=kind))
    rng = np.random.default_rng(1)
    if getattr(conv, "bias", None) is not None:
        conv.bias.assign(rng.standard_normal(conv.bias.shape).astype(np.float32) * 0.3)
    bn = model.get_layer("bn")  # statistics far from (0, 1), so a BN left out or applied twice shows
    n = bn.moving_mean.shape[0]
    bn.moving_mean.assign(rng.uniform(-0.5, 0.5, n).astype(np.float32))
    bn.moving_variance.assign(rng.uniform(0.2, 3.0, n).astype(np.float32))
    bn.gamma.assign(rng.uniform(0.5, 2.0, n).astype(np.float32))
    bn.beta.assign(rng.uniform(-0.5, 0.5, n).astype(np.float32))
    return model


def output_step(qmodel: keras.Model) -> float:
    """The scale of the quantizer on the model's output (tf2onnx writes a Conv1D's output through a
    Squeeze, so the graph output is not a DequantizeLinear's)."""
    quantizer = qmodel.get_layer("relu_quant")
    assert quantizer.output is qmodel.output
    return float(quantizer.qparams().scale)


def sqnr_db(reference, got) -> float:
    return float(10 * np.log10(np.sum(reference**2) / np.sum((got - reference) ** 2)))


@pytest.mark.parametrize("kind", list(CONVS))
def test_batchnorm_after_each_conv_type_is_folded(tmp_path, kind):
    model = conv_bn_model(kind)
    shape = CONVS[kind][1]
    rng = np.random.default_rng(0)
    calibration = rng.standard_normal((32, *shape)).astype(np.float32)
    x = rng.standard_normal((4, *shape)).astype(np.float32)
    float_out = np.asarray(model(x, training=False))

    qmodel = rq_tf2.quantize_model(model, preset="npu_cnn")
    assert qmodel.rq_float_ops == []
    assert not any(isinstance(layer, L.BatchNormalization) for layer in qmodel.layers)
    np.testing.assert_allclose(np.asarray(qmodel(x, training=False)), float_out, rtol=1e-4, atol=1e-4)  # fold only (OFF)

    rq_tf2.calibrate(qmodel, calibration, batch_size=8, quiet=True)
    path = tmp_path / "q.onnx"
    result = rq_tf2.export_onnx(qmodel, path)
    assert validate(path, "npu_cnn") == []
    assert not {"BatchNormalization", "Mul", "Sub"} & {n.op_type for n in result.model.graph.node}
    expected = np.asarray(qmodel(x, training=False))
    got = run_ort(path, {"x": x}, as_written=True)
    assert np.abs(got - expected).max() / output_step(qmodel) <= 1.0001
    assert sqnr_db(float_out, got) > 25


def test_separable_conv_batchnorm_is_kept_apart_for_qat_then_frozen(tmp_path):
    """As for a Conv2D: the pointwise twin folds the BN into the kernel it quantizes and, for the
    first freeze_bn_after steps, normalizes with batch statistics (moving ones learn), then not."""
    model = conv_bn_model("separable")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 8, 8, 4)).astype(np.float32)
    y = np.asarray(model(x, training=False)) * 1.5 + 0.1  # a target the BN's statistics must move for
    qmodel = rq_tf2.quantize_model(model, preset="npu_cnn", freeze_bn_after=4)
    pointwise = qmodel.get_layer("conv")
    assert isinstance(pointwise, rq_tf2.QuantConv2D) and pointwise.batchnorm is not None
    assert qmodel.rq_float_ops == [] and "bn" not in {layer.name for layer in qmodel.layers}
    set_mode(qmodel, rq_tf2.Mode.OFF)
    np.testing.assert_allclose(np.asarray(qmodel(x[:4])), np.asarray(model(x[:4], training=False)), rtol=1e-4, atol=1e-4)
    rq_tf2.calibrate(qmodel, x, batch_size=16, quiet=True)
    qmodel.compile(keras.optimizers.SGD(1e-3), "mse")
    mean_before = np.asarray(pointwise.bn_moving_mean).copy()
    qmodel.fit(x, y, batch_size=16, epochs=1, verbose=0)  # 4 steps: the BN learns
    assert int(pointwise.bn_steps.numpy()) == 4 and not np.array_equal(np.asarray(pointwise.bn_moving_mean), mean_before)
    frozen = np.asarray(pointwise.bn_moving_mean).copy()
    qmodel.fit(x, y, batch_size=16, epochs=1, verbose=0)
    np.testing.assert_array_equal(np.asarray(pointwise.bn_moving_mean), frozen)
    assert int(pointwise.bn_steps.numpy()) == 4
    path = tmp_path / "qat.onnx"
    rq_tf2.export_onnx(qmodel, path)
    assert validate(path, "npu_cnn") == []
    got = run_ort(path, {"x": x[:4]}, as_written=True)
    assert np.abs(got - np.asarray(qmodel(x[:4], training=False))).max() / output_step(qmodel) <= 1.0001


def test_dense_on_3d_inputs_folds_its_batchnorm_at_once_for_qat_and_says_so():
    """Its bias is a separate Add, which a BN kept apart in the MatMul's twin cannot run before."""
    model = conv_bn_model("dense_3d")
    x = np.random.default_rng(0).standard_normal((4, 5, 12)).astype(np.float32)
    with pytest.warns(UserWarning, match="'bn' after Dense 'conv' on 3-d inputs is folded now"):
        qmodel = rq_tf2.quantize_model(model, preset="npu_cnn", freeze_bn_after=4)
    assert qmodel.get_layer("conv").batchnorm is None and qmodel.rq_float_ops == []
    np.testing.assert_allclose(np.asarray(qmodel(x)), np.asarray(model(x, training=False)), rtol=1e-4, atol=1e-4)
