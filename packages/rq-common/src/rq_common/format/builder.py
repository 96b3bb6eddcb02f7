"""Builders for the pieces of the int8 format: Q/DQ pairs, int8 weights, int32/int8 bias.

Names are derived from the tensor name (``<t>_scale``, ``<t>_zero_point``, ``<t>_quantized``,
``<t>_dequantized``), so the same model and parameters always give the same bytes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper

from rq_common.errors import FormatError
from rq_common.format.graph import DEQUANTIZE, QUANTIZE, GraphIndex
from rq_common.qmath.qparams import QParams
from rq_common.qmath.reference import quantize


@dataclass
class QdqPieces:
    """Nodes and initializers to add to a graph, and the float tensor they produce."""

    nodes: list[onnx.NodeProto] = field(default_factory=list)
    initializers: list[onnx.TensorProto] = field(default_factory=list)
    output: str = ""

    def add_to(self, graph: onnx.GraphProto, position: int | None = None) -> None:
        """Add to ``graph``; an initializer of the same name must hold the same value (then it is shared)."""
        existing = {t.name: t for t in graph.initializer}
        for tensor in self.initializers:
            if tensor.name not in existing:
                graph.initializer.append(tensor)
            elif existing[tensor.name].SerializeToString(deterministic=True) != tensor.SerializeToString(deterministic=True):
                raise FormatError(
                    f"initializer '{tensor.name}' already exists with another value; is '{self.output}' quantized twice?"
                )
        if position is None:
            graph.node.extend(self.nodes)
        else:
            for offset, node in enumerate(self.nodes):
                graph.node.insert(position + offset, node)


def qparams_initializers(prefix: str, qparams: QParams) -> list[onnx.TensorProto]:
    """``<prefix>_scale`` (float32) and ``<prefix>_zero_point`` (the spec's dtype)."""
    return [
        numpy_helper.from_array(qparams.scale.astype(np.float32), f"{prefix}_scale"),
        numpy_helper.from_array(qparams.zero_point.astype(qparams.spec.dtype.np_dtype), f"{prefix}_zero_point"),
    ]


def _axis_attrs(qparams: QParams, rank: int | None = None) -> dict[str, int]:
    if not qparams.per_channel:
        return {}
    axis = qparams.axis
    if rank is not None:
        axis %= rank
    return {"axis": int(axis)}


def make_qdq(tensor: str, qparams: QParams, prefix: str | None = None, output: str | None = None) -> QdqPieces:
    """QuantizeLinear -> DequantizeLinear on a run-time tensor (activations)."""
    prefix = prefix or tensor
    scale, zero_point = f"{prefix}_scale", f"{prefix}_zero_point"
    quantized = f"{prefix}_quantized"
    output = output or f"{prefix}_dequantized"
    attrs = _axis_attrs(qparams)
    return QdqPieces(
        nodes=[
            helper.make_node(QUANTIZE, [tensor, scale, zero_point], [quantized], name=f"{prefix}_QuantizeLinear", **attrs),
            helper.make_node(DEQUANTIZE, [quantized, scale, zero_point], [output], name=f"{prefix}_DequantizeLinear", **attrs),
        ],
        initializers=qparams_initializers(prefix, qparams),
        output=output,
    )


def make_quantized_constant(name: str, values: np.ndarray, qparams: QParams, output: str | None = None) -> QdqPieces:
    """An integer initializer ``<name>_quantized`` feeding one DequantizeLinear (weights, bias)."""
    values = np.asarray(values)
    q = quantize(values, qparams)
    output = output or f"{name}_dequantized"
    attrs = _axis_attrs(qparams, values.ndim)
    quantized = f"{name}_quantized"
    return QdqPieces(
        nodes=[
            helper.make_node(
                DEQUANTIZE, [quantized, f"{name}_scale", f"{name}_zero_point"], [output], name=f"{name}_DequantizeLinear", **attrs
            )
        ],
        initializers=[numpy_helper.from_array(q, quantized), *qparams_initializers(name, qparams)],
        output=output,
    )


def insert_qdq(model: onnx.ModelProto, tensor: str, qparams: QParams) -> str:
    """Put a Q/DQ pair on ``tensor`` in place; every consumer then reads the dequantized value.

    A graph output keeps its name: the producer is renamed to ``<tensor>_float`` and the
    DequantizeLinear writes ``tensor``.
    """
    graph = model.graph
    index = GraphIndex(model)
    if tensor in index.graph_outputs:
        source = f"{tensor}_float"
        producer = index.producers[tensor]
        producer.output[list(producer.output).index(tensor)] = source
        pieces = make_qdq(source, qparams, prefix=tensor, output=tensor)
        position = list(graph.node).index(producer) + 1
    else:
        pieces = make_qdq(tensor, qparams)
        for node, i in index.consumers_of(tensor):
            node.input[i] = pieces.output
        producer = index.producers.get(tensor)
        position = list(graph.node).index(producer) + 1 if producer is not None else 0
    pieces.add_to(graph, position)
    return pieces.output


def replace_initializer_with_quantized(model: onnx.ModelProto, name: str, qparams: QParams) -> str:
    """Quantize float initializer ``name`` into an integer initializer + DequantizeLinear, in place."""
    graph = model.graph
    index = GraphIndex(model)
    values = numpy_helper.to_array(index.initializers[name])
    pieces = make_quantized_constant(name, values, qparams)
    for node, i in index.consumers_of(name):
        node.input[i] = pieces.output
    pieces.add_to(graph, 0)
    return pieces.output
