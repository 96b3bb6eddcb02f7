"""Calibration: run the prepared float graph in a tf.compat.v1 Session for ``max_calibration_batches`` batches from
the user's input_fn, feed every quantized tensor to rq_common's observers (one per scale group),
then finalize every scale (rq_common.pipeline.finalize, the NPU's position rules included)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import tensorflow as tf
from tqdm import tqdm

from rq_common import Calibrator
from rq_common.errors import CalibrationDataError
from rq_common.pipeline import Layer, ModelView, Weight, finalize
from rq_common.qmath import QParams
from rq_common.spec import Preset
from rq_tf1.errors import InputFnError
from rq_tf1.graphdef import GraphDef, const_value, nodes_by_name, session_config, tensor_name, weight_view
from rq_tf1.plan import Tf1Plan


@dataclass
class Scales:
    """Everything calibration decided: per scale group, per weighted op (weight and bias)."""

    activations: dict[str, QParams] = field(default_factory=dict)  # group root tensor -> QParams
    weights: dict[str, QParams] = field(default_factory=dict)  # weighted op -> QParams (in its weight view)
    biases: dict[str, QParams] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    constant_operands: frozenset[str] = frozenset()  # the ops in ``weights`` whose constant is an operand (PRelu)

    def of_tensor(self, plan: Tf1Plan, tensor: str) -> QParams:
        return self.activations[plan.placement.group_of(tensor)]


def check_feed(feed, inputs: list[str], shapes: dict[str, tuple], iteration: int) -> dict[str, np.ndarray]:
    if not isinstance(feed, dict):
        raise InputFnError(f"input_fn({iteration}) returned {type(feed).__name__}; return a dict of input node name to array")
    missing, extra = set(inputs) - set(feed), set(feed) - set(inputs)
    if missing or extra:
        raise InputFnError(
            f"input_fn({iteration}) returned keys {sorted(feed)}; the input nodes are {sorted(inputs)}"
            + (f" (missing {sorted(missing)})" if missing else "")
            + (f" (unknown {sorted(extra)})" if extra else "")
        )
    arrays = {}
    for name in inputs:
        array = np.asarray(feed[name], dtype=np.float32)
        shape = shapes.get(name)
        if shape is not None and (len(shape) != array.ndim or any(s is not None and s != a for s, a in zip(shape, array.shape))):
            raise InputFnError(
                f"input_fn({iteration}) gave '{name}' shape {array.shape}; --input_shapes says {shape} (?: any size)"
            )
        arrays[name] = array
    return arrays


def calibrate(
    graph_def: GraphDef,
    plan: Tf1Plan,
    preset: Preset,
    inputs: list[str],
    shapes: dict[str, tuple],
    input_fn: Callable[[int], dict],
    max_calibration_batches: int,
    quiet: bool = False,
) -> Scales:
    if max_calibration_batches < 1:
        raise CalibrationDataError(
            f"max_calibration_batches (--calib_iter) is {max_calibration_batches}; calibrate on at least one batch"
        )
    groups = plan.placement.groups.members()
    calibrators = {root: Calibrator(preset.activation, preset.activation_method, name=str(root)) for root in groups}
    fetch = [t for t in plan.placement.quantized]
    with tf.Graph().as_default() as graph:
        tf.graph_util.import_graph_def(graph_def, name="")
        with tf.compat.v1.Session(graph=graph, config=session_config()) as session:
            for i in tqdm(range(max_calibration_batches), desc="calibrating", disable=quiet, file=sys.stderr):
                feed = check_feed(input_fn(i), inputs, shapes, i)
                values = session.run(fetch, {tensor_name(k): v for k, v in feed.items()})
                for tensor, value in zip(fetch, values):
                    calibrators[plan.placement.group_of(tensor)].update(value)
    return finalize_scales(graph_def, plan, preset, {root: calibrator.qparams() for root, calibrator in calibrators.items()})


def finalize_scales(graph_def: GraphDef, plan: Tf1Plan, preset: Preset, activations: dict[str, QParams]) -> Scales:
    """rq_common.pipeline.finalize over the plan's weighted ops (weights in their weight view). An
    op no NPU position can serve is moved to the plan's float ops, with a note."""
    group = plan.placement.group_of
    by_name = nodes_by_name(graph_def)
    weights, layers = {}, []
    for w in plan.weighted:
        values, axis = weight_view(by_name[w.node], const_value(by_name[w.weight]))
        weights[w.node] = Weight(values, axis)
        bias = const_value(by_name[w.bias]) if w.bias is not None else None
        layers.append(Layer(w.node, w.node, group(w.input_tensor), group(plan.fused_output[w.node]), bias))
    for prelu in plan.prelus:
        weights[prelu.node] = Weight(const_value(by_name[prelu.constant]))
    view = ModelView(activations, weights, layers, adds=[[group(t) for t in add] for add in plan.adds])
    result = finalize(view, preset)
    notes = list(result.notes)
    for node, why in result.unrepairable.items():
        plan.keep_in_float(node, f"{why}: runs in float")
        notes.append(f"{node}: kept in float: {why}: runs in float")
    return Scales(result.activations, result.weights, result.biases, notes, frozenset(p.node for p in plan.prelus))
