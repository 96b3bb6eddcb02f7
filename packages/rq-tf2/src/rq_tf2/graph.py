"""A read-only view of a Functional (or built Sequential) Keras model's graph, and its rebuild.

Keras 3 keeps the graph in ``_nodes_by_depth``; Functional._run_through_graph walks it the same way
(deepest first). This module is the one place that reads it.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass

import keras
from keras import tree

from rq_tf2.errors import UnsupportedModelError


@dataclass(frozen=True)
class GraphNode:
    operation: object  # a keras Layer, or a keras Operation (keras.ops called on symbolic tensors)
    inputs: tuple[int, ...]  # keys (ids) of the KerasTensors it reads
    outputs: tuple[int, ...]
    keras_node: object

    @property
    def name(self) -> str:
        return self.operation.name


@dataclass
class FunctionalGraph:
    model: keras.Model
    nodes: list[GraphNode]
    inputs: list[int]
    outputs: list[int]
    ranks: dict[int, int]  # tensor key -> rank (batch included)

    def producer(self, tensor: int) -> GraphNode | None:
        return next((n for n in self.nodes if tensor in n.outputs), None)

    def readers(self, tensor: int) -> list[GraphNode]:
        return [n for n in self.nodes if tensor in n.inputs]


def functional_of(model: keras.Model) -> keras.Model:
    """The Functional model behind ``model``; a clear error for models rq cannot see into."""
    if isinstance(model, keras.Sequential):
        functional = getattr(model, "_functional", None)
        if functional is None:
            raise UnsupportedModelError(
                f"Sequential model '{model.name}' is not built: give it a keras.Input(shape=...) first, "
                "or call it once on data, so that its inputs are known"
            )
        return functional
    if not hasattr(model, "_nodes_by_depth") or not getattr(model, "inputs", None):
        return _trace_subclassed(model)
    return model


def _trace_subclassed(model: keras.Model) -> keras.Model:
    """A subclassed model's call() run once on a symbolic Input: when it uses only Keras layers and
    keras.ops, that records the same computation, over the same layers, as a Functional graph."""
    name = f"'{model.name}' ({type(model).__name__} defines its own call())"
    shape = _build_shape(model)
    if shape is None or not all(isinstance(d, int) or d is None for d in shape):
        raise UnsupportedModelError(
            f"subclassed model {name} has no known input shape: build it with one before quantizing "
            "(model.build((None, height, width, channels)), or keras.Input and the Functional API); rq traces one tensor input"
        )
    inputs = keras.Input(batch_shape=(None, *shape[1:]), name="input")
    try:
        outputs = model.call(inputs)
    except Exception as error:
        raise UnsupportedModelError(
            f"subclassed model {name} cannot be traced with Keras tensors ({type(error).__name__}: "
            f"{str(error).strip().splitlines()[0]}). rq needs "
            "to see where its tensors flow: write call() with Keras layers and keras.ops only (no tf.* ops, no Python "
            "branches on tensor values), or build it with the Functional API"
        ) from None
    return keras.Model(inputs, outputs, name=model.name)


def _build_shape(model: keras.Model) -> tuple | None:
    """The input shape the model was built with: what Keras recorded from ``build(shape)``, or, for a
    model whose ``build()`` was called with no argument, the default of its ``input_shape``
    parameter (Keras records nothing then, though the layers were built for that shape)."""
    shapes = getattr(model, "_build_shapes_dict", None) or {}
    if shapes:
        return tuple(next(iter(shapes.values())))
    parameters = list(inspect.signature(type(model).build).parameters.values())[1:2]  # after self
    default = parameters[0].default if parameters else inspect.Parameter.empty
    if model.built and isinstance(default, (tuple, list)):
        return tuple(default)
    return None


def functional_graph(model: keras.Model) -> FunctionalGraph:
    functional = functional_of(model)
    nodes: list[GraphNode] = []
    ranks: dict[int, int] = {}
    for depth in sorted(functional._nodes_by_depth, reverse=True):
        for node in functional._nodes_by_depth[depth]:
            for tensor in (*node.input_tensors, *node.output_tensors):
                ranks[id(tensor)] = len(tensor.shape)
            if not node.operation or node.is_input:
                continue
            nodes.append(
                GraphNode(
                    node.operation,
                    tuple(id(t) for t in node.input_tensors),
                    tuple(id(t) for t in node.output_tensors),
                    node,
                )
            )
    for tensor in functional.inputs:
        ranks[id(tensor)] = len(tensor.shape)
    return FunctionalGraph(
        functional, nodes, [id(t) for t in functional.inputs], [id(t) for t in tree.flatten(functional.outputs)], ranks
    )


def rebuild(
    graph: FunctionalGraph,
    on_inputs: Callable[[list], list],
    on_node: Callable[[GraphNode, tuple, dict], object],
) -> keras.Model:
    """A new Functional model: fresh Inputs (passed through ``on_inputs``), then for every node
    ``on_node(node, args, kwargs)`` with the node's arguments filled with the new tensors."""
    model = graph.model
    fresh = [keras.Input(batch_shape=t.shape, dtype=t.dtype, name=_input_name(t)) for t in model.inputs]
    tensors: dict[int, object] = dict(zip(graph.inputs, on_inputs(fresh)))
    for node in graph.nodes:
        args, kwargs = node.keras_node.arguments.fill_in(tensors)
        outputs = on_node(node, args, kwargs)
        for key, value in zip(node.outputs, tree.flatten(outputs)):
            tensors[key] = value
    outputs = tree.pack_sequence_as(model.outputs, [tensors[key] for key in graph.outputs])
    inputs = fresh if isinstance(model.input, (list, tuple)) else fresh[0]  # the structure calls used
    outputs = outputs if isinstance(model.output, (list, tuple)) else outputs[0]
    return keras.Model(inputs, outputs, name=model.name)


def _input_name(tensor) -> str:
    history = getattr(tensor, "_keras_history", None)
    return history.operation.name if history is not None else tensor.name
