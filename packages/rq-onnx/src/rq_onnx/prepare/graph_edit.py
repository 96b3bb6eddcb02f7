"""Small in-place edits of a GraphProto shared by the preparation steps."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper


def initializer_map(graph: onnx.GraphProto) -> dict[str, onnx.TensorProto]:
    return {t.name: t for t in graph.initializer}


def constant_value(graph: onnx.GraphProto, name: str) -> np.ndarray | None:
    for tensor in graph.initializer:
        if tensor.name == name:
            return numpy_helper.to_array(tensor)
    return None


def set_initializer(graph: onnx.GraphProto, name: str, value: np.ndarray) -> None:
    tensor = numpy_helper.from_array(np.asarray(value), name)
    for i, existing in enumerate(graph.initializer):
        if existing.name == name:
            graph.initializer[i].CopyFrom(tensor)
            return
    graph.initializer.append(tensor)


def consumers(graph: onnx.GraphProto, name: str) -> list[tuple[onnx.NodeProto, int]]:
    return [(n, i) for n in graph.node for i, x in enumerate(n.input) if x == name]


def rename_tensor_reads(graph: onnx.GraphProto, old: str, new: str) -> None:
    for node in graph.node:
        for i, x in enumerate(node.input):
            if x == old:
                node.input[i] = new


def graph_output_names(graph: onnx.GraphProto) -> set[str]:
    return {o.name for o in graph.output}


def remove_unused_initializers(graph: onnx.GraphProto) -> None:
    used = {x for n in graph.node for x in n.input} | graph_output_names(graph)
    keep = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    inputs = [v for v in graph.input if v.name in used or v.name not in {t.name for t in keep}]
    del graph.input[:]
    graph.input.extend(inputs)


def unique_name(graph: onnx.GraphProto, base: str) -> str:
    taken = {t.name for t in graph.initializer} | {o for n in graph.node for o in n.output} | {v.name for v in graph.input}
    name, i = base, 1
    while name in taken:
        name, i = f"{base}_{i}", i + 1
    return name
