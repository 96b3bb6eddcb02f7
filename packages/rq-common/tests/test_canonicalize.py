"""Exporter-style models in, the int8 format out, with the same ONNX Runtime outputs."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from rq_common import FormatError, QParams, QuantSpec, fake_quantize, get_preset
from rq_common.format import canonicalize, validate

from conftest import make_model, run_ort
from models import IN_SHAPE, float_conv_model, initializer

S_X, S_W, S_Y = np.float32(2.0**-5), np.float32(2.0**-7), np.float32(2.0**-4)


def exporter_style_model(rng, bias_on_grid: bool, y_zero_point: int = 128):
    """What tf2onnx-like exporters write: uint8 zp-128 Q/DQ, float weight quantized at run time,
    a duplicated Q/DQ pair on the output, twin Q/DQ pairs on the input, and a float bias."""
    w = (rng.standard_normal((4, 3, 3, 3)) * 0.3).astype(np.float32)
    if bias_on_grid:
        b = (rng.integers(-3000, 3000, 4) * (S_X * S_W)).astype(np.float32)
    else:
        b = (rng.standard_normal(4) * 0.2).astype(np.float32)
    u8 = lambda v: numpy_helper.from_array(np.uint8(v), "zp128") if v == 128 else numpy_helper.from_array(np.uint8(v), f"zp{v}")
    inits = [
        numpy_helper.from_array(w, "W"),
        numpy_helper.from_array(b, "B"),
        numpy_helper.from_array(S_X, "s_x"),
        numpy_helper.from_array(S_W, "s_w"),
        numpy_helper.from_array(S_Y, "s_y"),
        u8(128),
    ]
    if y_zero_point != 128:
        inits.append(u8(y_zero_point))
    zy = "zp128" if y_zero_point == 128 else f"zp{y_zero_point}"
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s_x", "zp128"], ["xq1"], name="x_q1"),
        helper.make_node("DequantizeLinear", ["xq1", "s_x", "zp128"], ["xd1"], name="x_dq1"),
        helper.make_node("QuantizeLinear", ["x", "s_x", "zp128"], ["xq2"], name="x_q2"),
        helper.make_node("DequantizeLinear", ["xq2", "s_x", "zp128"], ["xd2"], name="x_dq2"),
        helper.make_node("QuantizeLinear", ["W", "s_w", "zp128"], ["wq"], name="w_q"),
        helper.make_node("DequantizeLinear", ["wq", "s_w", "zp128"], ["wd"], name="w_dq"),
        helper.make_node("Conv", ["xd1", "wd", "B"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("QuantizeLinear", ["r", "s_y", zy], ["rq1"], name="r_q1"),
        helper.make_node("DequantizeLinear", ["rq1", "s_y", zy], ["rd1"], name="r_dq1"),
        helper.make_node("QuantizeLinear", ["rd1", "s_y", zy], ["rq2"], name="r_q2"),
        helper.make_node("DequantizeLinear", ["rq2", "s_y", zy], ["y"], name="r_dq2"),
        helper.make_node("Add", ["xd1", "xd2"], ["x2"], name="add"),
    ]
    return make_model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, IN_SHAPE)],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8]),
            helper.make_tensor_value_info("x2", TensorProto.FLOAT, IN_SHAPE),
        ],
        inits,
    )


def outputs(model, x):
    return run_ort(model, {"x": x})


@pytest.mark.parametrize(
    ("preset", "y_zero_point"), [("npu_transformer", 128), ("npu_transformer", 3), ("cpu", 3), ("npu_cnn", 128)]
)
def test_canonical_form_passes_and_keeps_the_numbers(rng, preset, y_zero_point):
    model = exporter_style_model(rng, bias_on_grid=preset != "npu_cnn", y_zero_point=y_zero_point)
    if preset != "npu_cnn":
        assert validate(model, preset) != []
    before = model.SerializeToString()
    result = canonicalize(model, preset)
    assert model.SerializeToString() == before, "the input model must not change"
    assert validate(result.model, preset) == [], result.log
    ops = [n.op_type for n in result.model.graph.node]
    assert ops.count("QuantizeLinear") == 2, ops  # twins and the duplicate pair are gone
    x = rng.uniform(-4, 4, IN_SHAPE).astype(np.float32)
    x[0, 0, 0, :4] = S_X * (np.arange(4) + 0.5)  # ties
    for got, expected in zip(outputs(result.model, x), outputs(model, x)):
        if preset == "npu_cnn":  # the float bias became int8 at its own scale: within one output step
            assert np.max(np.abs(got - expected)) <= S_Y
        else:
            np.testing.assert_array_equal(got, expected)


def test_canonical_weights_are_int8_and_activations_follow_the_preset(rng):
    result = canonicalize(exporter_style_model(rng, bias_on_grid=True), "A8W8")
    graph = result.model.graph
    dtypes = {t.name: t.data_type for t in graph.initializer}
    weight_dq = next(
        n
        for n in graph.node
        if n.op_type == "DequantizeLinear" and n.input[0] in dtypes and dtypes[n.input[0]] == TensorProto.INT8
    )
    assert np.all(numpy_helper.to_array(next(t for t in graph.initializer if t.name == weight_dq.input[2])) == 0)
    bias_dq = next(n for n in graph.node if n.op_type == "DequantizeLinear" and dtypes.get(n.input[0]) == TensorProto.INT32)
    assert numpy_helper.to_array(next(t for t in graph.initializer if t.name == bias_dq.input[1])) == S_X * S_W
    assert not any(t.data_type == TensorProto.FLOAT and t.name in ("W", "B") for t in graph.initializer)
    assert any("float bias" in line for line in result.log)


def test_known_weight_qparams_recover_folded_weights(rng):
    model = float_conv_model(rng, with_bias=False)
    spec = QuantSpec(dtype="int8", scale_type="power_of_two")
    qp = QParams(np.float32(2.0**-6), 0, spec)
    folded = fake_quantize(initializer(model, "W"), qp)  # what tf2onnx leaves after constant folding
    model.graph.initializer[0].CopyFrom(numpy_helper.from_array(folded, "W"))
    result = canonicalize(model, "npu_cnn", weight_qparams={"W": qp})
    q = numpy_helper.to_array(next(t for t in result.model.graph.initializer if t.name == "W_quantized"))
    assert q.dtype == np.int8
    np.testing.assert_array_equal(q.astype(np.float32) * qp.scale, folded)
    x = rng.standard_normal(IN_SHAPE).astype(np.float32)
    np.testing.assert_array_equal(outputs(result.model, x)[0], outputs(model, x)[0])
    with pytest.raises(FormatError, match="not an initializer"):
        canonicalize(model, "npu_cnn", weight_qparams={"nope": qp})


def test_old_opset_is_rejected_with_the_fix(rng):
    with pytest.raises(FormatError, match="version_converter"):
        canonicalize(float_conv_model(rng, opset=11), "cpu")


def test_canonicalize_is_deterministic(rng):
    model = exporter_style_model(rng, bias_on_grid=False)
    a = canonicalize(model, "cpu").model.SerializeToString(deterministic=True)
    b = canonicalize(onnx.load_from_string(model.SerializeToString()), "cpu").model.SerializeToString(deterministic=True)
    assert a == b


def test_preset_already_canonical_is_left_alone(rng):
    from models import quantized_conv_model

    model, _ = quantized_conv_model(rng, "cpu")
    result = canonicalize(model, "cpu")
    assert result.log == []
    assert result.model.SerializeToString(deterministic=True) == model.SerializeToString(deterministic=True)
    assert get_preset("cpu").activation.dtype.value == "uint8"


def test_pass_through_ops_get_the_same_qdq_on_both_sides_and_the_numbers_stay(rng):
    """tf2onnx's layout: Q/DQ -> Transpose -> Conv, and GlobalAveragePool -> Squeeze -> Q/DQ."""
    w = (rng.integers(-127, 128, (4, 3, 3, 3)) * S_W).astype(np.float32)
    inits = [
        numpy_helper.from_array(w, "W"),
        numpy_helper.from_array(S_X, "s_x"),
        numpy_helper.from_array(S_Y, "s_y"),
        numpy_helper.from_array(np.int8(0), "zp"),
        numpy_helper.from_array(np.array([2, 3], np.int64), "axes"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s_x", "zp"], ["xq"], name="x_q"),
        helper.make_node("DequantizeLinear", ["xq", "s_x", "zp"], ["xd"], name="x_dq"),
        helper.make_node("Transpose", ["xd"], ["xt"], name="to_nchw", perm=[0, 3, 1, 2]),
        helper.make_node("Conv", ["xt", "W"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("QuantizeLinear", ["c", "s_y", "zp"], ["cq"], name="c_q"),
        helper.make_node("DequantizeLinear", ["cq", "s_y", "zp"], ["cd"], name="c_dq"),
        helper.make_node("GlobalAveragePool", ["cd"], ["g"], name="gap"),
        helper.make_node("Squeeze", ["g", "axes"], ["s"], name="squeeze"),
        helper.make_node("QuantizeLinear", ["s", "s_y", "zp"], ["sq"], name="s_q"),
        helper.make_node("DequantizeLinear", ["sq", "s_y", "zp"], ["y"], name="s_dq"),
    ]
    model = make_model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 8, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        inits,
    )
    weight_qp = QParams(np.float32(S_W), np.int8(0), get_preset("npu_transformer").weight)
    result = canonicalize(model, "npu_transformer", weight_qparams={"W": weight_qp})
    by_name = {n.name: n for n in result.model.graph.node}
    producers = {o: n for n in result.model.graph.node for o in n.output}
    assert producers[by_name["conv"].input[0]].op_type == "DequantizeLinear"  # after the Transpose now
    assert producers[by_name["squeeze"].input[0]].op_type == "DequantizeLinear"  # before the Squeeze now
    x = rng.standard_normal((1, 8, 8, 3)).astype(np.float32)
    np.testing.assert_array_equal(run_ort(result.model, {"x": x})[0], run_ort(model, {"x": x})[0])
    assert validate(result.model, "npu_transformer") == []


def test_matmul_and_bias_add_on_a_2d_input_become_one_gemm(rng):
    w = rng.standard_normal((6, 4)).astype(np.float32)
    b = rng.standard_normal(4).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["m"], name="dense"),
        helper.make_node("Add", ["m", "B"], ["y"], name="bias"),
        helper.make_node("MatMul", ["x3", "W"], ["m3"], name="dense3d"),  # 3-d input: stays MatMul + Add
        helper.make_node("Add", ["m3", "B"], ["y3"], name="bias3d"),
    ]
    model = make_model(
        nodes,
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 6]),
            helper.make_tensor_value_info("x3", TensorProto.FLOAT, [2, 3, 6]),
        ],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4]),
            helper.make_tensor_value_info("y3", TensorProto.FLOAT, [2, 3, 4]),
        ],
        [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "B")],
    )
    fused = onnx.ModelProto()
    fused.CopyFrom(model)
    from rq_common.format import fuse_matmul_bias

    assert len(fuse_matmul_bias(fused)) == 1
    assert [n.op_type for n in fused.graph.node] == ["Gemm", "MatMul", "Add"]
    feeds = {"x": rng.standard_normal((2, 6)).astype(np.float32), "x3": rng.standard_normal((2, 3, 6)).astype(np.float32)}
    for got, expected in zip(run_ort(fused, feeds), run_ort(model, feeds)):
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)
