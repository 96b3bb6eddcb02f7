"""Constant folding: Constant nodes become initializers; nodes whose inputs are all constant are
evaluated once (onnx.reference) and replaced by their results."""

from __future__ import annotations

import onnx
from onnx import helper, numpy_helper
from onnx.reference import ReferenceEvaluator

NOT_FOLDED = frozenset({"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli"})


def constants_to_initializers(model: onnx.ModelProto) -> None:
    graph = model.graph
    for node in list(graph.node):
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            value = ReferenceEvaluator(_single_node_model(model, node, [])).run(None, {})[0]
            graph.initializer.append(numpy_helper.from_array(value, node.output[0]))
            graph.node.remove(node)


def _single_node_model(model: onnx.ModelProto, node: onnx.NodeProto, inputs: list[onnx.TensorProto]) -> onnx.ModelProto:
    graph = helper.make_graph([node], "fold", [], [helper.make_tensor_value_info(o, 0, None) for o in node.output if o], inputs)
    return helper.make_model(graph, opset_imports=list(model.opset_import), ir_version=model.ir_version)


def fold_constants(model: onnx.ModelProto, notes: list[str]) -> None:
    constants_to_initializers(model)
    graph = model.graph
    outputs = {o.name for o in graph.output}
    folded = 0
    for node in list(graph.node):
        known = {t.name: t for t in graph.initializer}
        if (
            node.domain not in ("", "ai.onnx")
            or node.op_type in NOT_FOLDED
            or not node.input
            or any(x and x not in known for x in node.input)
            or any(o in outputs for o in node.output)
        ):
            continue
        inputs = [known[x] for x in dict.fromkeys(x for x in node.input if x)]
        values = ReferenceEvaluator(_single_node_model(model, node, inputs)).run(None, {})
        for name, value in zip([o for o in node.output if o], values, strict=True):
            graph.initializer.append(numpy_helper.from_array(value, name))
        graph.node.remove(node)
        folded += 1
    if folded:
        notes.append(f"folded {folded} node(s) with constant inputs")
