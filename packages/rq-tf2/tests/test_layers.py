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


def prelu_model() -> keras.Model:
    inputs = keras.Input((10, 10, 3), name="x")
    a = L.PReLU(shared_axes=[1, 2], name="prelu_shared")(L.Conv2D(8, 3, name="conv1")(inputs))
    a = L.PReLU(name="prelu_full")(L.Conv2D(4, 3, name="conv2")(a))  # an alpha per position: NHWC constant
    a = L.Dense(5, name="fc")(L.Flatten(name="flat")(a))
    return keras.Model(inputs, L.PReLU(name="prelu_fc")(a), name="prelus")


@pytest.mark.parametrize("preset", ["npu_cnn", "npu_transformer", "cpu"])
def test_prelu_exports_as_one_prelu_with_an_int8_slope(tmp_path, preset):
    """MTCNN's PReLU: tf2onnx writes it as five float ops (Q/DQ between Conv and its Relu breaks the
    NPU's fusion rule); rq-tf2 quantizes it as ONNX's PRelu with an int8 per-tensor slope."""
    model = prelu_model()
    rng = np.random.default_rng(0)
    alphas = {}
    for layer in model.layers:
        if isinstance(layer, L.PReLU):
            alphas[layer.name] = rng.uniform(0.05, 0.5, layer.alpha.shape).astype(np.float32)
            layer.alpha.assign(alphas[layer.name])
    qmodel = rq_tf2.quantize_model(model, preset=preset)
    assert qmodel.rq_float_ops == []
    rq_tf2.calibrate(qmodel, rng.standard_normal((32, 10, 10, 3)).astype(np.float32), batch_size=8, quiet=True)
    result = rq_tf2.export_onnx(qmodel, tmp_path / "q.onnx")
    assert result.violations == [] and validate(tmp_path / "q.onnx", preset) == []
    graph = result.model.graph
    prelus = [n for n in graph.node if n.op_type == "PRelu"]
    assert len(prelus) == 3 and not {"Neg", "Sub"} & {n.op_type for n in graph.node}
    producers = {o: n for n in graph.node for o in n.output}
    for prelu in prelus:
        assert producers[prelu.input[1]].op_type == "DequantizeLinear"  # the slope is stored as int8
    for name, alpha in alphas.items():  # the twin's slope: alpha on a per-tensor grid
        twin = qmodel.get_layer(name)
        qp = twin.weight_qparams()
        np.testing.assert_array_equal(np.asarray(twin.quantized_kernel(twin.kernel)), reference_fake_quantize(alpha, qp))
    x = rng.standard_normal((4, 10, 10, 3)).astype(np.float32)
    expected = np.asarray(qmodel(x, training=False))
    got = run_ort(tmp_path / "q.onnx", {"x": x}, as_written=True)
    assert np.abs(got - expected).max() / output_step(tmp_path / "q.onnx") <= 1.0001


def test_a_tiny_dense_bias_on_3d_inputs_is_aligned_for_the_npu(tmp_path):
    """A Dense on 3-d inputs writes MatMul + Add of its bias (MiniLM's projections): with a wide
    output and a tiny bias their positions differ by more than the NPU's 7 unless the bias's is
    lowered; the export then has no npu-add-positions violation."""
    inputs = keras.Input((4, 8), name="x")
    dense = L.Dense(8, name="proj")
    model = keras.Model(inputs, dense(inputs))
    rng = np.random.default_rng(0)
    dense.kernel.assign(rng.uniform(-2, 2, (8, 8)).astype(np.float32))
    dense.bias.assign(rng.uniform(-0.003, 0.003, 8).astype(np.float32))
    qmodel = rq_tf2.quantize_model(model, preset="npu_cnn")
    rq_tf2.calibrate(qmodel, rng.uniform(-4, 4, (16, 4, 8)).astype(np.float32), batch_size=8, quiet=True)
    assert any("Add inputs within 7 positions" in note for note in qmodel.rq_notes)
    result = rq_tf2.export_onnx(qmodel, tmp_path / "q.onnx")
    assert result.violations == [] and validate(tmp_path / "q.onnx", "npu_cnn") == []
    x = rng.uniform(-4, 4, (2, 4, 8)).astype(np.float32)
    got = run_ort(tmp_path / "q.onnx", {"x": x}, as_written=True)
    assert np.abs(got - np.asarray(qmodel(x, training=False))).max() / output_step(tmp_path / "q.onnx") <= 1.0001


def test_a_layer_no_npu_position_can_serve_runs_in_float(tmp_path):
    """rq-onnx's case (its test_npu_rules): two 1x1 Convs into one Concat share its scale on the NPU,
    one with weights near 127 (w_pos 0), one near 1e-5 (w_pos 23); shift_cut in [0, 16] leaves them no
    shared output position. The twin rq_common's finalize names unrepairable keeps a float kernel and
    is recorded as a float op (rq-onnx check agrees with the export); a saved model loads it so."""
    inputs = keras.Input((4, 4, 2), name="x")
    big, tiny = L.Conv2D(2, 1, use_bias=False, name="conv_big"), L.Conv2D(2, 1, use_bias=False, name="conv_tiny")
    model = keras.Model(inputs, L.Concatenate(name="cat")([big(inputs), tiny(inputs)]))
    rng = np.random.default_rng(0)
    big.kernel.assign(rng.uniform(60, 127, (1, 1, 2, 2)).astype(np.float32))
    tiny.kernel.assign(rng.uniform(0.6e-5, 1.2e-5, (1, 1, 2, 2)).astype(np.float32))
    qmodel = rq_tf2.quantize_model(model, preset="npu_cnn")
    rq_tf2.calibrate(qmodel, rng.uniform(0, 1, (16, 4, 4, 2)).astype(np.float32), batch_size=8, quiet=True)
    assert [op.node for op in qmodel.rq_float_ops] == ["conv_tiny"]
    assert "shift_cut needs an output position in [14, 30]" in qmodel.rq_float_ops[0].reason  # w_pos 23 + in_pos 7
    assert any(note.startswith("conv_tiny: kept in float") for note in qmodel.rq_notes)
    result = rq_tf2.export_onnx(qmodel, tmp_path / "q.onnx")
    assert result.violations == [] and validate(tmp_path / "q.onnx", "npu_cnn") == []
    assert "conv_tiny" not in result.quantized_ops and "conv_big" in result.quantized_ops
    producers = {o: n for n in result.model.graph.node for o in n.output}
    initializers = {t.name for t in result.model.graph.initializer}
    weights = {n.name: n.input[1] for n in result.model.graph.node if n.op_type == "Conv"}
    (tiny_weight,) = [w for name, w in weights.items() if "conv_tiny" in name]
    (big_weight,) = [w for name, w in weights.items() if "conv_big" in name]
    assert tiny_weight in initializers and producers[big_weight].op_type == "DequantizeLinear"  # float / int8
    x = rng.uniform(0, 1, (2, 4, 4, 2)).astype(np.float32)
    got = run_ort(tmp_path / "q.onnx", {"x": x}, as_written=True)
    assert np.abs(got - np.asarray(qmodel(x, training=False))).max() / output_step(tmp_path / "q.onnx") <= 1.0001

    qmodel.save(tmp_path / "q.keras")
    loaded = rq_tf2.load_model(tmp_path / "q.keras")
    again = rq_tf2.export_onnx(loaded, tmp_path / "again.onnx")
    assert again.violations == [] and "conv_tiny" not in again.quantized_ops
    assert (tmp_path / "again.onnx").read_bytes() == (tmp_path / "q.onnx").read_bytes()
