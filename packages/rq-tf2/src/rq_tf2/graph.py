"""A read-only view of a Functional (or built Sequential) Keras model's graph, and its rebuild.

Keras 3 keeps the graph in ``_nodes_by_depth``; Functional._run_through_graph walks it the same way
(deepest first). This module is the one place that reads it.
"""

from __future__ import annotations

import inspect
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

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


def functional_of(model: keras.Model, input_shape: tuple | None = None) -> keras.Model:
    """The Functional model behind ``model``; a clear error for models rq cannot see into.
    ``input_shape`` (one sample's, no batch axis) traces a subclassed model Keras recorded none for."""
    if isinstance(model, keras.Sequential):
        functional = getattr(model, "_functional", None)
        if functional is None:
            raise UnsupportedModelError(
                f"Sequential model '{model.name}' is not built: give it a keras.Input(shape=...) first, "
                "or call it once on data, so that its inputs are known"
            )
        model = functional
    if not hasattr(model, "_nodes_by_depth") or not getattr(model, "inputs", None):
        return _trace_subclassed(model, input_shape)
    if input_shape is not None and [tuple(input_shape)] != [tuple(t.shape[1:]) for t in model.inputs]:
        raise UnsupportedModelError(
            f"input_shape={tuple(input_shape)} does not match the inputs of '{model.name}' "
            f"({[tuple(t.shape[1:]) for t in model.inputs]}); it is for subclassed models only: leave it out"
        )
    return model


def _trace_subclassed(model: keras.Model, input_shape: tuple | None) -> keras.Model:
    """A subclassed model's call() run once on a symbolic Input: when it uses only Keras layers and
    keras.ops, that records the same computation, over the same layers, as a Functional graph."""
    name = f"'{model.name}' ({type(model).__name__} defines its own call())"
    shape = (None, *input_shape) if input_shape is not None else _build_shape(model)
    if shape is None:
        traced = _trace_with_a_layer_shape(model)
        if traced is not None:
            return traced
    if shape is None or not all(isinstance(d, int) or d is None for d in shape):
        raise UnsupportedModelError(
            f"subclassed model {name} has no known input shape (Keras recorded none, and its first layer does not "
            "read the input): pass one sample's shape, rq_tf2.quantize_model(model, input_shape=(height, width, "
            "channels)), or build it with one first (model.build((None, height, width, channels))); rq traces one tensor input"
        )
    try:
        return _trace(model, shape)
    except Exception as error:
        raise UnsupportedModelError(
            f"subclassed model {name} cannot be traced with Keras tensors ({type(error).__name__}: "
            f"{str(error).strip().splitlines()[0]}){_failing_line(error, model)}. rq needs "
            "to see where its tensors flow: write call() with Keras layers and keras.ops only (no tf.* ops, no Python "
            "branches on tensor values), or build it with the Functional API; a model that keeps its tf.* ops can be "
            "frozen to a GraphDef and quantized with rq-tf1 (rq_tf1.quantize_frozen_graph)"
        ) from None


def _failing_line(error: Exception, model: keras.Model) -> str:
    """' at <file>:<line>: <code>', the last line of the model's own source the error passed
    through (HED's `h, w = tf.shape(x)[1], tf.shape(x)[2]`), or '' where none did."""
    try:
        source = inspect.getsourcefile(type(model))
    except TypeError:
        return ""
    frames = [f for f in traceback.extract_tb(error.__traceback__) if f.filename == source]
    if not frames:
        return ""
    frame = frames[-1]
    return f" at {Path(frame.filename).name}:{frame.lineno}: {(frame.line or '').strip()}"


def _trace(model: keras.Model, shape: tuple) -> keras.Model:
    inputs = keras.Input(batch_shape=(None, *shape[1:]), name="input")
    return keras.Model(inputs, model.call(inputs), name=model.name)


def _recorded_shape(layer) -> tuple | None:
    """The one input shape Keras recorded when ``layer`` was built (None: none, or several)."""
    shapes = getattr(layer, "_build_shapes_dict", None) or {}
    shape = next(iter(shapes.values()), None) if len(shapes) == 1 else None
    if isinstance(shape, (tuple, list)) and shape and all(isinstance(d, int) or d is None for d in shape):
        return tuple(shape)
    return None


def _trace_with_a_layer_shape(model: keras.Model, tries: int = 4) -> keras.Model | None:
    """A model built with ``built = True`` in __init__, or by a build() without a shape parameter,
    then called on data: Keras records no shape for the model, but its layers record theirs. A
    layer's shape is the input's when, traced with it, that layer reads the input and every layer
    sees the shape it was built with (batch aside)."""
    tried: list[tuple] = []
    for layer in model._flatten_layers(include_self=False, recursive=True):
        shape = _recorded_shape(layer)
        if shape is None or shape[1:] in tried or len(tried) >= tries:
            continue
        tried.append(shape[1:])
        try:
            traced = _trace(model, shape)
        except Exception:
            continue
        if _sees_built_shapes(traced, reads_input=layer):
            return traced
    return None


def _sees_built_shapes(traced: keras.Model, reads_input) -> bool:
    input_tensor = traced.inputs[0]
    read = False
    for nodes in traced._nodes_by_depth.values():
        for node in nodes:
            if node.is_input or not node.input_tensors:
                continue
            read = read or (node.operation is reads_input and node.input_tensors[0] is input_tensor)
            built = _recorded_shape(node.operation)
            seen = tuple(node.input_tensors[0].shape)
            if built is not None and (
                len(built) != len(seen) or any(b is not None and b != s for b, s in zip(built[1:], seen[1:]))
            ):
                return False
    return read


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


def functional_graph(model: keras.Model, input_shape: tuple | None = None) -> FunctionalGraph:
    functional = functional_of(model, input_shape)
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
