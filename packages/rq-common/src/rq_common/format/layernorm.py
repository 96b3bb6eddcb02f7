"""A LayerNormalization written out as elementwise ops is one ONNX LayerNormalization again.

tf2onnx writes a Keras LayerNormalization as about a dozen ops (mean, variance, rsqrt, and the
normalization as x * scale + shift, the form of a folded batch norm), and older exporters write the
textbook form (x - mean) / sqrt(var + eps) * gamma + beta. Quantized op by op, the variance and
its reciprocal square root would each get an int8 step of their own, which loses most of their
range, and the NPU runs LayerNormalization as one op. Both forms over the last axis become one
LayerNormalization(axis=-1) with the same epsilon, gamma and beta (ones and zeros where absent).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper

from rq_common.format.graph import GraphIndex, attribute


def _shapes(model: onnx.ModelProto) -> dict[str, tuple[int | None, ...]]:
    """Inferred shapes by tensor name (None for a dimension that is not a fixed number)."""
    graph = onnx.shape_inference.infer_shapes(model).graph
    shapes: dict[str, tuple[int | None, ...]] = {t.name: tuple(t.dims) for t in graph.initializer}
    for value in (*graph.input, *graph.value_info, *graph.output):
        if value.type.tensor_type.HasField("shape"):
            dims = value.type.tensor_type.shape.dim
            shapes[value.name] = tuple(d.dim_value if d.HasField("dim_value") else None for d in dims)
    return shapes


@dataclass
class _Match:
    """What one written-out LayerNormalization reads, computes and spans."""

    x: str
    channels: int | None = None
    out: str = ""
    epsilon: float = 0.0
    gamma: np.ndarray | None = None
    beta: np.ndarray | None = None
    nodes: list[onnx.NodeProto] = field(default_factory=list)


class _Matcher:
    """Walks forward from a mean over the last axis, one expected op at a time."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.index = GraphIndex(model)
        self.shapes = _shapes(model)

    def is_last_axis_mean(self, node: onnx.NodeProto) -> bool:
        rank = len(self.shapes.get(node.input[0], ())) or None
        if node.op_type == "GlobalAveragePool":  # tf2onnx's form on a rank-3 input: the mean over axis 2
            return rank == 3
        if node.op_type != "ReduceMean" or attribute(node, "keepdims", 1) != 1 or rank is None:
            return False
        axes = attribute(node, "axes")
        if axes is None and len(node.input) > 1:  # opset 18: axes is an input
            value = self.index.constant(node.input[1])
            axes = None if value is None else value.reshape(-1).tolist()
        return axes is not None and [a % rank for a in axes] == [rank - 1]

    def reader(self, tensor: str, *ops: str) -> onnx.NodeProto | None:
        """The one node of one of ``ops`` that reads ``tensor``."""
        found = {id(n): n for n, _ in self.index.consumers_of(tensor) if n.op_type in ops}  # x * x reads twice
        return next(iter(found.values())) if len(found) == 1 else None

    def binary(self, tensor: str, op: str, other: str | None = None) -> tuple[onnx.NodeProto, str] | None:
        """The one two-input ``op`` node that reads ``tensor`` (with ``other``, if given), and its other operand."""
        found = []
        for node, slot in self.index.consumers_of(tensor):
            operand = node.input[1 - slot] if node.op_type == op and len(node.input) == 2 else None
            if operand is not None and (other is None or operand == other):
                found.append((node, operand))
        return found[0] if len(found) == 1 else None

    def channel_constant(self, name: str, channels: int | None) -> np.ndarray | None:
        """A constant that broadcasts over the last axis only, as a 1-d array of ``channels``."""
        value = self.index.constant(name)
        if value is None or any(d != 1 for d in value.shape[:-1]):
            return None
        value = value.astype(np.float32).reshape(-1)
        if value.size == 1 and channels:
            return np.full(channels, value[0], np.float32)
        return value if value.size == channels else None

    def match(self, mean: onnx.NodeProto) -> _Match | None:
        """Both written-out forms, from their common head: mean, x - mean, its square, variance + eps, sqrt."""
        if not self.is_last_axis_mean(mean):
            return None
        found = _Match(x=mean.input[0], nodes=[mean])
        channels = (self.shapes.get(found.x) or (None,))[-1]
        step = self.binary(mean.output[0], "Sub", other=found.x)
        if step is None or step[0].input[0] != found.x:
            return None
        sub = step[0]
        centered = sub.output[0]
        square = self.reader(centered, "Mul", "Pow")
        if square is None or not (
            list(square.input) == [centered, centered]
            or (square.op_type == "Pow" and np.array_equal(self.index.constant(square.input[1]), 2))
        ):
            return None
        variance = self.reader(square.output[0], mean.op_type)
        if variance is None or not self.is_last_axis_mean(variance):
            return None
        step = self.binary(variance.output[0], "Add")
        epsilon = None if step is None else self.index.constant(step[1])
        if epsilon is None or epsilon.size != 1:
            return None
        sqrt = self.reader(step[0].output[0], "Sqrt")
        if sqrt is None:
            return None
        found.epsilon = float(epsilon.reshape(()))
        found.nodes += [sub, square, variance, step[0], sqrt]
        tail = self._scale_shift_tail if self.reader(sqrt.output[0], "Reciprocal") else self._textbook_tail
        found = tail(found, mean, centered, sqrt, channels)
        if found is not None:
            known = next((v.size for v in (found.gamma, found.beta) if v is not None), None)
            found.channels = channels or known
        return found

    def _textbook_tail(self, found: _Match, mean, centered, sqrt, channels) -> _Match | None:
        """(x - mean) / sqrt [* gamma] [+ beta]."""
        step = self.binary(sqrt.output[0], "Div", other=centered)
        if step is None or step[0].input[0] != centered:
            return None
        found.nodes.append(step[0])
        out = step[0].output[0]
        step = self.binary(out, "Mul")
        if step is not None and (gamma := self.channel_constant(step[1], channels)) is not None:
            found.gamma, out = gamma, step[0].output[0]
            found.nodes.append(step[0])
        step = self.binary(out, "Add")
        if step is not None and (beta := self.channel_constant(step[1], channels)) is not None:
            found.beta, out = beta, step[0].output[0]
            found.nodes.append(step[0])
        found.out = out
        return found

    def _scale_shift_tail(self, found: _Match, mean, centered, sqrt, channels) -> _Match | None:
        """tf2onnx's: scale = 1/sqrt [* gamma]; x * scale + (-mean * scale [+ beta])."""
        reciprocal = self.reader(sqrt.output[0], "Reciprocal")
        found.nodes.append(reciprocal)
        scale = reciprocal.output[0]
        step = self.binary(scale, "Mul")
        if step is not None and (gamma := self.channel_constant(step[1], channels)) is not None:
            found.gamma, scale = gamma, step[0].output[0]
            found.nodes.append(step[0])
        scaled = self.binary(scale, "Mul", other=found.x)
        negated = self.reader(mean.output[0], "Neg")
        if scaled is None or negated is None:
            return None
        shift = self.binary(negated.output[0], "Mul", other=scale)
        if shift is None:
            return None
        found.nodes += [scaled[0], negated, shift[0]]
        shift_out = shift[0].output[0]
        step = self.binary(shift_out, "Add")
        if step is not None and step[1] != scaled[0].output[0]:
            beta = self.channel_constant(step[1], channels)
            if beta is None:
                return None
            found.beta, shift_out = beta, step[0].output[0]
            found.nodes.append(step[0])
        total = self.binary(shift_out, "Add", other=scaled[0].output[0])
        if total is None:
            return None
        found.nodes.append(total[0])
        found.out = total[0].output[0]
        return found

    def self_contained(self, found: _Match) -> bool:
        """No tensor made inside is read outside (or is a graph output), but the result."""
        inside = {id(n) for n in found.nodes}
        made = {o for n in found.nodes for o in n.output} - {found.out}
        return not any(
            t in self.index.graph_outputs or any(id(n) not in inside for n, _ in self.index.consumers_of(t)) for t in made
        )


def fuse_layer_norms(model: onnx.ModelProto) -> list[str]:
    """Rewrite every written-out LayerNormalization over the last axis into one op, in place
    (opset 17 or later, where LayerNormalization exists); returns a log, one line per fusion."""
    matcher = _Matcher(model)
    matches = [
        m
        for node in model.graph.node
        if node.op_type in ("ReduceMean", "GlobalAveragePool")
        and (m := matcher.match(node)) is not None
        and m.channels
        and matcher.self_contained(m)
    ]
    graph = model.graph
    log: list[str] = []
    for found in matches:  # disjoint: each one's inner tensors are read by itself alone
        mean = found.nodes[0]  # every other op of the match depends on it: the first in graph order
        name = (mean.name or found.out).removesuffix("/moments/mean")  # TF's tf.nn.moments scope -> the layer's
        gamma = found.gamma if found.gamma is not None else np.ones(found.channels, np.float32)
        beta = found.beta if found.beta is not None else np.zeros(found.channels, np.float32)
        graph.initializer.extend([numpy_helper.from_array(gamma, f"{name}/gamma"), numpy_helper.from_array(beta, f"{name}/beta")])
        fused = onnx.helper.make_node(
            "LayerNormalization",
            [found.x, f"{name}/gamma", f"{name}/beta"],
            [found.out],
            name=f"{name}/LayerNormalization",
            axis=-1,
            epsilon=found.epsilon,
        )
        graph.node.insert(list(graph.node).index(mean), fused)
        for node in found.nodes:
            graph.node.remove(node)
        log.append(f"{len(found.nodes)} ops from '{name}' -> one LayerNormalization (epsilon {found.epsilon:g})")
    # the constants only the replaced ops read (epsilon, the broadcast gamma and beta, axes) go too
    replaced_reads = {i for m in matches for n in m.nodes for i in n.input}
    read = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    for tensor in [t for t in graph.initializer if t.name in replaced_reads and t.name not in read]:
        graph.initializer.remove(tensor)
    return log
