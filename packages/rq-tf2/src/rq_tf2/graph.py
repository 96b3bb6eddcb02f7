"""A read-only view of a Functional (or built Sequential) Keras model's graph, and its rebuild.

Keras 3 keeps the graph in ``_nodes_by_depth``; Functional._run_through_graph walks it the same way
(deepest first). This module is the one place that reads it.
"""

from __future__ import annotations

import contextlib
import inspect
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import keras
from keras import tree

from rq_tf2.errors import UnsupportedModelError
from rq_tf2.tf_ops import recording_tf_ops


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
    floats: set[int]  # keys of the float tensors (the others: shapes, sizes, integer inputs)

    def producer(self, tensor: int) -> GraphNode | None:
        return next((n for n in self.nodes if tensor in n.outputs), None)

    def readers(self, tensor: int) -> list[GraphNode]:
        return [n for n in self.nodes if tensor in n.inputs]


def is_subclassed(model: keras.Model) -> bool:
    """A model with its own call() and no recorded graph (rq traces it)."""
    return not isinstance(model, keras.Sequential) and (
        not hasattr(model, "_nodes_by_depth") or not getattr(model, "inputs", None)
    )


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
    if is_subclassed(model):
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
            "to see where its tensors flow: write call() with Keras layers, keras.ops and tf.* functions (no Python "
            "branches on tensor values), or build it with the Functional API; a model that keeps such a call() can be "
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
    with recording_tf_ops(), _nested_models_take_any_shape(model):
        outputs = model.call(inputs)
    return keras.Model(inputs, outputs, name=model.name)


@contextlib.contextmanager
def _nested_models_take_any_shape(model: keras.Model):
    """Nested models without their input check while ``model`` is traced. A nested Sequential
    checks a symbolic input against the shape it was first called on (HED's blocks: the 64x64
    image that built the model), though called eagerly it runs its layers on any size, and so
    does the model. Each of its layers still checks its own input."""
    lifted = []
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if not _is_nested_model(layer):
            continue
        functional = layer._functional if isinstance(layer, keras.Sequential) else layer
        if not hasattr(functional, "_manual_input_spec"):  # an input_spec set by hand is kept
            functional.input_spec = None
            lifted.append(functional)
    try:
        yield
    finally:
        for functional in lifted:
            del functional._manual_input_spec


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
    sees the shape it was built with (batch aside; a free dimension fits any). The freest shapes
    are tried first: HED's convs were built for any image size, its blocks for the 64x64 image that
    built them, and the model takes any size."""
    candidates: dict[tuple, keras.layers.Layer] = {}
    for layer in model._flatten_layers(include_self=False, recursive=True):
        shape = _recorded_shape(layer)
        if shape is not None:
            candidates.setdefault(shape[1:], layer)
    freest_first = sorted(candidates.items(), key=lambda item: -sum(d is None for d in item[0]))
    for shape, layer in freest_first[:tries]:
        try:
            traced = _trace(model, (None, *shape))
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
                len(built) != len(seen) or any(b is not None and s is not None and b != s for b, s in zip(built[1:], seen[1:]))
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


def trace_shape(model: keras.Model, data_shape: tuple | None) -> tuple | None:
    """One sample's shape to trace a subclassed model with, given the calibration data's: the shape
    it was built with where the data fits it (a fully convolutional model built for any size stays
    so: MTCNN's PNet), else the data's (HED, built for 64x64 and run on larger images)."""
    built = _build_shape(model)
    if data_shape is None or built is None or len(built) != len(data_shape) + 1:
        return data_shape
    fits = all(b is None or b == d for b, d in zip(built[1:], data_shape))
    return tuple(built[1:]) if fits else data_shape


def functional_graph(model: keras.Model, input_shape: tuple | None = None) -> FunctionalGraph:
    """The graph of ``model``, with every nested Sequential / Functional model inlined."""
    return _graph_of(_inline_nested(functional_of(model, input_shape)))


def _graph_of(functional: keras.Model) -> FunctionalGraph:
    nodes: list[GraphNode] = []
    ranks: dict[int, int] = {}
    floats: set[int] = set()
    for depth in sorted(functional._nodes_by_depth, reverse=True):
        for node in functional._nodes_by_depth[depth]:
            for tensor in (*node.input_tensors, *node.output_tensors):
                ranks[id(tensor)] = len(tensor.shape)
                if keras.backend.is_float_dtype(tensor.dtype):
                    floats.add(id(tensor))
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
        if keras.backend.is_float_dtype(tensor.dtype):
            floats.add(id(tensor))
    outputs = [id(t) for t in tree.flatten(functional.outputs)]
    return FunctionalGraph(functional, nodes, [id(t) for t in functional.inputs], outputs, ranks, floats)


def _is_nested_model(operation) -> bool:
    """A Sequential or Functional model used as a layer (a Keras application as a backbone, HED's
    blocks): its own graph is known, so its layers can take its place."""
    if isinstance(operation, keras.Sequential):
        return getattr(operation, "_functional", None) is not None
    return isinstance(operation, keras.Model) and hasattr(operation, "_nodes_by_depth") and bool(operation.inputs)


def _inline_nested(functional: keras.Model) -> keras.Model:
    """``functional`` with each nested model replaced by its layers, called in the same order (the
    same layer objects, so the same weights): the rules then see every Conv inside."""
    graph = _graph_of(functional)
    if not any(_is_nested_model(node.operation) for node in graph.nodes):
        return functional
    return rebuild(graph, lambda fresh: fresh, _call_inlined)


def _call_inlined(node: GraphNode, args, kwargs):
    if not _is_nested_model(node.operation):
        return node.operation(*args, **kwargs)
    inner = _graph_of(functional_of(node.operation))
    outputs = _run(inner, tree.flatten(args), _call_inlined)
    return outputs if len(outputs) > 1 else outputs[0]


def rebuild(
    graph: FunctionalGraph,
    on_inputs: Callable[[list], list],
    on_node: Callable[[GraphNode, tuple, dict], object],
) -> keras.Model:
    """A new Functional model: fresh Inputs (passed through ``on_inputs``), then for every node
    ``on_node(node, args, kwargs)`` with the node's arguments filled with the new tensors."""
    model = graph.model
    fresh = [keras.Input(batch_shape=t.shape, dtype=t.dtype, name=_input_name(t)) for t in model.inputs]
    outputs = tree.pack_sequence_as(model.outputs, _run(graph, on_inputs(fresh), on_node))
    inputs = fresh if isinstance(model.input, (list, tuple)) else fresh[0]  # the structure calls used
    outputs = outputs if isinstance(model.output, (list, tuple)) else outputs[0]
    return keras.Model(inputs, outputs, name=model.name)


def _run(graph: FunctionalGraph, inputs: list, on_node: Callable[[GraphNode, tuple, dict], object]) -> list:
    """The graph's nodes called in order on ``inputs``: its flat outputs."""
    tensors: dict[int, object] = dict(zip(graph.inputs, inputs, strict=True))
    for node in graph.nodes:
        args, kwargs = node.keras_node.arguments.fill_in(tensors)
        outputs = on_node(node, args, kwargs)
        for key, value in zip(node.outputs, tree.flatten(outputs)):
            tensors[key] = value
    return [tensors[key] for key in graph.outputs]


def _input_name(tensor) -> str:
    history = getattr(tensor, "_keras_history", None)
    return history.operation.name if history is not None else tensor.name
