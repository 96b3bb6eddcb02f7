"""Cross-layer equalization of a prepared frozen graph (the math: rq_common.qmath.equalization).

The same pairs as the other packages': a Conv2D / DepthwiseConv2dNative / MatMul with a constant
weight (and its BiasAdd, BatchNorm already folded in by prepare) whose output reaches exactly one
other such op's input through ops whose ONNX op (rq_tf1.ops) commutes with a per-channel scale
(and the spatial mean before a classifier head, as rq-onnx's global pooling).
The Const nodes take the equalized values. ReLU6 keeps its pair apart; high-bias absorption needs
calibration data, which comes later: rq-tf1 does not absorb.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from rq_common.optable import facts_for
from rq_common.qmath.equalization import Equalization, Layer, Layout, equalize
from rq_tf1.graphdef import GraphDef, NodeDef, const_value, copy, node_name, nodes_by_name, readers, tensor_name
from rq_tf1.ops import TF_OP_RULES, WEIGHTED_OPS

SPATIAL_MEAN = "ReduceMean"


def _constant(by_name, read, ref: str) -> NodeDef | None:
    """The Const node ``ref`` names, when only one op reads it."""
    node = by_name.get(node_name(ref))
    if node is None or node.op != "Const" or len(read.get(tensor_name(ref), [])) != 1:
        return None
    return node


def _layer(op: NodeDef, kernel: np.ndarray, bias) -> Layer | None:
    if op.op == "MatMul":
        if op.attr["transpose_a"].b:
            return None
        return Layer.from_weight(kernel, bias, Layout.OIK if op.attr["transpose_b"].b else Layout.IO)
    return Layer.from_weight(kernel, bias, Layout.KCM if op.op == "DepthwiseConv2dNative" else Layout.KIO)


def _onnx_op(node: NodeDef, by_name) -> str | None:
    rule = TF_OP_RULES.get(node.op)
    return rule(node, by_name) if rule is not None else None


def _single(read, tensor: str) -> NodeDef | None:
    found = read.get(tensor_name(tensor), [])
    return found[0] if len(found) == 1 else None


def equalize_graph(
    graph_def: GraphDef, config: Equalization, excluded: set[str], outputs: list[str]
) -> tuple[GraphDef, list[str]]:
    """The graph with its pairs equalized, and the notes."""
    out = copy(graph_def)
    by_name, read = nodes_by_name(out), readers(out)
    ends = {node_name(o) for o in outputs}

    def unit(op: NodeDef):
        """(weight Const, BiasAdd, bias Const, the unit's output node) of a weighted op rq can rescale."""
        if op.op not in WEIGHTED_OPS or op.name in excluded or len(op.input) < 2:
            return None
        weight = _constant(by_name, read, op.input[1])
        if weight is None:
            return None
        bias_add = _single(read, op.name)
        if bias_add is None or bias_add.op != "BiasAdd" or op.name in ends:
            return weight, None, None, op
        bias = _constant(by_name, read, bias_add.input[1])
        return (weight, bias_add, bias, bias_add) if bias is not None else None

    pairs, kept_apart = [], 0
    for producer in list(out.node):
        first = unit(producer) if producer.op in WEIGHTED_OPS else None
        if first is None:
            continue
        tensor, relu6 = first[3].name, False
        while tensor not in ends and _single(read, tensor) is not None:
            reader = _single(read, tensor)
            if reader.op in WEIGHTED_OPS:
                second = unit(reader)
                if second is not None and tensor_name(reader.input[0]) == tensor_name(tensor):
                    if relu6:
                        kept_apart += 1
                    else:
                        pairs.append((producer, first, reader, second))
                break
            op = _onnx_op(reader, by_name)
            if op == "Clip":
                relu6 = True
            elif op == SPATIAL_MEAN:
                pass  # rq-tf1 maps only a mean over the spatial axes (NHWC 1, 2) to it: per channel, linear
            elif facts_for(op) is None or not facts_for(op).scale_commutes or reader.name in excluded:
                break
            tensor = reader.name
    notes = [f"cross-layer equalization: {kept_apart} pair(s) joined through ReLU6 left as they are"] if kept_apart else []
    layers: dict[str, Layer] = {}
    units = {}
    for producer, first, reader, second in pairs:
        for op, (weight, _, bias, _) in ((producer, first), (reader, second)):
            if op.name not in layers:
                units[op.name] = (op, weight, bias)
                layers[op.name] = _layer(op, const_value(weight), None if bias is None else const_value(bias))
    pairs = [p for p in pairs if layers[p[0].name] is not None and layers[p[2].name] is not None]
    pairs = [p for p in pairs if layers[p[0].name].out_channels == layers[p[2].name].in_channels]
    if not pairs:
        return out, [*notes, "cross-layer equalization: no pair of layers to equalize"]
    rounds = equalize([(layers[p[0].name], layers[p[2].name]) for p in pairs], config.max_iterations)
    for name in {op.name for p in pairs for op in (p[0], p[2])}:
        op, weight, bias = units[name]
        weight.attr["value"].tensor.CopyFrom(tf.make_tensor_proto(layers[name].weight()))
        if bias is not None:
            bias.attr["value"].tensor.CopyFrom(tf.make_tensor_proto(layers[name].bias.astype(np.float32)))
    notes.append(f"cross-layer equalization: {len(pairs)} pair(s) of layers equalized ({rounds} round(s))")
    return out, notes
