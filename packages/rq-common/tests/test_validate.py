"""Each violation class on a small hand-built model, and the builders' output passing."""

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from rq_common.format import ViolationKind, validate

from conftest import run_ort
from models import IN_SHAPE, float_conv_model, initializer, node, quantized_conv_model, set_initializer

PRESETS = ["npu_cnn", "npu_transformer", "cpu"]


def kinds(model, preset, **kw):
    return {v.kind for v in validate(model, preset, **kw)}


@pytest.mark.parametrize("preset", PRESETS)
def test_builder_output_is_in_the_format_and_runs(rng, preset):
    model, qp = quantized_conv_model(rng, preset)
    assert validate(model, preset) == []
    x = rng.uniform(-3, 3, IN_SHAPE).astype(np.float32)
    (y,) = run_ort(model, {"x": x})
    assert y.shape == (1, 4, 8, 8) and np.all(y >= 0)


def test_checker_failure(rng):
    model, _ = quantized_conv_model(rng, "cpu")
    model.graph.node.append(helper.make_node("Relu", ["does_not_exist"], ["z"], name="broken"))
    assert ViolationKind.CHECKER_FAILED in kinds(model, "cpu")


def test_opset_too_low(rng):
    model = float_conv_model(rng, opset=11)
    violations = validate(model, "cpu", required_ops=())
    assert [v.kind for v in violations] == [ViolationKind.OPSET_TOO_LOW]


def test_quantized_integers_at_the_graph_boundary(rng):
    model, _ = quantized_conv_model(rng, "cpu")
    quantized_output = next(n.output[0] for n in model.graph.node if n.op_type == "QuantizeLinear")
    model.graph.output.append(helper.make_tensor_value_info(quantized_output, TensorProto.UINT8, None))
    violations = [v for v in validate(model, "cpu") if v.kind is ViolationKind.NON_FLOAT_IO]
    assert [v.tensor for v in violations] == [quantized_output]


def test_integer_inputs_and_outputs_of_the_float_model_are_legal():
    """A text model's token ids (int64) in, and an argmax (int64) out, around a quantized MatMul."""
    from rq_common.format import make_qdq, make_quantized_constant
    from rq_common.qmath import compute_qparams
    from rq_common.spec import get_preset

    preset = get_preset("cpu")
    table = np.random.default_rng(0).standard_normal((10, 4)).astype(np.float32)
    weight = np.random.default_rng(1).standard_normal((4, 3)).astype(np.float32)
    act = compute_qparams(np.float64(-3), np.float64(3), preset.activation)
    w_spec = preset.weight.replace(granularity="per_tensor", axis=None)
    w = make_quantized_constant("w", weight, compute_qparams(np.float64(weight.min()), np.float64(weight.max()), w_spec))
    qdq = make_qdq("embedded", act)
    graph = helper.make_graph(
        [
            helper.make_node("Gather", ["table", "ids"], ["embedded"]),
            *qdq.nodes,
            *w.nodes,
            helper.make_node("MatMul", [qdq.output, w.output], ["logits"]),
            helper.make_node("ArgMax", ["logits"], ["best"], axis=-1, keepdims=0),
        ],
        "text",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, [2, 5])],
        [helper.make_tensor_value_info("best", TensorProto.INT64, [2, 5])],
        [numpy_helper.from_array(table, "table"), *qdq.initializers, *w.initializers],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    assert ViolationKind.NON_FLOAT_IO not in kinds(model, "cpu")
    (best,) = run_ort(model, {"ids": np.arange(10).reshape(2, 5)})
    assert best.shape == (2, 5)


def test_missing_qdq_on_activation_input(rng):
    model, _ = quantized_conv_model(rng, "npu_cnn")
    node(model, "conv").input[0] = "x"
    violations = validate(model, "npu_cnn")
    assert [(v.kind, v.node, v.tensor) for v in violations if v.kind is ViolationKind.MISSING_QDQ] == [
        (ViolationKind.MISSING_QDQ, "conv", "x")
    ]


def test_unquantized_op_on_npu_but_not_when_listed_or_on_cpu(rng):
    model = float_conv_model(rng)
    violations = [v for v in validate(model, "npu_cnn") if v.kind is ViolationKind.UNQUANTIZED_OP]
    assert [v.node for v in violations] == ["conv"]
    assert ViolationKind.UNQUANTIZED_OP not in kinds(model, "npu_cnn", float_nodes=["conv"])
    assert ViolationKind.UNQUANTIZED_OP not in kinds(model, "cpu")


def test_float_weight_direct_and_quantized_at_run_time(rng):
    model, _ = quantized_conv_model(rng, "cpu")
    node(model, "conv").input[1] = "W_float"
    set_initializer(model, "W_float", rng.standard_normal((4, 3, 3, 3)).astype(np.float32))
    violations = [v for v in validate(model, "cpu") if v.kind is ViolationKind.FLOAT_WEIGHT]
    assert [(v.node, v.tensor) for v in violations] == [("conv", "W_float")]

    model, _ = quantized_conv_model(rng, "npu_transformer")
    set_initializer(model, "W_runtime", rng.standard_normal((4, 3, 3, 3)).astype(np.float32))
    model.graph.node.insert(0, helper.make_node("QuantizeLinear", ["W_runtime", "W_scale", "W_zero_point"], ["W_rq"], name="w_q"))
    node(model, "W_DequantizeLinear").input[0] = "W_rq"
    violations = [v for v in validate(model, "npu_transformer") if v.kind is ViolationKind.FLOAT_WEIGHT]
    assert [(v.node, v.tensor) for v in violations] == [("w_q", "W_runtime")]


def test_float_bias(rng):
    model, _ = quantized_conv_model(rng, "cpu")
    node(model, "conv").input[2] = "B_float"
    set_initializer(model, "B_float", np.zeros(4, np.float32))
    violations = [v for v in validate(model, "cpu") if v.kind is ViolationKind.FLOAT_BIAS]
    assert [(v.node, v.tensor) for v in violations] == [("conv", "B_float")]


def test_wrong_activation_dtype(rng):
    model, _ = quantized_conv_model(rng, "npu_transformer")  # int8 activations
    violations = validate(model, "npu_cnn")
    wrong = {(v.node, v.tensor) for v in violations if v.kind is ViolationKind.WRONG_DTYPE}
    assert wrong == {
        ("x_QuantizeLinear", "x"),
        ("x_DequantizeLinear", "x_quantized"),
        ("y_QuantizeLinear", "y_float"),
        ("y_DequantizeLinear", "y_quantized"),
        ("B_DequantizeLinear", "B_quantized"),  # int32 bias where npu_cnn stores int8
    }


def test_wrong_zero_point(rng):
    model, _ = quantized_conv_model(rng, "npu_cnn")
    set_initializer(model, "x_zero_point", np.uint8(127))
    violations = [v for v in validate(model, "npu_cnn") if v.kind is ViolationKind.WRONG_ZERO_POINT]
    assert [(v.node, v.tensor) for v in violations] == [("x_QuantizeLinear", "x"), ("x_DequantizeLinear", "x_quantized")]
    weights, _ = quantized_conv_model(rng, "npu_cnn")
    set_initializer(weights, "W_zero_point", np.int8(3))
    assert [v.node for v in validate(weights, "npu_cnn") if v.kind is ViolationKind.WRONG_ZERO_POINT] == ["W_DequantizeLinear"]


def test_not_power_of_two(rng):
    model, qp = quantized_conv_model(rng, "npu_cnn")
    set_initializer(model, "y_scale", np.float32(0.1))
    violations = [v for v in validate(model, "npu_cnn") if v.kind is ViolationKind.NOT_POWER_OF_TWO]
    assert {v.node for v in violations} == {"y_QuantizeLinear", "y_DequantizeLinear"}
    assert all(v.tensor == "y_scale" for v in violations)
    assert ViolationKind.NOT_POWER_OF_TWO not in kinds(model, "npu_transformer")


def test_bias_scale_mismatch(rng):
    model, qp = quantized_conv_model(rng, "cpu")
    wrong = initializer(model, "B_scale").copy()
    wrong[2] *= 1.01
    set_initializer(model, "B_scale", wrong)
    violations = [v for v in validate(model, "cpu") if v.kind is ViolationKind.BIAS_SCALE_MISMATCH]
    assert [(v.node, v.tensor) for v in violations] == [("conv", "B_dequantized")]


def test_per_channel_not_allowed(rng):
    model, _ = quantized_conv_model(rng, "cpu")  # per-channel weights, uint8 activations
    violations = validate(model, "npu_transformer")
    assert ("W_DequantizeLinear", ViolationKind.PER_CHANNEL_NOT_ALLOWED) in {(v.node, v.kind) for v in violations}


def test_unpaired_qdq(rng):
    model, _ = quantized_conv_model(rng, "cpu")
    set_initializer(model, "x_scale_dq", np.float32(0.5))
    node(model, "x_DequantizeLinear").input[1] = "x_scale_dq"
    violations = [v for v in validate(model, "cpu") if v.kind is ViolationKind.UNPAIRED_QDQ]
    assert [(v.node, v.tensor) for v in violations] == [("x_QuantizeLinear", "x_quantized")]


def test_violation_text_names_node_and_tensor(rng):
    model = float_conv_model(rng)
    text = str(validate(model, "npu_cnn")[0])
    assert text.startswith("unquantized-op: node 'conv', tensor 'x'")


def test_validate_accepts_a_path(rng, tmp_path):
    import onnx

    model, _ = quantized_conv_model(rng, "cpu")
    onnx.save(model, tmp_path / "m.onnx")
    assert validate(tmp_path / "m.onnx", "U8S8") == []
