"""The ONNX-only reasons to keep a covered node in float, one function per op."""

from __future__ import annotations

import onnx

from rq_common.format.graph import attribute
from rq_onnx.rules.registry import RuleContext, declines


@declines("Gemm")
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


@declines("Conv", "ConvTranspose")
def _conv_reason(node: onnx.NodeProto, ctx: RuleContext) -> str | None:
    if not ctx.is_constant(node.input[1]):
        return f"{node.op_type} with run-time weights"
    if len(node.input) > 2 and node.input[2] and not ctx.is_constant(node.input[2]):
        return f"{node.op_type} with a run-time bias"
    return None


@declines("Gather")
def _gather_reason(node: onnx.NodeProto, ctx: RuleContext) -> str | None:
    if ctx.is_constant(node.input[0]):
        return "Gather from a constant table (an embedding) stays float"
    if not ctx.is_constant(node.input[1]):
        return "Gather with run-time indices"
    return None
