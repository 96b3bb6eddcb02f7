"""Deciding what gets quantized: which nodes, which run-time tensors, which constants, which
tensors share a scale. Pure graph analysis: no calibration data is needed here."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from rq_common.calibration import ScaleGroups
from rq_common.format.graph import attribute
from rq_common.optable import NpuRole, facts_for
from rq_common.pipeline.placement import EXCLUDED, FloatOp, OpNode, place_quantizers
from rq_common.spec import Preset
from rq_onnx.masks import masked_nodes
from rq_onnx.rules import RuleContext, float_reason


@dataclass(frozen=True)
class WeightUse:
    """A constant quantized as a weight; ``axis`` is its output-channel axis (per-channel weights)."""

    name: str
    axis: int | None


@dataclass(frozen=True)
class BiasUse:
    """A bias constant: read by ``node`` at ``slot``, the bias of the weighted op ``layer`` (the
    node itself, or the MatMul before a bias Add)."""

    node: str
    slot: int
    name: str
    input_tensor: str
    weight: str
    layer: str = ""

    @property
    def owner(self) -> str:
        return self.layer or self.node


@dataclass(frozen=True)
class ShiftedOp:
    """A Conv/Gemm/MatMul with a constant weight: the NPU's shift rules apply to it."""

    node: str
    input_tensor: str
    weight: str
    output_tensor: str  # the tensor whose Q follows (after a fused activation, if any)


@dataclass
class Plan:
    activations: list[str] = field(default_factory=list)  # run-time tensors to Q/DQ, graph order
    weights: dict[str, WeightUse] = field(default_factory=dict)
    biases: list[BiasUse] = field(default_factory=list)
    shifted: list[ShiftedOp] = field(default_factory=list)
    adds: list[tuple[str, list[str]]] = field(default_factory=list)  # Add node, its quantized inputs (run-time and constant)
    groups: ScaleGroups = field(default_factory=ScaleGroups)
    quantized_nodes: list[str] = field(default_factory=list)
    float_ops: list[FloatOp] = field(default_factory=list)
    fused: list[str] = field(default_factory=list)  # tensors left unquantized because an activation fuses
    float_readers: dict[str, set[str]] = field(default_factory=dict)  # tensor -> float nodes that read its float value


def name_nodes(model: onnx.ModelProto) -> None:
    """Give every node a unique name (reports and exclusions refer to nodes by name)."""
    seen: set[str] = set()
    for i, node in enumerate(model.graph.node):
        name = node.name or f"{node.op_type}_{i}"
        while name in seen:
            name = f"{name}_{i}"
        node.name = name
        seen.add(name)


def tensor_types(model: onnx.ModelProto) -> dict[str, int]:
    graph = model.graph
    types = {v.name: v.type.tensor_type.elem_type for v in [*graph.input, *graph.output, *graph.value_info]}
    types.update({t.name: t.data_type for t in graph.initializer})
    return types


def make_plan(
    model: onnx.ModelProto, preset: Preset, exclude_op_types=(), exclude_nodes=(), float_reasons: Mapping[str, str] | None = None
) -> Plan:
    """rq_common's placement (the same for every rq package) over the graph's run-time tensors;
    then the constants of the quantized nodes: weights, biases, the NPU's shifted ops.
    ``float_reasons``: nodes to keep in float, each with the reason the report gives."""
    graph = model.graph
    constants = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    ctx = RuleContext(constants)
    types = tensor_types(model)
    masked = masked_nodes(model)
    op_nodes = []
    for node in graph.node:
        if not any(types.get(o, TensorProto.FLOAT) == TensorProto.FLOAT for o in node.output if o):
            continue  # integer or boolean results (Shape -> Gather -> Concat, masks' Equal): no float op
        rule = facts_for(node.op_type)
        reason = (
            _float_reason(node, rule, ctx, types, exclude_op_types, exclude_nodes)
            or masked.get(node.name)
            or (float_reasons or {}).get(node.name)
        )
        slots = rule.quantized_slots(node) if rule is not None and not reason else range(len(node.input))
        inputs = tuple(node.input[i] for i in slots if node.input[i] and node.input[i] not in constants)
        outputs = tuple(o for o in node.output if o and types.get(o, TensorProto.FLOAT) == TensorProto.FLOAT)
        fusable = rule is None or rule.npu is not NpuRole.FUSED_ACTIVATION or _starts_at_zero(node, graph)
        op_nodes.append(OpNode(node.name, node.op_type if rule is not None else None, inputs, outputs, reason, fusable))
    graph_inputs = [v.name for v in graph.input if v.name not in constants]
    placement = place_quantizers(
        op_nodes, graph_inputs, [o.name for o in graph.output], preset.target.fixed_point_rules, preset.integer_kernels_only
    )

    plan = Plan(groups=placement.groups, fused=list(placement.fused), activations=list(placement.quantized))
    for reader, tensor in placement.float_reads:
        plan.float_readers.setdefault(tensor, set()).add(reader)
    plan.float_ops = [FloatOp(f.node, _op_type(graph, f.node), f.reason) for f in placement.float_ops]
    plan.quantized_nodes = list(placement.quantized_ops)
    quantized_nodes, activations = set(placement.quantized_ops), set(placement.quantized)
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    for node in graph.node:
        if node.name not in quantized_nodes:
            continue
        rule = facts_for(node.op_type)
        for slot in rule.quantized_slots(node):
            name = node.input[slot]
            if name in constants and np.issubdtype(constants[name].dtype, np.floating) and name not in plan.weights:
                plan.weights[name] = WeightUse(name, _weight_axis(node, slot, constants[name]))
        if rule.bias is not None and rule.bias < len(node.input) and node.input[rule.bias]:
            plan.biases.append(BiasUse(node.name, rule.bias, node.input[rule.bias], node.input[0], node.input[rule.weight]))
        if rule.weight is not None and node.input[rule.weight] in plan.weights:
            weight = node.input[rule.weight]
            plan.shifted.append(ShiftedOp(node.name, node.input[0], weight, _output_after_fusion(node, plan, readers)))
        if node.op_type == "Add":
            plan.adds.append((node.name, [x for x in node.input if x in activations or x in plan.weights]))
    if preset.integer_kernels_only:
        plan.biases += _matmul_biases(graph, plan, constants, readers, quantized_nodes, activations)
    return plan


def _matmul_biases(graph, plan: Plan, constants, readers, quantized_nodes, activations) -> list[BiasUse]:
    """The float bias Add after a MatMul whose output stays float (QdqPlacement.INTEGER_KERNELS):
    its constant becomes the MatMul's int32 bias, so that ONNX Runtime runs the pair as one QGemm
    with a float output; with a float bias it fuses them into a float Gemm on the dequantized
    weights instead (4x slower on zoo minilm)."""
    uses = []
    for node in graph.node:
        weight = node.input[1] if node.op_type == "MatMul" and len(node.input) > 1 else None
        if node.name not in quantized_nodes or weight not in plan.weights or node.output[0] in activations:
            continue
        after = readers.get(node.output[0], [])
        if len(after) != 1 or after[0].op_type != "Add" or after[0].name in quantized_nodes:
            continue
        add = after[0]
        slot = 1 - list(add.input).index(node.output[0])
        bias = constants.get(add.input[slot])
        if (
            bias is not None
            and bias.ndim == 1
            and bias.shape[0] == constants[weight].shape[-1]
            and np.issubdtype(bias.dtype, np.floating)
        ):
            uses.append(BiasUse(add.name, slot, add.input[slot], node.input[0], weight, layer=node.name))
    return uses


def _op_type(graph: onnx.GraphProto, name: str) -> str:
    return next(n.op_type for n in graph.node if n.name == name)


def _float_reason(node, rule, ctx, types, exclude_op_types, exclude_nodes) -> str | None:
    if node.name in exclude_nodes:
        return EXCLUDED
    if node.op_type in exclude_op_types:
        return f"op type {node.op_type} excluded (kept in float on request)"
    if rule is None or node.domain not in ("", "ai.onnx"):
        return f"no quantization rule for {node.domain + '.' if node.domain else ''}{node.op_type}: runs in float"
    for slot in rule.quantized_slots(node):
        name = node.input[slot]
        elem = ctx.constants[name].dtype if name in ctx.constants else None
        if elem is not None and not np.issubdtype(elem, np.floating):
            return f"input {slot} is not a float tensor"
        if elem is None and types.get(name, TensorProto.FLOAT) != TensorProto.FLOAT:
            return f"input {slot} is not a float32 tensor"
    return float_reason(node, rule, ctx)


def _weight_axis(node: onnx.NodeProto, slot: int, value: np.ndarray) -> int | None:
    rule = facts_for(node.op_type)
    if rule is None or rule.weight != slot or rule.weight_axis is None or value.ndim < 2:
        return None
    return rule.weight_axis(node) % value.ndim


def _starts_at_zero(node: onnx.NodeProto, graph: onnx.GraphProto) -> bool:
    """A Relu, or a Clip whose lower bound is 0: the activations the NPU fuses."""
    if node.op_type != "Clip":
        return True
    if len(node.input) > 1 and node.input[1]:
        low = next((numpy_helper.to_array(t) for t in graph.initializer if t.name == node.input[1]), None)
        return low is not None and float(low) == 0.0
    return attribute(node, "min", float("-inf")) == 0.0


def _output_after_fusion(node: onnx.NodeProto, plan: Plan, readers) -> str:
    out = node.output[0]
    if out in plan.fused:
        return readers[out][0].output[0]
    return out
