"""GELU and SiLU written out as elementwise ops, recognized by what they compute, fused to the one op
where the model's opset has it.

Exporters write GELU as ``x * 0.5 * (1 + erf(x / sqrt 2))`` (or its tanh approximation) and SiLU /
Swish as ``x * sigmoid(x)``, in many orders and groupings (``0.5 * x`` first or last, a Div or a Mul
by the reciprocal, Pow or x * x * x). Rather than one pattern per exporter, a candidate is any
elementwise cone that reads one run-time tensor and scalar constants and holds an Erf, a Tanh or a
Sigmoid; it is evaluated (onnx's reference evaluator) on probe values and compared with each
function. A match that ends in the cone's last node becomes ``Gelu`` (opset 20, ``approximate``
"none" or "tanh") or ``Swish`` (opset 24, alpha 1), which quantize as one op (an own output scale).

Below those opsets the chain stays op by op, every op with its own quantizer: that is what ONNX
Runtime's int8 kernels and the NPU run (QLinearMul / QLinearAdd / QLinearSigmoid), and keeping only
the inside of the chain in float gains nothing measurable while the residual stream around it is
quantized (zoo minilm, opset 17: mean cosine 0.8102 -> 0.8085 for npu_transformer, 0.8428 -> 0.8395
for cpu; README, "Quantizing an ONNX model"). QdqPlacement.INTEGER_KERNELS keeps both in float.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper

from rq_common.format.graph import GraphIndex, node_label
from rq_common.format.hard_activations import substitute

ELEMENTWISE = frozenset({"Mul", "Add", "Sub", "Div", "Pow", "Erf", "Tanh", "Sigmoid"})
MARKERS = frozenset({"Erf", "Tanh", "Sigmoid"})  # a cone without one of them is none of these functions
MAX_CONE = 16  # the tanh form is the longest: 9 ops
PROBE = np.concatenate([np.linspace(-8.0, 8.0, 161), [-0.3, -1e-3, 1e-3, 0.7, 2.5]]).astype(np.float32)
TOLERANCE = 2e-5  # float32 evaluation of the written-out forms; gelu and its tanh form differ by up to 5e-4


def _erf(x: np.ndarray) -> np.ndarray:
    return np.vectorize(math.erf)(x.astype(np.float64))


@dataclass(frozen=True)
class SmoothActivation:
    """One function the recognizer knows: the op it fuses to, from which opset, with which attributes."""

    name: str
    op_type: str
    opset: int
    attributes: tuple[tuple[str, object], ...]
    reference: Callable[[np.ndarray], np.ndarray]  # in float64

    def matches(self, values: np.ndarray) -> bool:
        expected = self.reference(PROBE.astype(np.float64))
        return bool(np.all(np.abs(values - expected) <= TOLERANCE * (1.0 + np.abs(expected))))


ACTIVATIONS = (
    SmoothActivation("GELU", "Gelu", 20, (), lambda x: 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))),
    SmoothActivation(
        "GELU (tanh)",
        "Gelu",
        20,
        (("approximate", "tanh"),),
        lambda x: 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3))),
    ),
    SmoothActivation("SiLU", "Swish", 24, (), lambda x: x / (1.0 + np.exp(-x))),
)


def fuse_smooth_activations(model: onnx.ModelProto) -> list[str]:
    """Every written-out GELU / SiLU whose single op the model's opset has, as that op; returns a
    log. The matches do not overlap, so one search serves every replacement."""
    opset = GraphIndex(model).opset
    return [_replace(model, m) for m in find_smooth_activations(model) if opset >= m.activation.opset]


@dataclass(frozen=True)
class Match:
    """A written-out activation: its nodes (producers first), the tensor it reads, what it computes."""

    nodes: tuple[onnx.NodeProto, ...]
    source: str
    activation: SmoothActivation

    @property
    def last(self) -> onnx.NodeProto:
        return self.nodes[-1]


def find_smooth_activations(model: onnx.ModelProto) -> list[Match]:
    """Every written-out GELU / SiLU, whatever the opset: for each Erf / Tanh / Sigmoid, the widest
    elementwise chain around it that computes one of ACTIVATIONS of one tensor."""
    index = GraphIndex(model)
    found: list[Match] = []
    for marker in model.graph.node:
        if marker.op_type not in MARKERS or any(marker in m.nodes for m in found):
            continue
        match = _widest_match(index, marker)
        if match is not None:
            found.append(match)
    return found


def _widest_match(index: GraphIndex, marker: onnx.NodeProto) -> Match | None:
    sources = _nearby(marker, lambda node: [(index.producers.get(i), i) for i in node.input if index.constant(i) is None])
    lasts = _nearby(marker, lambda node: [(c, c) for o in node.output for c, _ in index.consumers_of(o)])
    for last in reversed(lasts):  # the furthest first: GELU's x * (1 + erf) is twice GELU, its * 0.5 is GELU
        for source in sources:
            nodes = _cone(index, last, source)
            if nodes is None or marker not in nodes or not _reads_source_directly(nodes, source):
                continue
            values = _evaluate(index, nodes, source, last.output[0])
            activation = next((a for a in ACTIVATIONS if values is not None and a.matches(values)), None)
            if activation is not None:
                return Match(tuple(nodes), source, activation)
    return None


def _nearby(marker: onnx.NodeProto, step, depth: int = 6) -> list:
    """Breadth-first from ``marker`` through elementwise nodes, ``step(node)`` giving (next node,
    item) pairs: the items in the order met (tensors back towards the source, nodes forward)."""
    items, frontier = [], [marker]
    for _ in range(depth):
        following = []
        for node in frontier:
            for next_node, item in step(node):
                if item not in items:
                    items.append(item)
                if next_node is not None and next_node.op_type in ELEMENTWISE and next_node not in following:
                    following.append(next_node)
        frontier = following
    return items


def _cone(index: GraphIndex, last: onnx.NodeProto, source: str) -> list[onnx.NodeProto] | None:
    """The nodes ``last`` computes from ``source`` and scalar float constants, producers first; None
    when it reads anything else, holds a non-elementwise op, or an inner tensor is read outside."""
    nodes: list[onnx.NodeProto] = []
    stack = [last]
    while stack:
        node = stack.pop()
        if node in nodes:
            continue
        if node.op_type not in ELEMENTWISE or node.domain not in ("", "ai.onnx") or len(nodes) >= MAX_CONE:
            return None
        nodes.append(node)
        for name in node.input:
            value = index.constant(name)
            if name == source or (value is not None and value.size == 1 and np.issubdtype(value.dtype, np.floating)):
                continue
            producer = index.producers.get(name)
            if value is not None or producer is None:
                return None
            stack.append(producer)
    for node in nodes:
        if node is last:
            continue
        if any(o in index.graph_outputs for o in node.output):
            return None
        if any(reader not in nodes for o in node.output for reader, _ in index.consumers_of(o)):
            return None
    return sorted(nodes, key=lambda n: index.positions[n.output[0]])


def _reads_source_directly(nodes: list[onnx.NodeProto], source: str) -> bool:
    """x itself is an operand outside the Erf / Tanh / Sigmoid (x * f(x)): sigmoid(x) alone is no SiLU."""
    return any(source in n.input for n in nodes if n.op_type not in MARKERS)


def _evaluate(index: GraphIndex, nodes: list[onnx.NodeProto], source: str, output: str) -> np.ndarray | None:
    """The cone's output on PROBE, in float64 for the reference comparison; None if it does not run."""
    from onnx.reference import ReferenceEvaluator

    inside = {o for n in nodes for o in n.output}
    constants = [
        onnx.numpy_helper.from_array(np.asarray(index.constant(name)).reshape(()), name)
        for name in dict.fromkeys(i for n in nodes for i in n.input if i and i not in inside and i != source)
    ]
    plain = [helper.make_node(n.op_type, list(n.input), list(n.output), **_attributes(n)) for n in nodes]
    graph = helper.make_graph(
        plain,
        "cone",
        [helper.make_tensor_value_info(source, onnx.TensorProto.FLOAT, [len(PROBE)])],
        [helper.make_tensor_value_info(output, onnx.TensorProto.FLOAT, [len(PROBE)])],
        constants,
    )
    probe = helper.make_model(graph, opset_imports=[helper.make_opsetid("", max(index.opset, 13))])
    try:
        (values,) = ReferenceEvaluator(probe).run(None, {source: PROBE})
    except Exception:  # a cone the reference cannot run (odd dtypes) is no match
        return None
    return np.asarray(values, np.float64).reshape(-1) if np.size(values) == len(PROBE) else None


def _attributes(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _replace(model: onnx.ModelProto, match: Match) -> str:
    """The match's last output computed by one node on its source; the chain's other nodes go
    (nothing else reads them: checked by _cone)."""
    fused = helper.make_node(
        match.activation.op_type,
        [match.source],
        [match.last.output[0]],
        name=match.last.name or None,
        **dict(match.activation.attributes),
    )
    substitute(model, match.last, fused, list(match.nodes))
    return f"{node_label(fused)}: written-out {match.activation.name} fused into one {match.activation.op_type}"
