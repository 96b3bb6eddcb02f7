"""Validator checks of the NPU's fixed-point rules (targets with ``fixed_point_rules``)."""

from __future__ import annotations

from collections.abc import Iterator

import onnx

from rq_common.format.graph import DEQUANTIZE, QUANTIZE, GraphIndex, attribute, node_label, qdq_params
from rq_common.format.validate import ValidationContext, Violation, ViolationKind, check
from rq_common.optable import NpuRole, facts_for, has_npu_role
from rq_common.qmath import npu_rules
from rq_common.qmath.qparams import is_power_of_two


def _dq_position(index: GraphIndex, tensor: str) -> int | None:
    """pos of the DequantizeLinear that produces ``tensor`` (None when it is not one)."""
    node = index.producers.get(tensor)
    if node is None or node.op_type != DEQUANTIZE:
        return None
    params = qdq_params(index, node)
    if params is None or params.scale.size != 1 or not is_power_of_two(params.scale.reshape(-1)[0]):
        return None
    return npu_rules.position(params.scale)


def output_quantize(index: GraphIndex, node: onnx.NodeProto) -> onnx.NodeProto | None:
    """The QuantizeLinear that quantizes ``node``'s output, through one fused ReLU/Clip if there."""
    readers = index.consumers_of(node.output[0])
    if len(readers) == 1 and has_npu_role(readers[0][0].op_type, NpuRole.FUSED_ACTIVATION):
        readers = index.consumers_of(readers[0][0].output[0])
    quantizers = [r for r, _ in readers if r.op_type == QUANTIZE]
    return quantizers[0] if quantizers else None


def _q_position(index: GraphIndex, q: onnx.NodeProto | None) -> int | None:
    if q is None:
        return None
    params = qdq_params(index, q)
    if params is None or not is_power_of_two(params.scale.reshape(-1)[0]):
        return None
    return npu_rules.position(params.scale)


def npu_check(fn):
    """Register ``fn`` as a validator check that runs only for targets with fixed-point rules."""

    def gated(ctx: ValidationContext) -> Iterator[Violation]:
        if ctx.preset.target.fixed_point_rules:
            yield from fn(ctx)

    gated.__name__ = fn.__name__
    return check(gated)


@npu_check
def _shifts(ctx: ValidationContext) -> Iterator[Violation]:
    index = ctx.index
    for node in ctx.model.graph.node:
        facts = facts_for(node.op_type)  # the shift rules hold for every op with a weight
        if facts is None or facts.weight is None or len(node.input) <= facts.weight:
            continue
        in_pos, w_pos = _dq_position(index, node.input[0]), _dq_position(index, node.input[facts.weight])
        out_pos = _q_position(index, output_quantize(index, node))
        if None in (in_pos, w_pos, out_pos):
            continue
        cut = npu_rules.shift_cut(w_pos, in_pos, out_pos)
        label = node_label(node)
        if not npu_rules.SHIFT_CUT_MIN <= cut <= npu_rules.SHIFT_CUT_MAX:
            yield Violation(
                ViolationKind.NPU_SHIFT_CUT,
                label,
                node.output[0],
                f"shift_cut = w_pos {w_pos} + in_pos {in_pos} - out_pos {out_pos} = {cut}, outside [0, 16]",
            )
        bias = node.input[facts.bias] if facts.bias is not None and len(node.input) > facts.bias else ""
        if bias:
            bias_pos = _dq_position(index, bias)
            if bias_pos is None:
                continue
            low, high = npu_rules.shift_bias_range(cut)
            shift = npu_rules.shift_bias(w_pos, in_pos, bias_pos)
            if not low <= shift <= high:
                yield Violation(
                    ViolationKind.NPU_SHIFT_BIAS,
                    label,
                    bias,
                    f"shift_bias = w_pos {w_pos} + in_pos {in_pos} - bias_pos {bias_pos} = {shift}, outside [{low}, {high}]",
                )


@npu_check
def _add_positions(ctx: ValidationContext) -> Iterator[Violation]:
    for node in ctx.model.graph.node:
        if node.op_type != "Add":
            continue
        positions = [_dq_position(ctx.index, name) for name in node.input]
        if None in positions:
            continue
        if max(positions) - min(positions) > npu_rules.ADD_MAX_POSITION_GAP:
            yield Violation(
                ViolationKind.NPU_ADD_POSITIONS,
                node_label(node),
                node.output[0],
                f"input positions {positions} differ by more than {npu_rules.ADD_MAX_POSITION_GAP}",
            )


@npu_check
def _fused_activations(ctx: ValidationContext) -> Iterator[Violation]:
    index = ctx.index
    for node in ctx.model.graph.node:
        if not has_npu_role(node.op_type, NpuRole.FUSED_ACTIVATION) or node.name in ctx.float_nodes:
            continue  # a float activation runs on the CPU: the op before it ends with its Q/DQ
        dq = index.producers.get(node.input[0])
        q = index.producers.get(dq.input[0]) if dq is not None and dq.op_type == DEQUANTIZE else None
        source = index.producers.get(q.input[0]) if q is not None and q.op_type == QUANTIZE else None
        if source is not None and has_npu_role(source.op_type, NpuRole.FUSES_ACTIVATION) and source.name not in ctx.float_nodes:
            yield Violation(
                ViolationKind.NPU_UNFUSED_ACTIVATION,
                node_label(node),
                node.input[0],
                f"Q/DQ between {source.op_type} '{node_label(source)}' and {node.op_type}: the NPU fuses the activation into it",
            )


@npu_check
def _shared_scales(ctx: ValidationContext) -> Iterator[Violation]:
    index = ctx.index
    for node in ctx.model.graph.node:
        if not has_npu_role(node.op_type, NpuRole.SHARED_SCALE):
            continue
        inputs = [node.input[i] for i in facts_for(node.op_type).quantized_slots(node)]
        positions = [_dq_position(index, name) for name in inputs]
        q = next((r for r, _ in index.consumers_of(node.output[0]) if r.op_type == QUANTIZE), None)
        positions.append(_q_position(index, q))
        if None in positions:
            continue
        if len(set(positions)) > 1:
            yield Violation(
                ViolationKind.NPU_SHARED_SCALE,
                node_label(node),
                node.output[0],
                f"{node.op_type} inputs and output must share one scale; positions {positions}",
            )


@npu_check
def _leaky_alpha(ctx: ValidationContext) -> Iterator[Violation]:
    for node in ctx.model.graph.node:
        if node.op_type == "LeakyRelu" and node.name not in ctx.float_nodes:  # a float one computes its alpha
            alpha = float(attribute(node, "alpha", 0.01))
            if not npu_rules.is_leaky_alpha_exact(alpha):
                yield Violation(
                    ViolationKind.NPU_LEAKY_ALPHA,
                    node_label(node),
                    node.output[0],
                    f"alpha {alpha} is not a multiple of 1/256; the NPU computes {npu_rules.round_leaky_alpha(alpha)}",
                )
