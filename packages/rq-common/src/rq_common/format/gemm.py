"""MatMul + Add(bias) on a 2-d input is one Gemm: the op the int8 format quantizes with an int bias.

tf2onnx writes a Keras Dense as MatMul + Add when it cannot prove the input is 2-d, and other
exporters do the same; as separate ops the bias would be a float Add after a requantized MatMul.
One Gemm (transB=0, the weight as it was) computes the same, with the bias in its bias slot.
"""

from __future__ import annotations

import onnx

from rq_common.format.graph import GraphIndex


def _ranks(model: onnx.ModelProto) -> dict[str, int]:
    inferred = onnx.shape_inference.infer_shapes(model)
    graph = inferred.graph
    ranks = {t.name: len(t.dims) for t in graph.initializer}
    for value in (*graph.input, *graph.value_info, *graph.output):
        if value.type.tensor_type.HasField("shape"):
            ranks[value.name] = len(value.type.tensor_type.shape.dim)
    return ranks


def _weight_rank(index: GraphIndex, name: str) -> int | None:
    """The rank of a constant weight, read through a DequantizeLinear if it is quantized already."""
    value = index.constant(name)
    if value is None and index.producer_op(name) == "DequantizeLinear":
        value = index.constant(index.producers[name].input[0])
    return None if value is None else value.ndim


def fuse_matmul_bias(model: onnx.ModelProto) -> list[str]:
    """Rewrite every MatMul(2-d input, 2-d constant weight) -> Add(1-d constant) in place; returns a log."""
    ranks = _ranks(model)
    index = GraphIndex(model)
    graph = model.graph
    log: list[str] = []
    for matmul in list(graph.node):
        if matmul.op_type != "MatMul" or ranks.get(matmul.input[0]) != 2 or _weight_rank(index, matmul.input[1]) != 2:
            continue
        readers = index.consumers_of(matmul.output[0])
        if len(readers) != 1 or readers[0][0].op_type != "Add" or matmul.output[0] in index.graph_outputs:
            continue
        add, slot = readers[0]
        bias = add.input[1 - slot]
        if not index.is_constant(bias) or _weight_rank(index, bias) != 1:
            continue
        gemm = onnx.helper.make_node("Gemm", [matmul.input[0], matmul.input[1], bias], list(add.output), name=matmul.name)
        position = list(graph.node).index(matmul)
        graph.node.remove(matmul)
        graph.node.remove(add)
        graph.node.insert(position, gemm)
        log.append(f"MatMul '{matmul.name}' + Add '{add.name}' -> Gemm (the bias in its bias slot)")
    return log
