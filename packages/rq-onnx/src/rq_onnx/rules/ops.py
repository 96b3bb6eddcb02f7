"""The op rules. Grouped by what the op does with scales; each line is one op's rule."""

from __future__ import annotations

import onnx

from rq_common.format.graph import attribute
from rq_onnx.rules.registry import QuantizeRule, RuleContext, register


def _gemm_reason(node: onnx.NodeProto, ctx: RuleContext) -> str | None:
    if attribute(node, "alpha", 1.0) != 1.0 or attribute(node, "beta", 1.0) != 1.0:
        return "Gemm with alpha or beta != 1 (the bias scale rule assumes y = A B + C)"
    if attribute(node, "transA", 0):
        return "Gemm with transA=1"
    if len(node.input) > 2 and node.input[2]:
        bias = ctx.constants.get(node.input[2])
        weight = ctx.constants.get(node.input[1])
        if bias is None:
            return "Gemm with a run-time C input"
        if weight is not None:
            outputs = weight.shape[0] if attribute(node, "transB", 0) else weight.shape[1]
            if bias.size not in (1, outputs):
                return f"Gemm bias of shape {list(bias.shape)} is not one value per output"
    return None


def _conv_reason(node: onnx.NodeProto, ctx: RuleContext) -> str | None:
    if not ctx.is_constant(node.input[1]):
        return f"{node.op_type} with run-time weights"
    if len(node.input) > 2 and node.input[2] and not ctx.is_constant(node.input[2]):
        return f"{node.op_type} with a run-time bias"
    return None


def _gather_reason(node: onnx.NodeProto, ctx: RuleContext) -> str | None:
    if ctx.is_constant(node.input[0]):
        return "Gather from a constant table (an embedding) stays float"
    if not ctx.is_constant(node.input[1]):
        return "Gather with run-time indices"
    return None


def _needs_constant_inputs(*slots: int):
    def reason(node: onnx.NodeProto, ctx: RuleContext) -> str | None:
        for slot in slots:
            if slot < len(node.input) and node.input[slot] and not ctx.is_constant(node.input[slot]):
                return f"{node.op_type} input {slot} is computed at run time"
        return None

    return reason


# compute ops: quantized inputs (constants become int8 weights), a bias, an own output scale
register(QuantizeRule.like_format("Conv", float_reason=_conv_reason))
register(QuantizeRule.like_format("ConvTranspose", float_reason=_conv_reason))
register(QuantizeRule.like_format("Gemm", float_reason=_gemm_reason))
register(QuantizeRule.like_format("MatMul"))  # constant weight, or activation x activation (attention)

# elementwise and reducing ops with their own output scale
for _op in ("Add", "Mul", "Concat", "AveragePool", "GlobalAveragePool"):
    register(QuantizeRule.like_format(_op))
register(QuantizeRule("PRelu", (0, 1)))
for _op in (
    "Relu",
    "LeakyRelu",
    "Sigmoid",
    "HardSigmoid",
    "HardSwish",
    "Tanh",
    "Softmax",
    "Erf",
    "Gelu",
    "LayerNormalization",
):
    register(QuantizeRule(_op, (0,)))
register(QuantizeRule("Clip", (0,), float_reason=_needs_constant_inputs(1, 2)))
register(QuantizeRule("Resize", (0,), float_reason=_needs_constant_inputs(1, 2, 3)))
register(QuantizeRule("ReduceMean", (0,), float_reason=_needs_constant_inputs(1)))

# pass-through ops: the output is the input's values rearranged (or their max): same scale
for _op in ("Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Identity"):
    register(QuantizeRule(_op, (0,), pass_through=True, float_reason=_needs_constant_inputs(1)))
register(QuantizeRule("Slice", (0,), pass_through=True, float_reason=_needs_constant_inputs(1, 2, 3, 4)))
register(QuantizeRule("Split", (0,), pass_through=True, float_reason=_needs_constant_inputs(1)))
register(QuantizeRule("Gather", (0,), pass_through=True, float_reason=_gather_reason))
register(QuantizeRule("MaxPool", (0,), pass_through=True))
register(QuantizeRule("Pad", (0,), pass_through=True, float_reason=_needs_constant_inputs(1, 2, 3)))
