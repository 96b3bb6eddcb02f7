"""BatchNormalization folding: into the preceding Conv, or (for the NPU) into a depthwise 1x1 Conv.

Inference BN is y = gamma * (x - mean) / sqrt(var + eps) + beta = factor * x + shift per channel,
so a Conv (W, B) followed by it is the Conv (W * factor, (B - mean) * factor + beta).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from rq_onnx.prepare.graph_edit import constant_value, consumers, graph_output_names, set_initializer, unique_name


def _bn_affine(graph: onnx.GraphProto, bn: onnx.NodeProto) -> tuple[np.ndarray, np.ndarray] | None:
    values = [constant_value(graph, name) for name in bn.input[1:5]]
    if any(v is None for v in values):
        return None
    gamma, beta, mean, var = (v.astype(np.float64) for v in values)
    eps = next((a.f for a in bn.attribute if a.name == "epsilon"), 1e-5)
    factor = gamma / np.sqrt(var + eps)
    return factor, beta - mean * factor


def _is_inference_bn(node: onnx.NodeProto) -> bool:
    training = next((a.i for a in node.attribute if a.name == "training_mode"), 0)
    return node.op_type == "BatchNormalization" and not training and len([o for o in node.output if o]) == 1


def fold_batchnorm(model: onnx.ModelProto, notes: list[str], lone_to_depthwise: bool) -> None:
    graph = model.graph
    folded = converted = 0
    for bn in list(graph.node):
        if not _is_inference_bn(bn):
            continue
        affine = _bn_affine(graph, bn)
        if affine is None:
            continue
        factor, shift = affine
        producer = next((n for n in graph.node if bn.input[0] in n.output), None)
        if producer is not None and _fold_into_conv(graph, producer, bn, factor, shift):
            folded += 1
        elif lone_to_depthwise and _to_depthwise_conv(graph, bn, factor, shift):
            converted += 1
    if folded:
        notes.append(f"folded {folded} BatchNormalization node(s) into the preceding Conv")
    if converted:
        notes.append(f"turned {converted} lone BatchNormalization node(s) into depthwise 1x1 Conv for the NPU")


def _fold_into_conv(graph, conv, bn, factor, shift) -> bool:
    if conv.op_type != "Conv" or len(consumers(graph, conv.output[0])) != 1 or conv.output[0] in graph_output_names(graph):
        return False
    weight = constant_value(graph, conv.input[1])
    if weight is None:
        return False
    bias = constant_value(graph, conv.input[2]) if len(conv.input) > 2 and conv.input[2] else np.zeros(weight.shape[0])
    if bias is None:
        return False
    shape = (-1,) + (1,) * (weight.ndim - 1)
    new_weight = (weight.astype(np.float64) * factor.reshape(shape)).astype(weight.dtype)
    new_bias = (bias.astype(np.float64) * factor + shift).astype(weight.dtype)
    weight_name = unique_name(graph, f"{conv.input[1]}_bn_folded")
    bias_name = unique_name(graph, f"{conv.name or conv.output[0]}_bias_bn_folded")
    set_initializer(graph, weight_name, new_weight)
    set_initializer(graph, bias_name, new_bias)
    del conv.input[1:]
    conv.input.extend([weight_name, bias_name])
    conv.output[0] = bn.output[0]
    graph.node.remove(bn)
    return True


def _to_depthwise_conv(graph, bn, factor, shift) -> bool:
    if not _is_rank4(graph, bn.input[0]):
        return False
    channels = len(factor)
    weight_name = unique_name(graph, f"{bn.name or bn.output[0]}_dw_weight")
    bias_name = unique_name(graph, f"{bn.name or bn.output[0]}_dw_bias")
    set_initializer(graph, weight_name, factor.reshape(channels, 1, 1, 1).astype(np.float32))
    set_initializer(graph, bias_name, shift.astype(np.float32))
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
