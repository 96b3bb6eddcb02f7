"""The NPU's fixed-point rules: hand-computed values, and one violating model per validator check."""

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from rq_common import QParams, QuantSpec, get_preset
from rq_common.format import ViolationKind, insert_qdq, validate
from rq_common.format.graph import record_float_nodes
from rq_common.pipeline import ConstantOperand, Layer, ModelView, Weight, finalize, weight_qparams
from rq_common.qmath import npu_rules

from conftest import make_model
from models import node, quantized_conv_model, set_initializer


def test_rule_arithmetic():
    assert npu_rules.shift_cut(7, 5, 5) == 7
    assert npu_rules.shift_bias_range(5) == (-11, 15)  # -(24 - (8 + 5))
    assert npu_rules.shift_bias_range(16) == (0, 15)  # min(0, 0)
    assert npu_rules.repair_output_position(7, 5, 20) == 12  # shift_cut 0
    assert npu_rules.repair_output_position(7, 5, -10) == -4  # shift_cut 16
    assert npu_rules.repair_output_position(7, 5, 6) == 6
    assert npu_rules.repair_bias_position(7, 5, 5, 30) == 21  # cut 7: shift_bias >= -(24 - 15) = -9 -> bias_pos <= 21
    assert npu_rules.repair_bias_position(7, 5, 5, -10) == -3  # shift_bias <= 15
    assert npu_rules.repair_add_positions([3, 12, 9]) == [3, 10, 9]
    assert npu_rules.round_leaky_alpha(0.1) == 26 / 256
    assert npu_rules.is_leaky_alpha_exact(26 / 256) and not npu_rules.is_leaky_alpha_exact(0.1)
    assert npu_rules.position(np.float32(2.0**-7)) == 7


def npu_kinds(model):
    return {v.kind for v in validate(model, "npu_cnn") if v.kind.value.startswith("npu-")}


def test_builder_model_satisfies_the_npu_rules(rng):
    model, _ = quantized_conv_model(rng, "npu_cnn")
    assert npu_kinds(model) == set()


def test_shift_cut_and_bias(rng):
    model, _ = quantized_conv_model(rng, "npu_cnn")
    set_initializer(model, "y_scale", np.float32(2.0**-20))
    violations = [v for v in validate(model, "npu_cnn") if v.kind is ViolationKind.NPU_SHIFT_CUT]
    assert [v.node for v in violations] == ["conv"] and "outside [0, 16]" in violations[0].message
    model, _ = quantized_conv_model(rng, "npu_cnn")
    set_initializer(model, "B_scale", np.float32(2.0**-30))
    assert [v.node for v in validate(model, "npu_cnn") if v.kind is ViolationKind.NPU_SHIFT_BIAS] == ["conv"]


def test_unfused_relu(rng):
    model, _ = quantized_conv_model(rng, "npu_cnn")
    insert_qdq(model, "c", QParams(np.float32(2.0**-4), 128, QuantSpec(dtype="uint8")))
    assert [v.node for v in validate(model, "npu_cnn") if v.kind is ViolationKind.NPU_UNFUSED_ACTIVATION] == ["relu"]
    # a ReLU the quantizer kept in float runs on the CPU: the Conv rightly ends with its Q/DQ
    record_float_nodes(model, ["relu"])
    assert ViolationKind.NPU_UNFUSED_ACTIVATION not in {v.kind for v in validate(model, "npu_cnn")}


def _two_input_model(op, pos_a, pos_b, out_pos=None):
    u8 = numpy_helper.from_array(np.uint8(128), "zp")
    inits = [u8, numpy_helper.from_array(np.float32(2.0**-pos_a), "sa"), numpy_helper.from_array(np.float32(2.0**-pos_b), "sb")]
    nodes = [
        helper.make_node("QuantizeLinear", ["a", "sa", "zp"], ["aq"]),
        helper.make_node("DequantizeLinear", ["aq", "sa", "zp"], ["ad"]),
        helper.make_node("QuantizeLinear", ["b", "sb", "zp"], ["bq"]),
        helper.make_node("DequantizeLinear", ["bq", "sb", "zp"], ["bd"]),
        helper.make_node(op, ["ad", "bd"], ["o"], name="op", **({"axis": 1} if op == "Concat" else {})),
    ]
    out = "o"
    if out_pos is not None:
        inits.append(numpy_helper.from_array(np.float32(2.0**-out_pos), "so"))
        nodes += [
            helper.make_node("QuantizeLinear", ["o", "so", "zp"], ["oq"]),
            helper.make_node("DequantizeLinear", ["oq", "so", "zp"], ["y"]),
        ]
        out = "y"
    shape = [1, 2]
    return make_model(
        nodes,
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, shape) for n in "ab"],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)],
        inits,
    )


def test_add_positions():
    assert npu_kinds(_two_input_model("Add", 3, 10)) == set()
    assert npu_kinds(_two_input_model("Add", 3, 11)) == {ViolationKind.NPU_ADD_POSITIONS}


def test_concat_shares_one_scale():
    assert npu_kinds(_two_input_model("Concat", 5, 5, out_pos=5)) == set()
    assert npu_kinds(_two_input_model("Concat", 5, 6, out_pos=5)) == {ViolationKind.NPU_SHARED_SCALE}
    assert npu_kinds(_two_input_model("Concat", 5, 5, out_pos=4)) == {ViolationKind.NPU_SHARED_SCALE}


@pytest.mark.parametrize(("alpha", "ok"), [(0.1, False), (26 / 256, True), (0.25, True)])
def test_leaky_alpha(rng, alpha, ok):
    model, _ = quantized_conv_model(rng, "npu_cnn")
    node(model, "relu").op_type = "LeakyRelu"
    node(model, "relu").attribute.append(helper.make_attribute("alpha", alpha))
    assert (ViolationKind.NPU_LEAKY_ALPHA not in npu_kinds(model)) == ok
    record_float_nodes(model, ["relu"])  # kept in float: it computes its own alpha, on the CPU
    assert ViolationKind.NPU_LEAKY_ALPHA not in npu_kinds(model)
    assert ViolationKind.NPU_LEAKY_ALPHA not in {v.kind for v in validate(model, "cpu")}


def test_finalize_aligns_an_adds_constant_operand():
    """A tiny bias added to a wide activation (a 3-D MatMul's bias Add): the constant's position is
    lowered to within 7 of the activation's, so the Add is legal and neither input clips."""
    preset = get_preset("npu_cnn")
    activation = QParams(np.float32(2.0**-3), np.int8(0), preset.activation)
    bias = np.array([0.003, -0.002, 0.001], np.float32)
    alone = npu_rules.position(weight_qparams(bias, None, preset).scale)
    assert alone > 3 + npu_rules.ADD_MAX_POSITION_GAP  # the violation the repair must remove
    view = ModelView({"x": activation}, {"bias": Weight(bias)}, adds=[["x", ConstantOperand("bias")]])
    result = finalize(view, preset)
    assert npu_rules.position(result.weights["bias"].scale) == 3 + npu_rules.ADD_MAX_POSITION_GAP
    assert npu_rules.position(result.activations["x"].scale) == 3
    assert any("'bias'" in note for note in result.notes)
    # the same constant feeding a layer as its weight keeps its position (the shift rules own it)
    layer = Layer("matmul", "bias", "x", None)
    kept = finalize(ModelView({"x": activation}, {"bias": Weight(bias)}, [layer], [["x", ConstantOperand("bias")]]), preset)
    assert npu_rules.position(kept.weights["bias"].scale) == alone


def test_finalize_names_the_layer_no_shared_output_position_can_serve():
    """Two layers writing one shared scale: accumulators 6 and 29 (w_pos -1 and 22, in_pos 7)
    allow out_pos in [-10, 6] and [13, 29], no common position. The calibrated position (-1) lies
    in the first: the second is unrepairable, and the shared position stays where the first needs it.
    (Weight positions by power-of-two MinMSE, as the hand-computed numbers are.)"""
    preset = get_preset("npu_cnn", weight_method="pot_minmse")
    spec = preset.activation
    at = lambda pos: QParams(np.float32(2.0**-pos), np.uint8(128), spec)  # noqa: E731
    weights = {"big": Weight(np.full(4, 100.0, np.float32)), "tiny": Weight(np.full(4, 1e-5, np.float32))}
    w_pos = {name: npu_rules.position(weight_qparams(w.values, None, preset).scale) for name, w in weights.items()}
    assert (w_pos["big"], w_pos["tiny"]) == (-1, 22)  # MinMSE power-of-two weight scales
    layers = [Layer("conv_big", "big", "x", "y"), Layer("conv_tiny", "tiny", "x", "y")]
    result = finalize(ModelView({"x": at(7), "y": at(-1)}, weights, layers), preset)
    assert list(result.unrepairable) == ["conv_tiny"] and "[13, 29]" in result.unrepairable["conv_tiny"]
    assert npu_rules.position(result.activations["y"].scale) == -1
