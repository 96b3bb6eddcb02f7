"""Builders for the pieces of the int8 format: Q/DQ pairs, int8 weights, int32/int8 bias.

Names are derived from the tensor name (``<t>_scale``, ``<t>_zero_point``, ``<t>_quantized``,
``<t>_dequantized``), so the same model and parameters always give the same bytes.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper

from rq_common.errors import FormatError
from rq_common.format.graph import DEQUANTIZE, QUANTIZE, GraphIndex
from rq_common.qmath.qparams import QParams
from rq_common.qmath.reference import quantize

DEQUANTIZED = "_dequantized"  # the DequantizeLinear output of tensor T is T_dequantized (rq-onnx compare pairs them)


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
    output = output or f"{prefix}{DEQUANTIZED}"
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
    output = output or f"{name}{DEQUANTIZED}"
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


def _add_initializers(graph: onnx.GraphProto, pieces: list[QdqPieces]) -> None:
    """All pieces' initializers; one of an existing name must hold the same value (then it is shared)."""
    existing = {t.name: t for t in graph.initializer}
    for piece in pieces:
        for tensor in piece.initializers:
            if tensor.name not in existing:
                graph.initializer.append(tensor)
                existing[tensor.name] = tensor
            elif existing[tensor.name].SerializeToString(deterministic=True) != tensor.SerializeToString(deterministic=True):
                raise FormatError(
                    f"initializer '{tensor.name}' already exists with another value; is '{piece.output}' quantized twice?"
                )


def insert_qdq_many(
    model: onnx.ModelProto, qparams: dict[str, QParams], float_readers: Mapping[str, Collection[str]] | None = None
) -> dict[str, str]:
    """Put a Q/DQ pair on every tensor of ``qparams``, in place and in one pass over the graph;
    every consumer then reads the dequantized value, except the nodes ``float_readers`` names for
    the tensor (they keep the float value). Returns tensor -> dequantized name.

    A graph output keeps its name: the producer is renamed to ``<tensor>_float`` and the
    DequantizeLinear writes ``tensor``. Each pair follows its tensor's producer in the node list.
    """
    graph = model.graph
    index = GraphIndex(model)
    after: dict[str, list[QdqPieces]] = {}  # producer's first output ("" for graph inputs) -> pairs
    names: dict[str, str] = {}
    for tensor, qp in qparams.items():
        producer = index.producers.get(tensor)
        if tensor in index.graph_outputs and producer is not None:
            source = f"{tensor}_float"
            producer.output[list(producer.output).index(tensor)] = source
            pieces = make_qdq(source, qp, prefix=tensor, output=tensor)
        else:
            pieces = make_qdq(tensor, qp)
            keep_float = (float_readers or {}).get(tensor, ())
            for node, i in index.consumers_of(tensor):
                if node.name not in keep_float:
                    node.input[i] = pieces.output
        after.setdefault(producer.output[0] if producer is not None else "", []).append(pieces)
        names[tensor] = pieces.output
    _add_initializers(graph, [p for group in after.values() for p in group])
    nodes = [n for p in after.get("", []) for n in p.nodes]
    for node in graph.node:
        nodes.append(node)
        nodes.extend(n for p in after.get(node.output[0] if node.output else None, []) for n in p.nodes)
    del graph.node[:]
    graph.node.extend(nodes)
    return names


def insert_qdq(model: onnx.ModelProto, tensor: str, qparams: QParams) -> str:
    """insert_qdq_many for one tensor; returns the name of its dequantized value."""
    return insert_qdq_many(model, {tensor: qparams})[tensor]


def replace_initializers_with_quantized(model: onnx.ModelProto, qparams: dict[str, QParams]) -> dict[str, str]:
    """Quantize float initializers into integer initializers + DequantizeLinear, in place and in one
    pass; every consumer then reads the dequantized value. Returns name -> dequantized name."""
    graph = model.graph
    index = GraphIndex(model)
    pieces = []
    for name, qp in qparams.items():
        piece = make_quantized_constant(name, numpy_helper.to_array(index.initializers[name]), qp)
        for node, i in index.consumers_of(name):
            node.input[i] = piece.output
        pieces.append(piece)
    _add_initializers(graph, pieces)
    nodes = [n for p in pieces for n in p.nodes] + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)
    return {name: p.output for name, p in zip(qparams, pieces, strict=True)}


def replace_initializer_with_quantized(model: onnx.ModelProto, name: str, qparams: QParams) -> str:
    """replace_initializers_with_quantized for one initializer."""
    return replace_initializers_with_quantized(model, {name: qparams})[name]
