"""The op table against ONNX's own operator schemas: every op exists, every slot it names is an
input the op has, and the derived sets are the ones the placement and the NPU rules rely on."""

import onnx
import pytest
from onnx import defs, helper

from rq_common.optable import OP_TABLE, NpuRole, Role, ops_where


@pytest.mark.parametrize("op_type", sorted(OP_TABLE))
def test_every_slot_is_an_input_of_the_onnx_op(op_type):
    facts = OP_TABLE[op_type]
    schema = defs.get_schema(op_type)
    most = schema.max_input
    named = [*(facts.inputs or ()), *facts.constants, *(s for s in (facts.weight, facts.bias) if s is not None)]
    assert all(0 <= slot < most for slot in named), (op_type, named, most)
    if facts.inputs is None:  # every input: a variadic op
        assert schema.inputs[0].option == defs.OpSchema.FormalParameterOption.Variadic
    if facts.weight is not None:
        assert facts.weight in (facts.inputs or ()) and facts.weight_axis is not None


def test_gemm_weight_axis_follows_transB():
    gemm = OP_TABLE["Gemm"].weight_axis
    assert gemm(helper.make_node("Gemm", ["a", "b"], ["y"], transB=1)) == 0
    assert gemm(helper.make_node("Gemm", ["a", "b"], ["y"])) == 1
    assert OP_TABLE["ConvTranspose"].weight_axis(onnx.NodeProto()) == 1  # weight (C_in, C_out / g, kH, kW)


def test_npu_rules_and_layout_sets():
    assert ops_where(lambda f: f.npu is NpuRole.FUSED_ACTIVATION) == {"Relu", "Clip"}
    assert ops_where(lambda f: f.npu is NpuRole.FUSES_ACTIVATION) == {"Conv", "ConvTranspose", "Gemm", "MatMul", "Add"}
    assert ops_where(lambda f: f.npu is NpuRole.SHARED_SCALE) == {"Concat", "MaxPool", "AveragePool"}
    layout = ops_where(lambda f: f.layout)
    assert layout <= ops_where(lambda f: f.role is Role.PASS_THROUGH)
    assert "MaxPool" not in layout and "Slice" not in layout  # they drop values
