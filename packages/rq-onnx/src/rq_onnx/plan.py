"""Deciding what gets quantized: which nodes, which run-time tensors, which constants, which
tensors share a scale. Pure graph analysis: no calibration data is needed here."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from rq_common.calibration import ScaleGroups
from rq_common.format.graph import attribute
from rq_common.format.oprules import OP_RULES as FORMAT_RULES
from rq_common.spec import Preset
from rq_common.spec.npu_rules import FUSABLE_ACTIVATIONS, FUSING_OPS, SHARED_SCALE_OPS
from rq_onnx.rules import RuleContext, rule_for


@dataclass(frozen=True)
class FloatOp:
    node: str
    op_type: str
    reason: str


@dataclass(frozen=True)
class WeightUse:
    """A constant quantized as a weight; ``axis`` is its output-channel axis (per-channel weights)."""

    name: str
    axis: int | None


@dataclass(frozen=True)
class BiasUse:
    node: str
    slot: int
    name: str
    input_tensor: str
    weight: str


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
    adds: list[tuple[str, list[str]]] = field(default_factory=list)  # Add node, its quantized inputs
    groups: ScaleGroups = field(default_factory=ScaleGroups)
    quantized_nodes: list[str] = field(default_factory=list)
    float_ops: list[FloatOp] = field(default_factory=list)
    fused: list[str] = field(default_factory=list)  # tensors left unquantized because an activation fuses


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


def make_plan(model: onnx.ModelProto, preset: Preset, exclude_op_types=(), exclude_nodes=()) -> Plan:
    graph = model.graph
    constants = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    ctx = RuleContext(constants)
    types = tensor_types(model)
    outputs = {o.name for o in graph.output}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    plan = Plan()
    quantized: set[str] = set()
    producer_of: dict[str, onnx.NodeProto] = {}
    node_quantized: set[str] = set()

    for node in graph.node:
        for out in node.output:
            producer_of[out] = node
        rule = rule_for(node.op_type)
        reason = _float_reason(node, rule, ctx, types, quantized, exclude_op_types, exclude_nodes)
        if reason:
            plan.float_ops.append(FloatOp(node.name, node.op_type, reason))
            continue
        node_quantized.add(node.name)
        plan.quantized_nodes.append(node.name)
        for slot in rule.slots(node):
            name = node.input[slot]
            if name in constants:
                if np.issubdtype(constants[name].dtype, np.floating) and name not in plan.weights:
                    plan.weights[name] = WeightUse(name, _weight_axis(node, slot, constants[name]))
            else:
                quantized.add(name)
        if rule.bias_input is not None and rule.bias_input < len(node.input) and node.input[rule.bias_input]:
            plan.biases.append(BiasUse(node.name, rule.bias_input, node.input[rule.bias_input], node.input[0], node.input[1]))
        for out in node.output:
            if out and types.get(out, TensorProto.FLOAT) == TensorProto.FLOAT:
                quantized.add(out)
                if rule.pass_through:
                    plan.groups.union(out, node.input[0])
        if preset.target.fixed_point_rules and node.op_type in SHARED_SCALE_OPS:
            for slot in rule.slots(node):
                if node.input[slot] not in constants:
                    plan.groups.union(node.output[0], node.input[slot])

    _fuse_activations(graph, plan, quantized, producer_of, readers, outputs, node_quantized)
    for node in graph.node:
        if node.name not in node_quantized:
            continue
        if node.op_type in FORMAT_RULES and FORMAT_RULES[node.op_type].weight_input == 1 and node.input[1] in plan.weights:
            plan.shifted.append(ShiftedOp(node.name, node.input[0], node.input[1], _output_after_fusion(node, plan, readers)))
        if node.op_type == "Add":
            plan.adds.append((node.name, [x for x in node.input if x in quantized]))

    order = [v.name for v in graph.input] + [o for n in graph.node for o in n.output]
    plan.activations = [name for name in order if name in quantized]
    for name in plan.activations:
        plan.groups.add(name)
    return plan


def _float_reason(node, rule, ctx, types, quantized, exclude_op_types, exclude_nodes) -> str | None:
    if node.name in exclude_nodes:
        return "excluded by name (kept in float on request)"
    if node.op_type in exclude_op_types:
        return f"op type {node.op_type} excluded (kept in float on request)"
    if rule is None or node.domain not in ("", "ai.onnx"):
        return f"no quantization rule for {node.domain + '.' if node.domain else ''}{node.op_type}: runs in float"
    slots = rule.slots(node)
    for slot in slots:
        name = node.input[slot]
        elem = ctx.constants[name].dtype if name in ctx.constants else None
        if elem is not None and not np.issubdtype(elem, np.floating):
            return f"input {slot} is not a float tensor"
        if elem is None and types.get(name, TensorProto.FLOAT) != TensorProto.FLOAT:
            return f"input {slot} is not a float32 tensor"
    if rule.float_reason is not None:
        reason = rule.float_reason(node, ctx)
        if reason:
            return reason
    if rule.pass_through and node.input[0] not in quantized:
        return "its input is not quantized, so the values pass through in float"
    return None


def _weight_axis(node: onnx.NodeProto, slot: int, value: np.ndarray) -> int | None:
    rule = FORMAT_RULES.get(node.op_type)
    if rule is None or rule.weight_input != slot or rule.weight_axis is None or value.ndim < 2:
        return None
    return rule.weight_axis(node) % value.ndim


def _fuse_activations(graph, plan, quantized, producer_of, readers, outputs, node_quantized) -> None:
    """Relu / Clip(0, x) right after a quantized Conv/Gemm/MatMul/Add: no Q/DQ between them."""
    for node in graph.node:
        if node.op_type not in FUSABLE_ACTIVATIONS or node.name not in node_quantized:
            continue
        if node.op_type == "Clip" and not _clip_starts_at_zero(node, graph):
            continue
        source = node.input[0]
        producer = producer_of.get(source)
        if (
            producer is not None
            and producer.op_type in FUSING_OPS
            and producer.name in node_quantized
            and len(readers.get(source, [])) == 1
            and source not in outputs
        ):
            quantized.discard(source)
            plan.fused.append(source)


def _clip_starts_at_zero(node: onnx.NodeProto, graph: onnx.GraphProto) -> bool:
    if len(node.input) > 1 and node.input[1]:
        low = next((numpy_helper.to_array(t) for t in graph.initializer if t.name == node.input[1]), None)
        return low is not None and float(low) == 0.0
    return attribute(node, "min", float("-inf")) == 0.0


def _output_after_fusion(node: onnx.NodeProto, plan: Plan, readers) -> str:
    out = node.output[0]
    if out in plan.fused:
        return readers[out][0].output[0]
    return out
