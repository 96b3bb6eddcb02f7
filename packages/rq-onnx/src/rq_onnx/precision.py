"""rq-onnx's mixed precision: the trials of rq_common's search, run in ONNX Runtime.

A trial is the written model with some scale groups moved to the preset's widened spec over the
same range (rq_common.qmath.widen) and the int8 model's numbers everywhere else, so it measures
exactly what widening those groups changes. Building a session per trial would cost seconds on a
transformer, so the trials share one: in ``TrialModel`` every candidate's Q/DQ pair becomes the
float ops of the same arithmetic (divide, round half to even, add the zero point, clip, subtract,
multiply) with its scale, zero point and integer range as graph inputs; a trial is a run with other
values fed, and the constant DequantizeLinears (weights, biases) are float initializers computed
once. The chosen groups are then finalized and written again from calibration (their
readers' bias scales follow the new input scales).
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from tqdm import tqdm

from rq_common.format.graph import DEQUANTIZE, QUANTIZE, GraphIndex, qdq_params
from rq_common.pipeline.mixed_precision import MixedPrecision, MixedPrecisionResult, choose_widened
from rq_common.qmath import QParams, widen
from rq_common.qmath.reference import dequantize, fake_quantize
from rq_common.spec import QuantSpec
from rq_onnx.calibrate import make_session, with_outputs

PARAMETERS = ("scale", "zero_point", "low", "high")  # per candidate tensor, fed as float32 scalars


def run_all(model: onnx.ModelProto, feeds: Sequence[dict[str, np.ndarray]]) -> list[list[np.ndarray]]:
    """The model's outputs on each feed, computed as written: a trial measures the quantization,
    not ONNX Runtime's fused kernels (which differ by CPU: rq_common.cpu_features)."""
    session = make_session(model, as_written=True)
    return [session.run(None, feed) for feed in feeds]


def _parameter_name(tensor: str, parameter: str) -> str:
    return f"rq_trial/{tensor}/{parameter}"


def _parameter_values(qparams: QParams) -> dict[str, np.ndarray]:
    values = (qparams.scale, qparams.zero_point, qparams.qmin, qparams.qmax)
    return {name: np.asarray(value, dtype=np.float32) for name, value in zip(PARAMETERS, values, strict=True)}


class TrialModel:
    """The written model with its candidates' Q/DQ pairs as fed float arithmetic (module docstring)."""

    def __init__(self, quantized: onnx.ModelProto, tensors: set[str]):
        model = onnx.ModelProto()
        model.CopyFrom(quantized)
        index = GraphIndex(model)
        self.qparams: dict[str, QParams] = {}
        replaced: dict[str, list[onnx.NodeProto]] = {}  # a Q or DQ node's output -> what takes its place
        for node in model.graph.node:
            tensor = node.input[0]
            if node.op_type != QUANTIZE or tensor not in tensors or index.is_constant(tensor) or tensor in self.qparams:
                continue
            params = qdq_params(index, node)
            self.qparams[tensor] = QParams(params.scale, params.zero_point, QuantSpec(dtype=params.dtype, symmetric=False))
            readers = [c for c, _ in index.consumers_of(node.output[0]) if c.op_type == DEQUANTIZE]
            replaced[node.output[0]] = _fake_quantize_nodes(tensor, [r.output[0] for r in readers])
            replaced.update((r.output[0], []) for r in readers)
            model.graph.input.extend(
                helper.make_tensor_value_info(_parameter_name(tensor, p), TensorProto.FLOAT, []) for p in PARAMETERS
            )
        for node in model.graph.node:  # constant DQs (weights, biases) computed once, not in every run
            if node.op_type == DEQUANTIZE and node.input[0] in index.initializers and node.output[0] not in replaced:
                params = qdq_params(index, node)
                spec = QuantSpec(dtype=params.dtype, symmetric=False)
                values = dequantize(
                    numpy_helper.to_array(index.initializers[node.input[0]]),
                    QParams(params.scale, params.zero_point, spec, params.axis),
                )
                replaced[node.output[0]] = []
                model.graph.initializer.append(numpy_helper.from_array(values.astype(np.float32), node.output[0]))
        nodes = [new for node in model.graph.node for new in replaced.get(node.output[0], [node])]
        del model.graph.node[:]
        model.graph.node.extend(nodes)
        used = {name for node in model.graph.node for name in node.input}
        initializers = [t for t in model.graph.initializer if t.name in used]
        del model.graph.initializer[:]
        model.graph.initializer.extend(initializers)
        # with no Q/DQ left the graph is float arithmetic, optimized freely; else as written
        self.session = make_session(model, as_written=any(n.op_type in (QUANTIZE, DEQUANTIZE) for n in nodes))

    def run(self, feeds: Sequence[dict[str, np.ndarray]], qparams: Mapping[str, QParams]) -> list[list[np.ndarray]]:
        """The outputs on each feed with each candidate quantized by ``qparams`` (its written ones
        where ``qparams`` does not name it)."""
        parameters = {}
        for tensor, written in self.qparams.items():
            for name, value in _parameter_values(qparams.get(tensor, written)).items():
                parameters[_parameter_name(tensor, name)] = value
        return [self.session.run(None, {**feed, **parameters}) for feed in feeds]


def _fake_quantize_nodes(tensor: str, outputs: list[str]) -> list[onnx.NodeProto]:
    """x -> (clip(round(x / s) + z, low, high) - z) * s, what QuantizeLinear + DequantizeLinear compute."""
    s, z, low, high = (_parameter_name(tensor, p) for p in PARAMETERS)

    def step(name: str) -> str:
        return f"rq_trial/{tensor}/{name}"

    nodes = [
        helper.make_node("Div", [tensor, s], [step("divided")]),
        helper.make_node("Round", [step("divided")], [step("rounded")]),
        helper.make_node("Add", [step("rounded"), z], [step("shifted")]),
        helper.make_node("Clip", [step("shifted"), low, high], [step("clipped")]),
        helper.make_node("Sub", [step("clipped"), z], [step("centered")]),
        helper.make_node("Mul", [step("centered"), s], [outputs[0]]),
    ]
    nodes += [helper.make_node("Identity", [outputs[0]], [out]) for out in outputs[1:]]
    return nodes


def own_errors(float_model: onnx.ModelProto, qparams: Mapping[str, QParams], feed: dict[str, np.ndarray]) -> dict[str, float]:
    """Each tensor's own 8-bit error on one feed: mean((fake_quantize(x) - x)^2) / mean(x^2), the
    float model's values quantized alone by their written QParams (the search's prior)."""
    names = sorted(qparams)
    session = make_session(with_outputs(float_model, names), as_written=True)
    values = dict(zip([o.name for o in session.get_outputs()], session.run(None, feed), strict=True))
    values.update(feed)
    errors = {}
    for name in names:
        x = np.asarray(values[name], dtype=np.float64)
        power = float(np.mean(x**2)) if x.size else 0.0
        noise = float(np.mean((fake_quantize(x.astype(np.float32), qparams[name]) - x) ** 2)) if x.size else 0.0
        errors[name] = noise / power if power > 0 else 0.0
    return errors


def search_widened(
    float_model: onnx.ModelProto,
    quantized: onnx.ModelProto,
    groups: dict[str, list[str]],
    spec: QuantSpec,
    feeds: Sequence[dict[str, np.ndarray]],
    config: MixedPrecision,
    quiet: bool,
) -> MixedPrecisionResult:
    """rq_common's search over ``groups`` (scale group -> its tensors), each trial run on the first
    ``config.trial_batches`` of ``feeds``, the noisiest ``config.max_trials`` groups tried."""
    feeds = list(feeds)[: config.trial_batches]
    float_outputs = run_all(float_model, feeds)
    trials = TrialModel(quantized, {t for members in groups.values() for t in members})
    candidates = sorted(g for g, members in groups.items() if any(t in trials.qparams for t in members))
    prior = None
    if len(candidates) > config.max_trials:
        errors = own_errors(float_model, trials.qparams, feeds[0])
        prior = {g: max(errors[t] for t in groups[g] if t in errors) for g in candidates}

    def evaluate(widened: frozenset[str]) -> float:
        wide = {t: widen(trials.qparams[t], spec) for g in widened for t in groups[g] if t in trials.qparams}
        return config.score(trials.run(feeds, wide), float_outputs)

    def bar(items):
        return tqdm(items, desc="mixed precision", unit="tensor", disable=quiet, file=sys.stderr)

    return choose_widened(candidates, evaluate, config, bar, prior)
