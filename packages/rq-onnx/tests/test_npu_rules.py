"""npu_cnn: the NPU's fixed-point rules hold in what rq-onnx writes, repaired where needed."""

import nets
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from rq_common.format import GraphIndex, qdq_params
from rq_common.qmath import npu_rules
from rq_onnx import quantize_static

from conftest import ArrayReader, run, sqnr_db


def positions(model: onnx.ModelProto) -> dict[str, int]:
    """pos of every QuantizeLinear's scale, by the tensor it quantizes."""
    index = GraphIndex(model)
    return {n.input[0]: npu_rules.position(qdq_params(index, n).scale) for n in model.graph.node if n.op_type == "QuantizeLinear"}


def test_cancelling_weights_force_a_shift_cut_repair(tmp_path):
    """Two equal channels and weights (+1, -1): the output is tiny, its MinMSE position would make
    shift_cut negative; the NPU needs out_pos <= w_pos + in_pos."""
    w = numpy_helper.from_array(np.array([1.0, -1.0], np.float32).reshape(1, 2, 1, 1), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], name="conv")],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 4, 4])],
        [w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    rng = np.random.default_rng(0)
    base = rng.uniform(-100, 100, (16, 1, 1, 4, 4)).astype(np.float32)
    data = np.concatenate([base, base + 1e-3 * rng.standard_normal(base.shape).astype(np.float32)], axis=2)[:, 0]
    result = quantize_static(model, tmp_path / "q.onnx", ArrayReader("x", data), preset="npu_cnn", quiet=True)
    pos = positions(result.model)
    w_pos = 6  # max|w| = 1 -> 1/127 -> 2^-6
    assert pos["x"] == 0  # 100/127 -> 2^0
    assert npu_rules.shift_cut(w_pos, pos["x"], pos["y_float"]) == 0
    assert any("'y': output position 15 -> 6" in n and "shift_cut" in n for n in result.notes)
    assert result.violations == []


def test_add_inputs_within_seven_positions(tmp_path):
    graph = helper.make_graph(
        [
            helper.make_node("Mul", ["x", "big"], ["a"], name="scale_up"),
            helper.make_node("Mul", ["x", "small"], ["b"], name="scale_down"),
            helper.make_node("Add", ["a", "b"], ["y"], name="add"),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])],
        [numpy_helper.from_array(np.float32(500.0), "big"), numpy_helper.from_array(np.float32(0.01), "small")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    data = np.random.default_rng(0).standard_normal((8, 8)).astype(np.float32)
    result = quantize_static(model, None, ArrayReader("x", data), preset="npu_cnn", quiet=True)
    pos = positions(result.model)
    assert abs(pos["a"] - pos["b"]) <= npu_rules.ADD_MAX_POSITION_GAP
    assert any("Add inputs within 7 positions" in n for n in result.notes)
    assert result.violations == []


def test_relu_fused_concat_and_pool_share_scales():
    model = nets.mobilenet_v2_net()
    data = np.random.default_rng(0).standard_normal((8, 3, 32, 32)).astype(np.float32)
    result = quantize_static(model, None, ArrayReader("input", data), preset="npu_cnn", quiet=True)
    assert result.violations == []
    graph = result.model.graph
    producers = {o: n for n in graph.node for o in n.output}
    for clip in (n for n in graph.node if n.op_type == "Clip"):
        assert producers[clip.input[0]].op_type == "Conv"  # no Q/DQ between Conv and ReLU6
    concat = next(n for n in graph.node if n.op_type == "Concat")
    pos = positions(result.model)
    index = GraphIndex(result.model)
    input_positions = {npu_rules.position(qdq_params(index, producers[x]).scale) for x in concat.input}
    assert input_positions == {pos[concat.output[0]]}


def test_large_bias_on_small_inputs_gets_a_repaired_bias_position(tmp_path):
    """w_pos 6 + in_pos 10 = 16, bias 100 would sit at pos 0: shift_bias 16 > 15, so pos 1."""
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w", "b"], ["y"], name="conv")],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 4, 4])],
        [
            numpy_helper.from_array(np.ones((1, 1, 1, 1), np.float32), "w"),
            numpy_helper.from_array(np.array([100.0], np.float32), "b"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    data = np.random.default_rng(0).uniform(-0.1, 0.1, (8, 1, 4, 4)).astype(np.float32)
    result = quantize_static(
        model, None, ArrayReader("x", data), preset="npu_cnn", quiet=True, calibrate_method="pot_nonoverflow"
    )
    index = GraphIndex(result.model)
    bias_dq = next(
        n for n in result.model.graph.node if n.op_type == "DequantizeLinear" and n.output[0] == "conv_bias_dequantized"
    )
    assert npu_rules.position(qdq_params(index, bias_dq).scale) == 1
    assert any("conv: bias scale 1 -> 0.5 (shift_bias limits)" in n for n in result.notes)
    assert result.violations == []


def test_a_tiny_bias_added_to_a_wide_matmul_output_is_aligned(tmp_path):
    """A transformer's 3-D MatMul keeps its bias as an Add of a constant (MiniLM's key projection:
    positions 15 and 3). The constant's position is lowered to within 7 of the activation's; the
    model is written (it passes the check) and stays close to float."""
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w"], ["h"], name="matmul"),
            helper.make_node("Add", ["bias", "h"], ["y"], name="bias_add"),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8])],
        [
            numpy_helper.from_array(np.random.default_rng(1).uniform(-2, 2, (8, 8)).astype(np.float32), "w"),
            numpy_helper.from_array(np.random.default_rng(2).uniform(-0.003, 0.003, 8).astype(np.float32), "bias"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    data = np.random.default_rng(3).uniform(-4, 4, (8, 4, 8)).astype(np.float32)
    result = quantize_static(model, tmp_path / "q.onnx", ArrayReader("x", data), preset="npu_cnn", quiet=True)
    assert result.violations == [] and (tmp_path / "q.onnx").exists()
    pos = positions(result.model)
    index = GraphIndex(result.model)
    bias_dq = next(n for n in result.model.graph.node if n.op_type == "DequantizeLinear" and n.input[0].startswith("bias"))
    assert npu_rules.position(qdq_params(index, bias_dq).scale) == pos["h"] + npu_rules.ADD_MAX_POSITION_GAP
    assert any("'bias'" in n and "Add inputs within 7 positions" in n for n in result.notes)
    (expected,) = run(model, {"x": data[:1]})
    (actual,) = run(result.model, {"x": data[:1]})
    assert sqnr_db(expected, actual) > 24  # the bias-free MatMul alone: 25.9 dB


def test_a_shift_rule_no_position_can_satisfy_keeps_that_op_in_float(tmp_path):
    """Two Convs into one Concat share the Concat's scale on the NPU. One has weights near 127 (w_pos
    0), the other near 1e-5 (w_pos 23): shift_cut in [0, 16] needs out_pos <= in_pos for the first
    and out_pos >= in_pos + 7 for the second, so no shared position exists. The op the repair could
    not satisfy runs in float (a note says why); the rest is written in the format."""
    rng = np.random.default_rng(0)
    big = rng.uniform(60, 127, (2, 2, 1, 1)).astype(np.float32)
    tiny = rng.uniform(0.6e-5, 1.2e-5, (2, 2, 1, 1)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "big"], ["a"], name="conv_big"),
            helper.make_node("Conv", ["x", "tiny"], ["b"], name="conv_tiny"),
            helper.make_node("Concat", ["a", "b"], ["y"], name="cat", axis=1),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 4, 4])],
        [numpy_helper.from_array(big, "big"), numpy_helper.from_array(tiny, "tiny")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    data = rng.uniform(0, 1, (8, 1, 2, 4, 4)).astype(np.float32)[:, 0]
    result = quantize_static(model, tmp_path / "q.onnx", ArrayReader("x", data), preset="npu_cnn", quiet=True)
    assert result.violations == [] and (tmp_path / "q.onnx").exists()
    floats = {f.node: f.reason for f in result.float_ops}
    assert list(floats) == ["conv_tiny"]  # the one whose range excludes the calibrated position
    assert "shift_cut needs an output position in [14, 30]" in floats["conv_tiny"]  # w_pos 23 + in_pos 7 = 30
    assert any(n.startswith("conv_tiny: kept in float") for n in result.notes)
    (expected,) = run(model, {"x": data[:1]})
    (actual,) = run(result.model, {"x": data[:1]}, as_written=True)  # big weights: ORT's u8s8 kernels may saturate
    assert np.abs(actual - expected).max() <= 2.0  # one step of the shared output scale (2^1), and no clipping
