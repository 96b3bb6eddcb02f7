"""The quantized GraphDefs: the eval model (runs in TensorFlow and computes what ONNX Runtime will)
and the graph handed to tf2onnx for export.

Weights and biases become their fake-quantized values (rq_common's reference, bit-exact with
ONNX Runtime). Each quantized tensor gets a quantizer right after it, which every reader then reads:
in the eval model written out as RealDiv, Round (half to even), Add, ClipByValue, Sub, Mul, exactly
ONNX's QuantizeLinear + DequantizeLinear; for export one FakeQuantWithMinMaxVars (tf2onnx writes it
as a Q/DQ pair) whose name carries a marker, so the exporter can give the pair its exact
parameters. An output node keeps its name: the original node is renamed and its quantizer takes
the name, so fetching the output gives the quantized values.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from rq_common.qmath import QParams, fake_quantize
from rq_tf1.calibrate import Scales
from rq_tf1.graphdef import (
    GraphDef,
    const_value,
    copy,
    make_const,
    make_node,
    nodes_by_name,
    replace_reads,
    tensor_name,
    weight_view,
)
from rq_tf1.plan import Tf1Plan

QUANT_MARKER = "rqq{}x"
WEIGHT_MARKER = "rqw{}x"


def quantized_graph(
    graph_def: GraphDef, plan: Tf1Plan, scales: Scales, outputs: list[str], for_export: bool
) -> tuple[GraphDef, dict, dict]:
    """(GraphDef, activation marker -> QParams, weight marker -> weighted op name)."""
    out = copy(graph_def)
    _quantize_constants(out, plan, scales)
    activation_markers: dict[str, QParams] = {}
    for tensor in plan.placement.quantized:
        qparams = scales.of_tensor(plan, tensor)
        marker = QUANT_MARKER.format(len(activation_markers))
        activation_markers[marker] = qparams
        _insert_quantizer(out, tensor, qparams, marker, outputs, for_export)
    weight_markers = {}
    if for_export:
        marked = [(w.node, [w.node, w.weight, *(n for n in (w.bias, w.bias_add) if n)]) for w in plan.weighted]
        marked += [(p.node, [p.node, p.constant, *p.inner]) for p in plan.prelus]
        for i, (op, names) in enumerate(marked):
            marker = WEIGHT_MARKER.format(i)
            weight_markers[marker] = op
            _prefix(out, names, marker, outputs)
    return out, activation_markers, weight_markers


def _quantize_constants(out: GraphDef, plan: Tf1Plan, scales: Scales) -> None:
    by_name = nodes_by_name(out)
    for w in plan.weighted:
        op, weight_node = by_name[w.node], by_name[w.weight]
        kernel = const_value(weight_node)
        view, _ = weight_view(op, kernel)
        quantized = fake_quantize(view, scales.weights[w.node]).reshape(kernel.shape).astype(np.float32)
        weight_node.attr["value"].tensor.CopyFrom(tf.make_tensor_proto(quantized))
        if w.bias is not None:
            bias_node = by_name[w.bias]
            bias = fake_quantize(const_value(bias_node), scales.biases[w.node]).astype(np.float32)
            bias_node.attr["value"].tensor.CopyFrom(tf.make_tensor_proto(bias))
    for prelu in plan.prelus:  # the PReLU's -alpha, per tensor
        node = by_name[prelu.constant]
        quantized = fake_quantize(const_value(node), scales.weights[prelu.node]).astype(np.float32)
        node.attr["value"].tensor.CopyFrom(tf.make_tensor_proto(quantized))


def _insert_quantizer(out: GraphDef, tensor: str, qparams: QParams, marker: str, outputs: list[str], for_export: bool) -> None:
    source = tensor.split(":")[0]
    is_output = source in outputs
    if is_output:  # an Identity after the quantizer takes the output's name
        _rename(out, source, f"{source}/float")
        source_tensor = tensor_name(f"{source}/float")
        scope = f"{source}/float/{marker}"
    else:
        source_tensor = tensor_name(tensor)
        scope = f"{source}/{marker}"
    scale = float(np.float32(qparams.scale))
    zero_point = float(qparams.zero_point)
    qmin, qmax = qparams.spec.qmin, qparams.spec.qmax
    nodes = []
    if for_export:
        low, high = (qmin - zero_point) * scale, (qmax - zero_point) * scale
        nodes += [make_const(f"{scope}/min", np.float32(low)), make_const(f"{scope}/max", np.float32(high))]
        fq = make_node(
            f"{scope}/FakeQuantWithMinMaxVars",
            "FakeQuantWithMinMaxVars",
            [source_tensor, f"{scope}/min", f"{scope}/max"],
            dtype=None,
            num_bits=8,
        )
        nodes.append(fq)
        result = fq.name
    else:
        nodes += [
            make_const(f"{scope}/scale", np.float32(scale)),
            make_const(f"{scope}/zero_point", np.float32(zero_point)),
            make_const(f"{scope}/qmin", np.float32(qmin)),
            make_const(f"{scope}/qmax", np.float32(qmax)),
            make_node(f"{scope}/divide", "RealDiv", [source_tensor, f"{scope}/scale"]),
            make_node(f"{scope}/round", "Round", [f"{scope}/divide"]),
            make_node(f"{scope}/shift", "AddV2", [f"{scope}/round", f"{scope}/zero_point"]),
            make_node(f"{scope}/clip", "ClipByValue", [f"{scope}/shift", f"{scope}/qmin", f"{scope}/qmax"]),
            make_node(f"{scope}/unshift", "Sub", [f"{scope}/clip", f"{scope}/zero_point"]),
            make_node(f"{scope}/dequantize", "Mul", [f"{scope}/unshift", f"{scope}/scale"]),
        ]
        result = nodes[-1].name
    skip = {n.name for n in nodes}
    replace_reads(out, source_tensor, tensor_name(result), skip=skip)
    if is_output:
        nodes.append(make_node(source, "Identity", [tensor_name(result)]))
    out.node.extend(nodes)


def _rename(out: GraphDef, old: str, new: str) -> None:
    for node in out.node:
        if node.name == old:
            node.name = new
    replace_reads(out, old, new)


def _prefix(out: GraphDef, names: list[str], marker: str, outputs: list[str]) -> None:
    """Put ``marker`` in front of these nodes' names (kept for outputs), so tf2onnx's names carry it."""
    for name in names:
        if name not in outputs:
            _rename(out, name, f"{marker}/{name}")
