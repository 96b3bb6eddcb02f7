"""Carrying a framework's exact quantization through an exporter that rewrites it.

tf2onnx (and exporters like it) write a fake-quant op as a Q/DQ pair with parameters of their own
making, fold fake-quantized weights into float constants, and rename what they rewrite. A framework
package puts a *marker* (a unique path segment such as ``rqexport7x``) into the names of what each
of its quantizers and weighted layers emits; these helpers find the marked ONNX nodes afterwards
and give them the exact parameters the framework computed with. Also here: names that do not
depend on an exporter's process-wide counters, so the same model gives the same bytes.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from rq_common.format.graph import DEQUANTIZE, QUANTIZE
from rq_common.optable import OP_TABLE, ops_where
from rq_common.qmath import QParams

# the ops whose constant input a framework layer quantizes: its weight, or a constant operand
WEIGHTED_OPS = ops_where(lambda facts: facts.weight is not None or facts.constant_operand)


@dataclass(frozen=True)
class LayerParams:
    """What one marked weighted layer used: its weight QParams (per channel along the output
    channels, in any axis: the ONNX axis is set here) and its bias QParams, if it has a bias."""

    weight: QParams
    bias: QParams | None = None
    constant_operand: bool = False  # an Add whose constant operand is the layer's quantized "weight"


def marker_in(node: onnx.NodeProto, markers, constants=frozenset()) -> str | None:
    """The marker among the node's name segments, or else in the name of one of its constant
    inputs (exporters rename some nodes they rewrite, a Conv with its bias folded in)."""
    for name in (node.name, *(i for i in node.input if i in constants)):
        found = next((part for part in name.replace(":", "/").split("/") if part in markers), None)
        if found:
            return found
    return None


def set_exact_qdq_params(model: onnx.ModelProto, params: Mapping[str, QParams]) -> None:
    """Every QuantizeLinear / DequantizeLinear whose name carries a marker of ``params`` takes that
    scale and zero point (in the spec's integer type)."""
    graph = model.graph
    added: set[str] = set()
    for node in graph.node:
        marker = marker_in(node, params) if node.op_type in (QUANTIZE, DEQUANTIZE) else None
        if marker is None:
            continue
        qparams = params[marker]
        scale_name, zero_name = f"{marker}_scale", f"{marker}_zero_point"
        if marker not in added:
            graph.initializer.append(numpy_helper.from_array(np.asarray(qparams.scale, np.float32), scale_name))
            graph.initializer.append(
                numpy_helper.from_array(np.asarray(qparams.zero_point, qparams.spec.dtype.np_dtype), zero_name)
            )
            added.add(marker)
        node.input[1], node.input[2] = scale_name, zero_name


def marked_constant_qparams(model: onnx.ModelProto, layers: Mapping[str, LayerParams]) -> dict[str, QParams]:
    """Float weight / bias initializer name -> the QParams its marked layer quantized it with, for
    the canonicalizer's ``weight_qparams``. A constant two layers share with different QParams
    (exporters merge equal constants) is copied, one for each."""
    graph = model.graph
    initializers = {t.name for t in graph.initializer}
    known: dict[str, QParams] = {}
    for node in graph.node:
        marker = marker_in(node, layers, initializers) if node.op_type in WEIGHTED_OPS else None
        facts = OP_TABLE.get(node.op_type)
        if marker is None or (facts.weight is None and not layers[marker].constant_operand):
            continue
        slots = [i for i, name in enumerate(node.input) if name in initializers]
        if not slots:
            continue
        layer = layers[marker]
        weight_slot = facts.weight if facts.weight in slots else slots[0]
        weight = layer.weight
        if weight.per_channel:
            rank = len(next(t for t in graph.initializer if t.name == node.input[weight_slot]).dims)
            axis = facts.weight_axis(node) % rank
            weight = QParams(weight.scale, weight.zero_point, weight.spec.replace(axis=axis), axis=axis)
        _claim(graph, node, weight_slot, weight, known)
        if facts.bias in slots and layer.bias is not None:
            _claim(graph, node, facts.bias, layer.bias, known)
    return known


def _claim(graph: onnx.GraphProto, node: onnx.NodeProto, slot: int, qparams: QParams, known: dict) -> None:
    name = node.input[slot]
    if name in known and known[name] != qparams:
        source = next(t for t in graph.initializer if t.name == name)
        copy = onnx.TensorProto()
        copy.CopyFrom(source)
        copy.name = f"{name}_{node.name.replace('/', '_')}"
        graph.initializer.append(copy)
        node.input[slot] = name = copy.name
    known[name] = qparams


_GENERATED = re.compile(r"__(\d+)")


def renumber_generated_names(model: onnx.ModelProto) -> None:
    """Names an exporter numbers with a process-wide counter ("Conv__134", "unk__339"), numbered
    again in graph order: a second export in one process then gives the same names."""
    numbers: dict[str, str] = {}

    def rename(name: str) -> str:
        return _GENERATED.sub(lambda m: "__" + numbers.setdefault(m.group(1), str(len(numbers) + 1)), name)

    graph = model.graph
    for node in graph.node:
        node.name = rename(node.name)
        node.input[:] = [rename(n) for n in node.input]
        node.output[:] = [rename(n) for n in node.output]
    for item in (*graph.initializer, *graph.input, *graph.output, *graph.value_info):
        item.name = rename(item.name)
    for value in (*graph.input, *graph.output, *graph.value_info):
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param:
                dim.dim_param = rename(dim.dim_param)


def shorten_names(model: onnx.ModelProto, drop: Callable[[str], bool]) -> dict[str, str]:
    """Every node named "<layer>/<OpType>" (numbered where repeated), its outputs after it, in
    place of the scoped names an exporter leaves ("model_1/conv_1/rqexport4x/convolution__5:0"):
    the same int8 model is then about the same size from every framework. ``drop`` tells the path
    segments that are not the layer (the model's scope, markers); the layer is the first segment
    left, where a segment is left besides the op's own name. Graph inputs and outputs keep their
    names. Returns old node name -> new, in place."""
    graph = model.graph
    renamed: dict[str, str] = {}
    keep = {v.name for v in (*graph.input, *graph.output)} | {t.name for t in graph.initializer}
    taken = set(keep)  # a new name is never one of the tensors that keep theirs
    tensors: dict[str, str] = {}
    for node in graph.node:
        kept = [part for part in node.name.split("/") if part and not drop(part)]
        base = f"{kept[0]}/{node.op_type}" if len(kept) > 1 else node.op_type
        new, count = base, 1
        while new in taken:
            count += 1
            new = f"{base}_{count}"
        taken.add(new)
        renamed[node.name] = new
        for i, out in enumerate(node.output):
            if out and out not in keep:
                tensors[out] = new if len(node.output) == 1 else f"{new}:{i}"
        node.name = new
    for node in graph.node:
        node.input[:] = [tensors.get(x, x) for x in node.input]
        node.output[:] = [tensors.get(x, x) for x in node.output]
    for value in graph.value_info:
        value.name = tensors.get(value.name, value.name)
    return renamed


def name_constants_by_first_reader(model: onnx.ModelProto) -> None:
    """Each initializer named after the first node that reads it, and the list sorted: an exporter
    that keeps one of several equal constants under whichever name it met first then writes the
    same bytes every run."""
    graph = model.graph
    initializers = {t.name for t in graph.initializer}
    new: dict[str, str] = {}
    for node in graph.node:
        for slot, name in enumerate(node.input):
            if name in initializers and name not in new:
                new[name] = f"{node.name}:in{slot}"
            if name in new:
                node.input[slot] = new[name]
    for tensor in graph.initializer:
        tensor.name = new.get(tensor.name, tensor.name)
    ordered = sorted(graph.initializer, key=lambda t: t.name)
    del graph.initializer[:]
    graph.initializer.extend(ordered)
