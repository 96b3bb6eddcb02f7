"""Elementwise forms that are one op, rewritten as that op so that they quantize as one.

Exporters write a division by a constant (attention's 1/sqrt(d), HardSwish's /6), the hard
activations of MobileNetV3 and PP-LCNet and Keras's PReLU as chains of elementwise ops; each op of
such a chain would get its own quantizer (or stay float between them), and Div has no int8 form at
all. Here:
- ``Div(x, c)`` with a float constant ``c`` becomes ``Mul(x, 1/c)`` (the quotient to within one
  float32 rounding);
- ``Clip(x + 3, 0, 6) * (1/6)`` and ``Clip(x * (1/6) + 0.5, 0, 1)`` become ``HardSigmoid(x)``
  (alpha 1/6, beta 0.5, PyTorch's and Keras's definition);
- ``x * HardSigmoid(x)`` and ``(x * Clip(x + 3, 0, 6)) * (1/6)`` become ``HardSwish(x)`` (opset 14);
- ``Relu(x) + Relu(-x) * c`` (Keras's PReLU, ``c = -alpha`` folded by grappler: MTCNN) and
  ``Relu(x) - alpha * Relu(-x)`` become ``PRelu(x, slope)``, the slope a constant of its own.
Each rewrite keeps the graph's function; its tensors keep their names where they stay.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from rq_common.format.graph import GraphIndex, attribute, node_label, set_initializer, unique_name

HARD_SIGMOID_ALPHA, HARD_SIGMOID_BETA = 1.0 / 6.0, 0.5
HARD_SWISH_OPSET = 14
_RTOL = 1e-6


def divisions_to_multiplications(model: onnx.ModelProto) -> list[str]:
    """Every ``Div`` by a float constant becomes a ``Mul`` by its reciprocal; returns a log."""
    index = GraphIndex(model)
    log = []
    for node in model.graph.node:
        if node.op_type != "Div" or node.domain not in ("", "ai.onnx"):
            continue
        divisor = index.constant(node.input[1])
        if divisor is None or not np.issubdtype(divisor.dtype, np.floating) or not np.all(divisor != 0):
            continue
        name = unique_name(model.graph, f"{node.input[1]}_reciprocal")
        set_initializer(model.graph, name, (1.0 / divisor.astype(np.float64)).astype(divisor.dtype))
        node.op_type = "Mul"
        node.input[1] = name
        log.append(f"{node_label(node)}: Div by a constant is a Mul by its reciprocal")
    return log


def fuse_written_out_activations(model: onnx.ModelProto) -> list[str]:
    """The written-out HardSigmoid, HardSwish and PReLU forms as the single ops; returns a log."""
    log = []
    while (line := _fuse_one(model)) is not None:
        log.append(line)
    return log


def _fuse_one(model: onnx.ModelProto) -> str | None:
    index = GraphIndex(model)
    for node in model.graph.node:
        swish_input = _hard_swish_input(index, node) if index.opset >= HARD_SWISH_OPSET else None
        if swish_input is not None:
            return _replace(model, index, node, "HardSwish", swish_input)
        sigmoid_input = _hard_sigmoid_input(index, node)
        if sigmoid_input is not None:
            return _replace(model, index, node, "HardSigmoid", sigmoid_input)
        prelu = _prelu_operands(index, node)
        if prelu is not None:
            source, slope = prelu
            name = unique_name(model.graph, f"{node.name or node.output[0]}_slope".replace("/", "_"))
            set_initializer(model.graph, name, slope)
            return _replace(model, index, node, "PRelu", source, extra_inputs=(name,))
    return None


def _replace(
    model: onnx.ModelProto,
    index: GraphIndex,
    last: onnx.NodeProto,
    op_type: str,
    source: str,
    extra_inputs: tuple[str, ...] = (),
) -> str:
    """``last``'s output computed by one ``op_type`` node on ``source`` (and ``extra_inputs``, its
    constants); the chain before it goes once nothing else reads it."""
    attrs = {"alpha": HARD_SIGMOID_ALPHA, "beta": HARD_SIGMOID_BETA} if op_type == "HardSigmoid" else {}
    fused = helper.make_node(op_type, [source, *extra_inputs], [last.output[0]], name=last.name or None, **attrs)
    substitute(model, last, fused, _chain(index, last, source))
    return f"{node_label(fused)}: written-out {op_type} fused into one op"


def substitute(model: onnx.ModelProto, last: onnx.NodeProto, fused: onnx.NodeProto, chain: list[onnx.NodeProto]) -> None:
    """``fused`` in ``last``'s place (it computes ``last``'s output); the nodes of ``chain`` (producers
    first, ``last`` among them) go once nothing else reads them."""
    graph = model.graph
    position = list(graph.node).index(last)
    graph.node.remove(last)
    graph.node.insert(position, fused)
    read = {x for n in graph.node for x in n.input} | {o.name for o in graph.output}
    for node in reversed(chain):
        if node is not last and not any(o in read for o in node.output):
            graph.node.remove(node)
            read = {x for n in graph.node for x in n.input} | {o.name for o in graph.output}


def _chain(index: GraphIndex, last: onnx.NodeProto, source: str) -> list[onnx.NodeProto]:
    """The nodes between ``source`` and ``last`` (inclusive of ``last``), producers first."""
    found: list[onnx.NodeProto] = []
    stack = [last]
    while stack:
        node = stack.pop()
        if node in found:
            continue
        found.append(node)
        for name in node.input:
            producer = index.producers.get(name)
            if name != source and producer is not None and not index.is_constant(name):
                stack.append(producer)
    return list(reversed(found))


# -- the patterns ------------------------------------------------------------------------------
def _scalar(index: GraphIndex, name: str) -> float | None:
    value = index.constant(name)
    if value is None or value.size != 1 or not np.issubdtype(value.dtype, np.floating):
        return None
    return float(value.reshape(-1)[0])


def _near(value: float | None, target: float) -> bool:
    return value is not None and abs(value - target) <= _RTOL * max(1.0, abs(target))


def _operands(index: GraphIndex, node: onnx.NodeProto) -> tuple[str, float] | None:
    """(the run-time operand, the scalar constant) of a binary Add / Mul with one of each."""
    if len(node.input) != 2:
        return None
    for run_time, constant in ((0, 1), (1, 0)):
        value = _scalar(index, node.input[constant])
        if value is not None and not index.is_constant(node.input[run_time]):
            return node.input[run_time], value
    return None


def _producer(index: GraphIndex, name: str, op_type: str) -> onnx.NodeProto | None:
    node = index.producers.get(name)
    return node if node is not None and node.op_type == op_type else None


def _clip_bounds(index: GraphIndex, clip: onnx.NodeProto) -> tuple[float | None, float | None]:
    if len(clip.input) > 1:  # opset 11 and later: bounds are inputs
        low = _scalar(index, clip.input[1]) if clip.input[1] else None
        high = _scalar(index, clip.input[2]) if len(clip.input) > 2 and clip.input[2] else None
        return low, high
    return attribute(clip, "min"), attribute(clip, "max")


def _relu6_of_plus_3(index: GraphIndex, name: str) -> str | None:
    """x when ``name`` is Clip(x + 3, 0, 6)."""
    clip = _producer(index, name, "Clip")
    if clip is None:
        return None
    low, high = _clip_bounds(index, clip)
    add = _producer(index, clip.input[0], "Add")
    operands = _operands(index, add) if add is not None and _near(low, 0.0) and _near(high, 6.0) else None
    return operands[0] if operands is not None and _near(operands[1], 3.0) else None


def _hard_sigmoid_input(index: GraphIndex, node: onnx.NodeProto) -> str | None:
    """x when ``node`` computes HardSigmoid(x) in one of its written-out forms."""
    if node.op_type == "Mul":  # Clip(x + 3, 0, 6) * (1/6)
        operands = _operands(index, node)
        if operands is not None and _near(operands[1], HARD_SIGMOID_ALPHA):
            return _relu6_of_plus_3(index, operands[0])
    if node.op_type == "Clip":  # Clip(x * (1/6) + 0.5, 0, 1)
        low, high = _clip_bounds(index, node)
        add = _producer(index, node.input[0], "Add")
        shifted = _operands(index, add) if add is not None and _near(low, 0.0) and _near(high, 1.0) else None
        if shifted is not None and _near(shifted[1], HARD_SIGMOID_BETA):
            mul = _producer(index, shifted[0], "Mul")
            scaled = _operands(index, mul) if mul is not None else None
            if scaled is not None and _near(scaled[1], HARD_SIGMOID_ALPHA):
                return scaled[0]
    return None


def _is_hard_sigmoid_of(index: GraphIndex, name: str, x: str) -> bool:
    node = index.producers.get(name)
    if node is None:
        return False
    if node.op_type == "HardSigmoid":
        alpha, beta = attribute(node, "alpha", 0.2), attribute(node, "beta", 0.5)
        return node.input[0] == x and _near(alpha, HARD_SIGMOID_ALPHA) and _near(beta, HARD_SIGMOID_BETA)
    return _hard_sigmoid_input(index, node) == x


def _hard_swish_input(index: GraphIndex, node: onnx.NodeProto) -> str | None:
    """x when ``node`` computes HardSwish(x): x * HardSigmoid(x), or (x * Clip(x + 3, 0, 6)) * (1/6)."""
    if node.op_type != "Mul" or len(node.input) != 2:
        return None
    a, b = node.input
    for x, other in ((a, b), (b, a)):
        if _is_hard_sigmoid_of(index, other, x):
            return x
    operands = _operands(index, node)
    if operands is not None and _near(operands[1], HARD_SIGMOID_ALPHA):
        inner = _producer(index, operands[0], "Mul")
        if inner is not None and len(inner.input) == 2:
            a, b = inner.input
            for x, other in ((a, b), (b, a)):
                if _relu6_of_plus_3(index, other) == x:
                    return x
    return None


def _relu_of_negated(index: GraphIndex, name: str) -> str | None:
    """x when ``name`` is Relu(Neg(x))."""
    relu = _producer(index, name, "Relu")
    neg = _producer(index, relu.input[0], "Neg") if relu is not None else None
    return neg.input[0] if neg is not None else None


def _slope_times_relu_of_negated(index: GraphIndex, name: str) -> tuple[str, np.ndarray] | None:
    """(x, c in x's layout) when ``name`` is Mul(Relu(Neg(x)), c) with a float constant c, in
    either order, or that Mul between a Transpose and its inverse (tf2onnx's NHWC constant)."""
    perm = None
    outer = _producer(index, name, "Transpose")
    if outer is not None:
        perm = [int(p) for p in attribute(outer, "perm")]
        name = outer.input[0]
    mul = _producer(index, name, "Mul")
    if mul is None or len(mul.input) != 2:
        return None
    for run_time, constant in ((0, 1), (1, 0)):
        c, operand = index.constant(mul.input[constant]), mul.input[run_time]
        if perm is not None:
            inner = _producer(index, operand, "Transpose")
            inverse = None if inner is None else [int(p) for p in attribute(inner, "perm")]
            if inverse is None or [inverse[p] for p in perm] != list(range(len(perm))) or c is None:
                continue
            operand = inner.input[0]
            c = c.reshape((1,) * (len(perm) - c.ndim) + c.shape).transpose(perm)
        x = _relu_of_negated(index, operand)
        if c is not None and np.issubdtype(c.dtype, np.floating) and x is not None:
            return x, c
    return None


def _prelu_operands(index: GraphIndex, node: onnx.NodeProto) -> tuple[str, np.ndarray] | None:
    """(x, slope) when ``node`` computes PRelu(x, slope): Relu(x) + Relu(-x) * c (slope -c) or
    Relu(x) - c * Relu(-x) (slope c)."""
    if node.op_type not in ("Add", "Sub") or len(node.input) != 2:
        return None
    orders = ((0, 1), (1, 0)) if node.op_type == "Add" else ((0, 1),)
    for positive, negative in orders:
        relu = _producer(index, node.input[positive], "Relu")
        found = _slope_times_relu_of_negated(index, node.input[negative])
        if relu is None or found is None or relu.input[0] != found[0]:
            continue
        x, c = found
        return x, (-c if node.op_type == "Add" else c).astype(c.dtype)
    return None
