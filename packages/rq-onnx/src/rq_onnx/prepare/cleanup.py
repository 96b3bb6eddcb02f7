"""Remove what inference does not need: Identity, Dropout and other training-only nodes, dead nodes."""

from __future__ import annotations

import onnx

from rq_common.format.graph import GraphIndex, remove_unused_initializers, rename_reads

# inference forms that pass input 0 through unchanged
PASS_THROUGH_AT_INFERENCE = frozenset({"Identity", "Dropout"})


def remove_training_nodes(model: onnx.ModelProto, notes: list[str]) -> None:
    graph = model.graph
    index = GraphIndex(model)  # its readers of a mask output stay right: only pass-through nodes go
    removed = []
    for node in list(graph.node):
        if node.op_type not in PASS_THROUGH_AT_INFERENCE or node.output[0] in index.graph_outputs:
            continue
        if any(o and o != node.output[0] and index.consumers_of(o) for o in node.output):
            continue  # a Dropout mask someone reads: leave it
        rename_reads(graph, node.output[0], node.input[0])
        graph.node.remove(node)
        removed.append(node.op_type)
    if removed:
        notes.append(f"removed {len(removed)} inference no-op node(s): {', '.join(sorted(set(removed)))}")
    remove_dead_nodes(model)


def remove_dead_nodes(model: onnx.ModelProto) -> None:
    """Drop nodes none of whose outputs reach a graph output, then unused initializers."""
    graph = model.graph
    needed = {o.name for o in graph.output}
    keep = []
    for node in reversed(graph.node):
        if any(o in needed for o in node.output):
            keep.append(node)
            needed.update(x for x in node.input if x)
    if len(keep) != len(graph.node):
        del graph.node[:]
        graph.node.extend(reversed(keep))
    remove_unused_initializers(graph)


def initializers_out_of_inputs(model: onnx.ModelProto, notes: list[str]) -> None:
    """Old exporters (IR version < 4) also list every initializer as a graph input; such an input
    is a weight a caller could override, so ONNX Runtime cannot treat it as a constant. The
    quantized model replaces those weights, so the inputs go."""
    graph = model.graph
    initializers = {t.name for t in graph.initializer}
    inputs = [v for v in graph.input if v.name not in initializers]
    if len(inputs) != len(graph.input):
        notes.append(f"{len(graph.input) - len(inputs)} initializer(s) were also graph inputs: now constants only")
        del graph.input[:]
        graph.input.extend(inputs)
