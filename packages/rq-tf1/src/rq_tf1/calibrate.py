"""Calibration: run the prepared float graph in a tf.compat.v1 Session for ``calib_iter`` batches from
the user's input_fn, feed every quantized tensor to rq_common's observers (one per scale group),
then decide every scale (rq_common), and apply the NPU's position rules."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import tensorflow as tf
from tqdm import tqdm

from rq_common import Calibrator
from rq_common.errors import CalibrationDataError
from rq_common.qmath import QParams, bias_qparams
from rq_common.spec import BiasScaleRule, Preset, npu_rules
from rq_tf1.errors import InputFnError
from rq_tf1.graphdef import GraphDef, const_value, nodes_by_name, tensor_name, weight_view
from rq_tf1.plan import Tf1Plan


@dataclass
class Scales:
    """Everything calibration decided: per scale group, per weighted op (weight and bias)."""

    activations: dict[str, QParams] = field(default_factory=dict)  # group root tensor -> QParams
    weights: dict[str, QParams] = field(default_factory=dict)  # weighted op -> QParams (in its weight view)
    biases: dict[str, QParams] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

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
    calib_iter: int,
    quiet: bool = False,
) -> Scales:
    if calib_iter < 1:
        raise CalibrationDataError(f"--calib_iter is {calib_iter}; calibrate on at least one batch")
    groups = plan.placement.groups.members()
    calibrators = {root: Calibrator(preset.activation, preset.activation_method, name=str(root)) for root in groups}
    fetch = [t for t in plan.placement.quantized]
    with tf.Graph().as_default() as graph:
        tf.graph_util.import_graph_def(graph_def, name="")
        with tf.compat.v1.Session(graph=graph) as session:
            for i in tqdm(range(calib_iter), desc="calibrating", disable=quiet, file=sys.stderr):
                feed = check_feed(input_fn(i), inputs, shapes, i)
                values = session.run(fetch, {tensor_name(k): v for k, v in feed.items()})
                for tensor, value in zip(fetch, values):
                    calibrators[plan.placement.group_of(tensor)].update(value)
    scales = Scales({root: calibrator.qparams() for root, calibrator in calibrators.items()})
    by_name = nodes_by_name(graph_def)
    for w in plan.weighted:
        view, axis = weight_view(by_name[w.node], const_value(by_name[w.weight]))
        spec = preset.weight.replace(axis=axis) if preset.weight.per_channel else preset.weight
        calibrator = Calibrator(spec, preset.weight_method, name=w.weight)
        calibrator.update(view)
        scales.weights[w.node] = calibrator.qparams()
    if preset.target.fixed_point_rules:
        scales.notes = _repair_positions(plan, scales)
    for w in plan.weighted:
        if w.bias is None:
            continue
        source = scales.of_tensor(plan, w.input_tensor)
        qp = bias_qparams(const_value(by_name[w.bias]), source, scales.weights[w.node], preset.bias, preset.bias_rule)
        if preset.bias_rule is BiasScaleRule.OWN_POWER_OF_TWO:
            output = scales.of_tensor(plan, plan.fused_output[w.node])
            qp = npu_rules.repair_bias_qparams(qp, scales.weights[w.node], source, output)
        scales.biases[w.node] = qp
    return scales


def _repair_positions(plan: Tf1Plan, scales: Scales) -> list[str]:
    group = plan.placement.group_of
    positions = {root: npu_rules.position(qp.scale) for root, qp in scales.activations.items()}
    shifted = [
        (npu_rules.position(scales.weights[w.node].scale), group(w.input_tensor), group(plan.fused_output[w.node]))
        for w in plan.weighted
        if not scales.weights[w.node].per_channel
    ]
    adds = [[group(t) for t in add] for add in plan.adds]
    notes = npu_rules.repair_positions(shifted, adds, positions)
    for root, qp in scales.activations.items():
        if positions[root] != npu_rules.position(qp.scale):
            scales.activations[root] = npu_rules.at_position(qp, positions[root])
    return notes
