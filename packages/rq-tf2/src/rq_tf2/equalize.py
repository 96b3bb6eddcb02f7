"""Cross-layer equalization of a Keras model's graph (the math: rq_common.qmath.equalization).

The same pairs as rq-onnx's and rq-torch's: a Conv1D / Conv2D / DepthwiseConv2D / Dense (its
BatchNormalization folded in, where one follows) whose output reaches exactly one other such
layer's input through layers whose rq-tf2 rule writes only ops that commute with a per-channel
scale (the op table's ``scale_commutes``; the producer's own activation counts too). Channels are
last in every Keras tensor, so a Conv feeds a Dense through a global pooling as well. The result
is each equalized layer's kernel and bias in its own layout, BatchNorm folded in; the rules use
them instead of the layer's own (RuleContext.weights). The user's model is not changed. ReLU6
keeps its pair apart (Relu6.RELU is rq-onnx's and rq-torch's); high-bias absorption needs data,
which quantize_model has only later: rq-tf2 does not absorb.
"""

from __future__ import annotations

import keras
import numpy as np

from rq_common.optable import facts_for
from rq_common.qmath.equalization import Equalization, Layer, Layout, equalize
from rq_tf2.graph import FunctionalGraph, GraphNode
from rq_tf2.layers import QUANT_TWINS
from rq_tf2.rules import RuleContext, _activation_step, _batchnorm_values, _fold, steps_for

L = keras.layers
WEIGHT_LAYERS = (L.Conv1D, L.Conv2D, L.DepthwiseConv2D, L.Dense)


def _weight_layer(node: GraphNode | None):
    layer = node.operation if node is not None else None
    return layer if type(layer) in WEIGHT_LAYERS else None


def _ops(layer, preset) -> list[str | None]:
    return [step.op for step in steps_for(layer, RuleContext(preset, 0))]


def _commutes(ops: list[str | None]) -> bool:
    return all(facts_for(op) is not None and facts_for(op).scale_commutes for op in ops)


def _folded(layer, bn) -> tuple[np.ndarray, np.ndarray | None]:
    """The layer's kernel and bias with the BatchNormalization after it folded in (rq-tf2's fold)."""
    kernel = np.asarray(layer.kernel)
    bias = np.asarray(layer.bias) if layer.bias is not None else None
    if bn is None:
        return kernel, bias
    twin_type = QUANT_TWINS[next(c for c in type(layer).__mro__ if c in QUANT_TWINS)]
    return _fold(twin_type, kernel, bias, *_batchnorm_values(bn.operation), bn.operation.epsilon)


def _to_layer(layer, kernel: np.ndarray, bias) -> Layer:
    if isinstance(layer, L.Dense):
        return Layer.from_weight(kernel, bias, Layout.IO)
    if isinstance(layer, L.DepthwiseConv2D):
        return Layer.from_weight(kernel, bias, Layout.KCM)
    return Layer.from_weight(kernel, bias, Layout.KIO, layer.groups)


def find_pairs(graph: FunctionalGraph, folds: dict[int, GraphNode], preset, excluded: set[str]):
    """(producer, consumer) node pairs, and the number kept apart by a ReLU6 (Clip) between them."""
    pairs, kept_apart = [], 0
    for producer in graph.nodes:
        layer = _weight_layer(producer)
        if layer is None or producer.name in excluded or len(producer.outputs) != 1:
            continue
        ops = [step.op for step in _activation_step(layer.activation, layer.name)]  # its own activation
        tensor = (folds[id(producer.keras_node)] if id(producer.keras_node) in folds else producer).outputs[0]
        while len(graph.readers(tensor)) == 1:
            (reader,) = graph.readers(tensor)
            relu6_apart = "Clip" in ops and _commutes([op for op in ops if op != "Clip"])
            if not (_commutes(ops) or relu6_apart):
                break
            if _weight_layer(reader) is not None:
                if reader.inputs[:1] == (tensor,) and reader.name not in excluded:
                    if relu6_apart:
                        kept_apart += 1
                    else:
                        pairs.append((producer, reader))
                break
            if not isinstance(reader.operation, keras.layers.Layer) or len(reader.outputs) != 1 or reader.name in excluded:
                break
            ops += _ops(reader.operation, preset)
            tensor = reader.outputs[0]
    return pairs, kept_apart


def equalized_weights(
    graph: FunctionalGraph, folds: dict[int, GraphNode], preset, excluded: set[str], config: Equalization
) -> tuple[dict[str, tuple[np.ndarray, np.ndarray | None]], list[str]]:
    """Each equalized layer's (kernel, bias), BatchNorm folded in, by layer name; the notes."""
    pairs, kept_apart = find_pairs(graph, folds, preset, excluded)
    notes = []
    if kept_apart:
        notes.append(
            f"cross-layer equalization: {kept_apart} pair(s) joined through ReLU6 left as they are (its clamp at 6 does not commute with a scale)"
        )
    nodes = {n.name: n for pair in pairs for n in pair}
    folded = {name: _folded(n.operation, folds.get(id(n.keras_node))) for name, n in nodes.items()}
    layers = {name: _to_layer(nodes[name].operation, *folded[name]) for name in nodes}
    pairs = [(p, c) for p, c in pairs if layers[p.name].out_channels == layers[c.name].in_channels]
    if not pairs:
        return {}, [*notes, "cross-layer equalization: no pair of layers to equalize"]
    rounds = equalize([(layers[p.name], layers[c.name]) for p, c in pairs], config.max_iterations)
    weights = {}
    for name in {n.name for pair in pairs for n in pair}:
        _, bias = folded[name]
        new_bias = None if bias is None else layers[name].bias.astype(np.float32)
        weights[name] = (layers[name].weight(), new_bias)
    notes.append(f"cross-layer equalization: {len(pairs)} pair(s) of layers equalized ({rounds} round(s))")
    return weights, notes
