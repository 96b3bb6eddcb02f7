"""BatchNormalization folding: into the preceding Conv, or (for the NPU) into a depthwise 1x1 Conv.

The arithmetic is rq_common.qmath.fold_batchnorm (float64), shared with every rq package.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from rq_common.format.graph import GraphIndex, set_initializer, unique_name
from rq_common.qmath import fold_batchnorm as fold_batchnorm_arrays
from rq_common.qmath import fold_scale_shift


def _bn_params(index: GraphIndex, bn: onnx.NodeProto) -> tuple[list[np.ndarray], float] | None:
    """([gamma, beta, mean, var], epsilon) when all are constants."""
    values = [index.constant(name) for name in bn.input[1:5]]
    if any(v is None for v in values):
        return None
    return values, next((a.f for a in bn.attribute if a.name == "epsilon"), 1e-5)


def _is_inference_bn(node: onnx.NodeProto) -> bool:
    training = next((a.i for a in node.attribute if a.name == "training_mode"), 0)
    return node.op_type == "BatchNormalization" and not training and len([o for o in node.output if o]) == 1


def fold_batchnorm(model: onnx.ModelProto, notes: list[str], lone_to_depthwise: bool) -> None:
    graph = model.graph
    folded = converted = 0
    for bn in list(graph.node):
        if not _is_inference_bn(bn):
            continue
        index = GraphIndex(model)  # again for each BatchNorm: every fold edits the graph
        params = _bn_params(index, bn)
        if params is None:
            continue
        producer = index.producers.get(bn.input[0])
        if producer is not None and _fold_into_conv(index, producer, bn, *params):
            folded += 1
        elif lone_to_depthwise and _to_depthwise_conv(graph, bn, *params):
            converted += 1
    if folded:
        notes.append(f"folded {folded} BatchNormalization node(s) into the preceding Conv")
    if converted:
        notes.append(f"turned {converted} lone BatchNormalization node(s) into depthwise 1x1 Conv for the NPU")


def _fold_into_conv(index: GraphIndex, conv, bn, bn_values, eps) -> bool:
    if conv.op_type != "Conv" or len(index.consumers_of(conv.output[0])) != 1 or conv.output[0] in index.graph_outputs:
        return False
    constants = _conv_constants(index, conv)
    if constants is None:
        return False
    _absorb(index.model.graph, conv, bn, *fold_batchnorm_arrays(*constants, *bn_values, eps), "bn")
    return True


def _conv_constants(index: GraphIndex, conv) -> tuple[np.ndarray, np.ndarray | None] | None:
    """The Conv's constant weight and bias (None for no bias); None when either is not constant."""
    weight = index.constant(conv.input[1])
    has_bias = len(conv.input) > 2 and conv.input[2]
    bias = index.constant(conv.input[2]) if has_bias else None
    if weight is None or (has_bias and bias is None):
        return None
    return weight, bias


def _absorb(graph, conv, after, weight: np.ndarray, bias: np.ndarray, what: str) -> None:
    """The Conv takes the folded weight and bias and the output of ``after``, which goes."""
    weight_name = unique_name(graph, f"{conv.input[1]}_{what}_folded")
    bias_name = unique_name(graph, f"{conv.name or conv.output[0]}_bias_{what}_folded")
    set_initializer(graph, weight_name, weight)
    set_initializer(graph, bias_name, bias)
    del conv.input[1:]
    conv.input.extend([weight_name, bias_name])
    conv.output[0] = after.output[0]
    graph.node.remove(after)


def _to_depthwise_conv(graph, bn, bn_values, eps) -> bool:
    if not _is_rank4(graph, bn.input[0]):
        return False
    channels = len(bn_values[0])
    weight, bias = fold_batchnorm_arrays(np.ones((channels, 1, 1, 1)), None, *bn_values, eps)  # identity conv, then BN
    weight_name = unique_name(graph, f"{bn.name or bn.output[0]}_dw_weight")
    bias_name = unique_name(graph, f"{bn.name or bn.output[0]}_dw_bias")
    set_initializer(graph, weight_name, weight)
    set_initializer(graph, bias_name, bias)
    conv = helper.make_node(
        "Conv", [bn.input[0], weight_name, bias_name], [bn.output[0]], name=bn.name or None, group=channels, kernel_shape=[1, 1]
    )
    position = list(graph.node).index(bn)
    graph.node.remove(bn)
    graph.node.insert(position, conv)
    return True


def _is_rank4(graph: onnx.GraphProto, name: str) -> bool:
    for value in [*graph.value_info, *graph.input, *graph.output]:
        if value.name == name and value.type.tensor_type.HasField("shape"):
            return len(value.type.tensor_type.shape.dim) == 4
    return False


def fold_scale_shift_into_conv(model: onnx.ModelProto, notes: list[str]) -> None:
    """Conv -> Mul(per-channel constant) / Add(per-channel constant): folded into the Conv's weight
    and bias. This is how TensorFlow writes a Keras BatchNormalization it did not fuse (after a
    depthwise conv), and what tf2onnx leaves of it."""
    folded = 0
    while _fold_one_scale_shift(GraphIndex(model)):
        folded += 1
    if folded:
        notes.append(f"folded {folded} per-channel Mul/Add node(s) (BatchNorm written out) into the preceding Conv")


def _fold_one_scale_shift(index: GraphIndex) -> bool:
    for conv in index.model.graph.node:
        if conv.op_type != "Conv" or conv.output[0] in index.graph_outputs:
            continue
        readers = [node for node, _ in index.consumers_of(conv.output[0])]
        constants = _conv_constants(index, conv)
        if len(readers) != 1 or readers[0].op_type not in ("Mul", "Add") or constants is None:
            continue
        op = readers[0]
        weight, bias = constants
        other = op.input[1] if op.input[0] == conv.output[0] else op.input[0]
        per_channel = _per_output_channel(index.constant(other), weight.shape[0], weight.ndim)
        if per_channel is None:
            continue
        scale, shift = (per_channel, 0.0) if op.op_type == "Mul" else (1.0, per_channel)
        _absorb(index.model.graph, conv, op, *fold_scale_shift(weight, bias, scale, shift), op.op_type.lower())
        return True
    return False


def _per_output_channel(value: np.ndarray | None, channels: int, rank: int) -> np.ndarray | None:
    """``value`` as one number per output channel, when it broadcasts over a Conv output
    (N, C, ...) that way: a scalar, or (C, 1, ...) aligned to the right; else None."""
    if value is None or not np.issubdtype(value.dtype, np.floating) or value.ndim > rank:
        return None
    if value.size == 1:
        return np.full(channels, float(value.reshape(-1)[0]))
    shape = (1,) * (rank - value.ndim) + value.shape
    if shape[1] == channels and all(d == 1 for i, d in enumerate(shape) if i != 1):
        return value.reshape(channels)
    return None
