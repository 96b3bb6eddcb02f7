"""Cross-layer equalization of a float ONNX model (the math: rq_common.qmath.equalization).

A pair is a Conv / Gemm / MatMul with a constant weight whose output reaches exactly one other
such layer's data input, through ops that commute with a per-channel scale (the op table's
``scale_commutes``; Clip with a lower bound of 0 and no upper one; ReLU6 as ``Equalization.relu6``
says), every tensor on the way read by that path alone. Equalization runs after BatchNorm folding
and before calibration, so the ranges rq calibrates are the equalized model's.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx

from rq_common.format.graph import GraphIndex, attribute, set_initializer, unique_name
from rq_common.optable import facts_for
from rq_common.qmath.equalization import Equalization, Layer, Relu6, absorb_high_bias, equalize
from rq_onnx.calibrate import check_feed, make_session, with_outputs
from rq_onnx.prepare.cleanup import remove_dead_nodes

WEIGHT_LAYERS = frozenset({"Conv", "Gemm", "MatMul"})


@dataclass
class Pair:
    producer: onnx.NodeProto
    consumer: onnx.NodeProto
    path: list[onnx.NodeProto] = field(default_factory=list)  # the ops between them
    relu6: list[onnx.NodeProto] = field(default_factory=list)  # Clip(0, 6) among them


def _clip_bounds(index: GraphIndex, node: onnx.NodeProto) -> tuple[float | None, float | None] | None:
    """A Clip's constant (lower, upper) bounds, None for an absent one; None when one is computed."""
    bounds = []
    for slot in (1, 2):
        if len(node.input) <= slot or not node.input[slot]:
            bounds.append(None)
            continue
        value = index.constant(node.input[slot])
        if value is None:
            return None
        bounds.append(float(np.asarray(value).reshape(-1)[0]))
    return bounds[0], bounds[1]


def _is_relu6(index: GraphIndex, node: onnx.NodeProto) -> bool:
    return node.op_type == "Clip" and _clip_bounds(index, node) == (0.0, 6.0)


def _commutes(index: GraphIndex, node: onnx.NodeProto, relu6: Relu6) -> bool:
    if node.op_type == "Clip":
        bounds = _clip_bounds(index, node)
        return bounds is not None and (bounds == (0.0, None) or (relu6 is Relu6.RELU and bounds == (0.0, 6.0)))
    facts = facts_for(node.op_type)
    return facts is not None and facts.scale_commutes


def _layer(index: GraphIndex, node: onnx.NodeProto) -> Layer | None:
    """The node's weight layer, when it is one rq equalizes: constant weight (read by it alone) and bias."""
    if node.op_type not in WEIGHT_LAYERS or len(node.input) < 2:
        return None
    weight = index.constant(node.input[1])
    if weight is None or len(index.consumers_of(node.input[1])) != 1 or not np.issubdtype(weight.dtype, np.floating):
        return None
    bias = None
    if len(node.input) > 2 and node.input[2]:
        bias = index.constant(node.input[2])
        if bias is None or len(index.consumers_of(node.input[2])) != 1:
            return None
    if node.op_type == "Conv":
        return Layer.conv(weight, bias, int(attribute(node, "group", 1)))
    if weight.ndim != 2:
        return None
    if node.op_type == "MatMul":
        return Layer.linear(weight, None, transposed=True)
    plain = all(attribute(node, a, d) == d for a, d in (("alpha", 1.0), ("beta", 1.0), ("transA", 0)))
    if not plain or (bias is not None and bias.size != weight.shape[0 if attribute(node, "transB", 0) else 1]):
        return None
    return Layer.linear(weight, bias, transposed=not attribute(node, "transB", 0))


def _channel_axis(op_type: str) -> int:
    """Where a layer's output (and input) channels lie: 1 for Conv (N, C, ...), last for Gemm / MatMul."""
    return 1 if op_type == "Conv" else -1


# after a global pooling, these make (N, C, 1, 1) into (N, C): channel i stays channel i, now on the
# last axis, where a Gemm / MatMul reads its input channels (a classifier head after a backbone)
SPATIAL_DROPS = frozenset({"Squeeze", "Flatten", "Reshape"})


def _drops_spatial(index: GraphIndex, node: onnx.NodeProto, before: list[onnx.NodeProto]) -> bool:
    """``node`` turns the (N, C, 1, 1) output of the global pooling just before it into (N, C)."""
    if node.op_type not in SPATIAL_DROPS or not before or before[-1].op_type != "GlobalAveragePool":
        return False
    if node.op_type == "Flatten":
        return attribute(node, "axis", 1) == 1
    if node.op_type == "Reshape":
        shape = index.constant(node.input[1])
        return shape is not None and shape.size == 2 and int(shape[-1]) in (-1,) + tuple(_known_channels(index, node))
    axes = index.constant(node.input[1]) if len(node.input) > 1 and node.input[1] else attribute(node, "axes", None)
    return axes is not None and set(np.asarray(axes).reshape(-1).tolist()) == {2, 3}


def _known_channels(index: GraphIndex, node: onnx.NodeProto) -> list[int]:
    """The channel count of the node's input where shape inference recorded it."""
    for value in index.model.graph.value_info:
        if value.name == node.input[0] and len(value.type.tensor_type.shape.dim) > 1:
            dim = value.type.tensor_type.shape.dim[1]
            return [dim.dim_value] if dim.HasField("dim_value") else []
    return []


def find_pairs(index: GraphIndex, relu6: Relu6) -> tuple[list[Pair], list[Pair]]:
    """(the pairs to equalize, the pairs a ReLU6 keeps apart under Relu6.KEEP)."""
    pairs, kept_apart = [], []
    for producer in index.model.graph.node:
        if producer.op_type not in WEIGHT_LAYERS:
            continue
        tensor, path, axis = producer.output[0], [], _channel_axis(producer.op_type)
        while tensor not in index.graph_outputs and len(index.consumers_of(tensor)) == 1:
            reader, slot = index.consumers_of(tensor)[0]
            if reader.op_type in WEIGHT_LAYERS:
                if slot == 0 and _channel_axis(reader.op_type) == axis:
                    pair = Pair(producer, reader, path, [n for n in path if _is_relu6(index, n)])
                    (pairs if relu6 is Relu6.RELU or not pair.relu6 else kept_apart).append(pair)
                break
            if slot == 0 and _drops_spatial(index, reader, path):
                axis = -1
            elif not (_commutes(index, reader, Relu6.RELU) and slot == 0):
                break
            path.append(reader)
            tensor = reader.output[0]
    return pairs, kept_apart


def _reads_padding(node: onnx.NodeProto) -> bool:
    if node.op_type != "Conv":
        return False
    return any(attribute(node, "pads", [0])) or attribute(node, "auto_pad", b"NOTSET") not in (b"NOTSET", b"VALID")


def _absorbable(index: GraphIndex, pair: Pair) -> bool:
    """High-bias absorption is exact here: one ReLU between them, and a consumer with a bias slot that reads no padding."""
    relu = len(pair.path) == 1 and (
        pair.path[0].op_type == "Relu" or (pair.path[0].op_type == "Clip" and _clip_bounds(index, pair.path[0]) == (0.0, None))
    )
    return relu and pair.consumer.op_type != "MatMul" and not _reads_padding(pair.consumer)


def _lower_bounds(model: onnx.ModelProto, tensors: list[str], feeds: list[dict], axes: dict[str, int]) -> dict[str, np.ndarray]:
    """The least value each channel of ``tensors`` takes over ``feeds`` (the float model run by ORT)."""
    session = make_session(with_outputs(model, tensors))
    names = [o.name for o in session.get_outputs()]
    lows: dict[str, np.ndarray] = {}
    for number, feed in enumerate(feeds, start=1):
        values = dict(zip(names, session.run(None, check_feed(feed, session.get_inputs(), number)), strict=True))
        for tensor in tensors:
            value = np.moveaxis(np.asarray(values[tensor], np.float64), axes[tensor], 0)
            low = value.reshape(value.shape[0], -1).min(axis=1)
            lows[tensor] = low if tensor not in lows else np.minimum(lows[tensor], low)
    return lows


def _write_layer(graph: onnx.GraphProto, node: onnx.NodeProto, layer: Layer) -> None:
    """The node reads the equalized weight and bias: its own initializers take the new values
    (_layer made sure no other node reads them); a constant from a node becomes an initializer."""
    initializers = {t.name for t in graph.initializer}

    def store(slot: int, value: np.ndarray, what: str) -> None:
        if slot < len(node.input) and node.input[slot] in initializers:
            set_initializer(graph, node.input[slot], value)
            return
        name = unique_name(graph, f"{node.output[0]}_{what}_equalized")
        set_initializer(graph, name, value)
        if slot < len(node.input):
            node.input[slot] = name
        else:
            node.input.append(name)

    store(1, layer.weight(), "weight")
    has_bias = len(node.input) > 2 and node.input[2]
    if node.op_type != "MatMul" and (has_bias or np.any(layer.bias)):
        store(2, layer.bias.astype(np.float32), "bias")


def equalize_model(model: onnx.ModelProto, config: Equalization, notes: list[str], feeds: list[dict] | None = None) -> None:
    """Equalize ``model`` in place; high-bias absorption (config.absorb_high_bias) runs on ``feeds``
    (float calibration batches) where there are any."""
    index = GraphIndex(model)
    pairs, kept_apart = find_pairs(index, config.relu6)
    layers = {node.output[0]: _layer(index, node) for p in pairs for node in (p.producer, p.consumer)}
    pairs = [p for p in pairs if layers[p.producer.output[0]] is not None and layers[p.consumer.output[0]] is not None]
    pairs = [p for p in pairs if layers[p.producer.output[0]].out_channels == layers[p.consumer.output[0]].in_channels]
    if kept_apart:
        notes.append(
            f"cross-layer equalization: {len(kept_apart)} pair(s) joined through ReLU6 left as they are "
            "(its clamp at 6 does not commute with a scale; Equalization(relu6='relu') makes it ReLU and equalizes them)"
        )
    if not pairs:
        notes.append("cross-layer equalization: no pair of layers to equalize")
        return
    rounds = equalize([_layers(layers, p) for p in pairs], config.max_iterations)
    relaxed = [n for p in pairs for n in p.relu6]
    for clip in relaxed:  # Relu6.RELU: the clamp goes, as the scales assume
        clip.op_type = "Relu"
        del clip.input[1:]
    notes.append(
        f"cross-layer equalization: {len(pairs)} pair(s) of layers equalized ({rounds} round(s))"
        + (f"; {len(relaxed)} ReLU6 became ReLU" if relaxed else "")
    )
    absorbable = [p for p in pairs if _absorbable(index, p)]
    if config.absorb_high_bias and feeds and absorbable:
        measured = onnx.ModelProto()
        measured.CopyFrom(model)
        _write_layers(measured, pairs, layers)
        tensors = {p.producer.output[0]: _channel_axis(p.producer.op_type) for p in absorbable}
        lows = _lower_bounds(measured, list(tensors), feeds[: config.absorb_batches], tensors)
        moved = sum(bool(np.any(absorb_high_bias(*_layers(layers, p), lows[p.producer.output[0]]) > 0)) for p in absorbable)
        notes.append(
            f"high-bias absorption: bias moved into the next layer in {moved} of {len(absorbable)} pair(s) "
            f"through a ReLU, from {min(len(feeds), config.absorb_batches)} calibration batch(es)"
        )
    _write_layers(model, pairs, layers)
    remove_dead_nodes(model)  # constants the layers read from nodes are initializers now


def _layers(layers: dict[str, Layer], pair: Pair) -> tuple[Layer, Layer]:
    return layers[pair.producer.output[0]], layers[pair.consumer.output[0]]


def _write_layers(model: onnx.ModelProto, pairs: list[Pair], layers: dict[str, Layer]) -> None:
    """Every equalized layer of ``model`` (found by its output: ``model`` may be a copy) reads its new numbers."""
    names = {p.producer.output[0] for p in pairs} | {p.consumer.output[0] for p in pairs}
    for node in model.graph.node:
        if node.output and node.output[0] in names:
            _write_layer(model.graph, node, layers[node.output[0]])
