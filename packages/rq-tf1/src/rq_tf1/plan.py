"""What gets quantized in a prepared frozen graph: TF op rules (the ONNX op tf2onnx writes for each TF
op) and rq_common's placement over them, the same rules as rq-onnx, rq-torch and rq-tf2.

A weighted op (Conv2D, DepthwiseConv2dNative, MatMul) and the BiasAdd after it are one op, as
tf2onnx writes them (the bias in the Conv's / Gemm's bias slot). Keras's PReLU, frozen as
Relu(x) + Relu(Neg(x)) * (-alpha), is one op too: ONNX's PRelu, which the export fuses it into
(rq_common.format.fuse_written_out_activations), its constant quantized per tensor.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import tensorflow as tf

from rq_common.optable import facts_for
from rq_common.pipeline.placement import EXCLUDED, FloatOp, OpNode, Placement, place_quantizers
from rq_common.spec import Preset
from rq_tf1.graphdef import GraphDef, NodeDef, const_value, nodes_by_name, readers, tensor_name
from rq_tf1.ops import TF_OP_RULES, WEIGHTED_OPS


@dataclass(frozen=True)
class WeightedOp:
    """A Conv2D / DepthwiseConv2dNative / MatMul with its constant weight, and its BiasAdd if any."""

    node: str
    op: str
    weight: str  # the Const node
    bias: str | None  # the bias Const node
    bias_add: str | None
    input_tensor: str
    output_tensor: str  # after the BiasAdd


@dataclass(frozen=True)
class PReluOp:
    """Relu(x) + Relu(Neg(x)) * c: the Add, its constant c (-alpha, quantized as the op's slope),
    and the nodes inside it (no quantizer between them)."""

    node: str  # the Add
    constant: str  # the Const node of c
    input_tensor: str
    inner: tuple[str, ...]  # Relu, Neg, Relu, Mul


@dataclass
class Tf1Plan:
    placement: Placement
    weighted: list[WeightedOp] = field(default_factory=list)
    adds: list[list[str]] = field(default_factory=list)  # the quantized input tensors of each Add
    fused_output: dict[str, str] = field(default_factory=dict)  # weighted op -> tensor after its fused ReLU
    bias_adds: dict[str, str] = field(default_factory=dict)  # weighted op -> the BiasAdd merged into it
    prelus: list[PReluOp] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what preparing the graph for the preset changed

    def keep_in_float(self, node: str, reason: str) -> None:
        """A weighted op no NPU position can serve (rq_common's finalize names it) runs in float, as
        rq-onnx keeps such an op: its weight unquantized, the tensors around it quantized for their
        other users (the scales finalize chose hold without it)."""
        (weighted,) = [w for w in self.weighted if w.node == node]
        self.weighted.remove(weighted)
        self.placement.quantized_ops.remove(node)
        self.placement.float_ops.append(FloatOp(node, weighted.op, reason))

    def float_nodes(self) -> list[str]:
        """The nodes that run in float, with the BiasAdds merged into them (tf2onnx names the
        merged Conv after its BiasAdd)."""
        nodes = [op.node for op in self.placement.float_ops]
        return nodes + [self.bias_adds[n] for n in nodes if n in self.bias_adds]


def make_plan(graph_def: GraphDef, inputs: list[str], outputs: list[str], preset: Preset, exclude_nodes=()) -> Tf1Plan:
    by_name, read = nodes_by_name(graph_def), readers(graph_def)
    bias_of: dict[str, NodeDef] = {}
    for node in graph_def.node:
        if node.op == "BiasAdd":
            source = by_name[node.input[0].split(":")[0]]
            if source.op in WEIGHTED_OPS and len(read.get(tensor_name(source.name), [])) == 1:
                bias_of[source.name] = node
    prelus = {p.node: p for p in find_prelus(graph_def)}
    merged = {b.name for b in bias_of.values()} | {name for p in prelus.values() for name in p.inner}
    op_nodes: list[OpNode] = []
    weighted: list[WeightedOp] = []
    for node in graph_def.node:
        if node.op in ("Const", "Placeholder") or node.name in merged or _computes_integers(node):
            continue  # shape arithmetic (Shape -> StridedSlice -> Pack) is no float op
        rule = TF_OP_RULES.get(node.op)
        op = rule(node, by_name) if rule is not None else None
        facts = facts_for(op)
        slots = range(len(node.input)) if facts is None or facts.inputs is None else facts.inputs
        runtime = [  # the data inputs: a Resize's computed size or a Reshape's shape is no quantized tensor
            tensor_name(node.input[i])
            for i in slots
            if i < len(node.input) and const_value(by_name.get(node.input[i].split(":")[0])) is None
        ]
        out = tensor_name(bias_of[node.name].name) if node.name in bias_of else tensor_name(node.name)
        reason = None
        if node.name in prelus:
            op, runtime = "PRelu", [prelus[node.name].input_tensor]
        elif node.op in WEIGHTED_OPS:
            weight = by_name.get(node.input[1].split(":")[0])
            if const_value(weight) is None:
                reason, op = "its weight is not a constant", None
            else:
                bias_add = bias_of.get(node.name)
                weighted.append(
                    WeightedOp(
                        node.name,
                        node.op,
                        weight.name,
                        bias_add.input[1].split(":")[0] if bias_add is not None else None,
                        bias_add.name if bias_add is not None else None,
                        runtime[0],
                        out,
                    )
                )
                runtime = runtime[:1]
        elif op is None:
            reason = f"no quantization rule for TF op {node.op}: runs in float"
        if node.name in exclude_nodes:
            reason = EXCLUDED
        op_nodes.append(OpNode(node.name, op, tuple(runtime), (out,), reason))
    placement = place_quantizers(
        op_nodes,
        [tensor_name(n) for n in inputs],
        [tensor_name(n) for n in outputs],
        preset.target.fixed_point_rules,
        preset.integer_kernels_only,
    )
    plan = Tf1Plan(placement, [w for w in weighted if w.node in placement.quantized_ops])
    plan.bias_adds = {node: bias_add.name for node, bias_add in bias_of.items()}
    plan.prelus = [p for p in prelus.values() if p.node in placement.quantized_ops]
    quantized = set(placement.quantized)
    for node in op_nodes:
        if node.op == "Add" and node.name in placement.quantized_ops:
            plan.adds.append([t for t in node.inputs if t in quantized])
    for w in plan.weighted:
        after = w.output_tensor
        if after in placement.fused:  # through the fused ReLU
            after = next(n.outputs[0] for n in op_nodes if n.inputs and n.inputs[0] == after)
        plan.fused_output[w.node] = after
    return plan


_TYPE_ATTRS = ("out_type", "DstT", "T", "dtype")  # where a TF node says what type it computes


def _computes_integers(node: NodeDef) -> bool:
    """A node whose outputs are integers or booleans: the first type attribute it has says."""
    key = next((k for k in _TYPE_ATTRS if k in node.attr), None)
    if key is None:
        return False
    dtype = tf.as_dtype(node.attr[key].type)
    return dtype.is_integer or dtype.is_bool


def find_prelus(graph_def: GraphDef) -> list[PReluOp]:
    """Every Add(Relu(x), Mul(Relu(Neg(x)), c)) (either order), c a float constant, whose inner
    nodes nothing else reads."""
    by_name, read = nodes_by_name(graph_def), readers(graph_def)

    def only(ref: str, op: str, reader: NodeDef) -> NodeDef | None:
        node = by_name.get(ref.split(":")[0])
        return node if node is not None and node.op == op and read.get(tensor_name(node.name)) == [reader] else None

    found = []
    for add in graph_def.node:
        if add.op not in ("Add", "AddV2") or len(add.input) != 2:
            continue
        for first, second in ((0, 1), (1, 0)):
            relu, mul = only(add.input[first], "Relu", add), only(add.input[second], "Mul", add)
            if relu is None or mul is None or len(mul.input) != 2:
                continue
            for run_time, constant in ((0, 1), (1, 0)):
                c = by_name.get(mul.input[constant].split(":")[0])
                negated = only(mul.input[run_time], "Relu", mul)
                neg = only(negated.input[0], "Neg", negated) if negated is not None else None
                value = const_value(c)
                if neg is None or value is None or not np.issubdtype(value.dtype, np.floating):
                    continue
                if tensor_name(neg.input[0]) == tensor_name(relu.input[0]):
                    found.append(
                        PReluOp(add.name, c.name, tensor_name(relu.input[0]), (relu.name, neg.name, negated.name, mul.name))
                    )
    return found
