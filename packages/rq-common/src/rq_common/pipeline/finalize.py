"""Finalize: from calibrated activation ranges and float weights to every scale and zero point.

This is the one place where rq turns what calibration observed into the model's numbers, the same
for every framework package: weight QParams, then (on fixed-point targets) the NPU's position repair,
then bias QParams, then the bias repair. A package's adapter builds a ModelView of its graph and
writes the Finalized result back (ONNX initializers, module buffers, Keras weights, GraphDef
constants); docs/pipeline.md has the contract. Equalization, bias correction and adaptive rounding
plug in here, once.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable
from dataclasses import dataclass, field

import numpy as np

from rq_common.calibration import Calibrator
from rq_common.qmath import QParams, bias_correction, bias_qparams, fake_quantize, npu_rules
from rq_common.qmath.adaround import AdaptiveRounding, InputMoments, step_cost
from rq_common.spec import BiasScaleRule, Granularity, Preset


@dataclass(frozen=True)
class Weight:
    """A constant quantized with the weight spec. ``axis``: its output-channel axis in ``values``
    (per-channel presets quantize along it); None quantizes it per tensor (a constant operand)."""

    values: np.ndarray
    axis: int | None = None


@dataclass(frozen=True)
class Layer:
    """An op that computes with a Weight: a Conv, Gemm, MatMul or their framework layers.

    ``input`` / ``output``: the scale keys of the quantizer before it and of the one after it (after a
    fused activation), None where there is none. ``bias``: its float bias, quantized by the preset's
    bias rule. ``shifted``: the NPU's shift rules apply (an integer multiply-accumulate; not a
    framework's BiasAdd, whose "weight" is the bias). ``input_mean``: the float input's mean per
    channel over the calibration data, laid out like the weight; given, the bias is corrected for
    the weight's rounding error (rq_common.qmath.bias_correction). ``input_moments``: its input
    patches' moments; given, with an AdaptiveRounding, its weight is rounded adaptively
    (rq_common.qmath.adaround)."""

    name: str
    weight: str
    input: Hashable | None = None
    output: Hashable | None = None
    bias: np.ndarray | None = None
    shifted: bool = True
    input_mean: np.ndarray | None = None
    input_moments: InputMoments | None = None


@dataclass(frozen=True)
class ConstantOperand:
    """An Add's constant input in ModelView.adds, named by its key in ModelView.weights: the NPU
    aligns its position with the Add's other inputs like an activation's (a coarser scale never clips)."""

    weight: str

    def __str__(self) -> str:
        return self.weight


@dataclass
class ModelView:
    """What finalize needs of a planned, calibrated model, in no framework's terms.

    ``activations``: one QParams per scale key (a tensor, or a group of tensors that share a scale),
    as calibration chose them. ``adds``: the scale keys of each Add's quantized inputs, a
    ConstantOperand for a constant one (the NPU aligns their positions)."""

    activations: dict[Hashable, QParams]
    weights: dict[str, Weight] = field(default_factory=dict)
    layers: list[Layer] = field(default_factory=list)
    adds: list[list[Hashable]] = field(default_factory=list)


@dataclass
class Finalized:
    """Every number of the quantized model: per scale key, per weight, per layer's bias; what the
    repairs changed, one line each; the layers no position can serve (``unrepairable``, name ->
    why): the adapter keeps them in float or reports them; the biases bias correction changed
    (``corrected_biases``, layer name -> float bias) and the weights adaptive rounding rounded
    (``rounded_weights``, weight name -> float values on the weight's grid): the adapter writes
    these values instead of its own."""

    activations: dict[Hashable, QParams]
    weights: dict[str, QParams]
    biases: dict[str, QParams]
    notes: list[str]
    unrepairable: dict[str, str] = field(default_factory=dict)
    corrected_biases: dict[str, np.ndarray] = field(default_factory=dict)
    rounded_weights: dict[str, np.ndarray] = field(default_factory=dict)


def weight_qparams(values: np.ndarray, axis: int | None, preset: Preset, name: str = "weight") -> QParams:
    """A weight's QParams: per channel along ``axis`` where the preset says so, else per tensor."""
    spec = preset.weight
    if spec.per_channel and axis is not None:
        spec = spec.replace(axis=axis)
    else:
        spec = spec.replace(granularity=Granularity.PER_TENSOR, axis=None)
    calibrator = Calibrator(spec, preset.weight_method, name=name)
    calibrator.update(np.asarray(values, np.float32))
    return calibrator.qparams()


def finalize(
    view: ModelView,
    preset: Preset,
    adaptive_rounding: AdaptiveRounding | None = None,
) -> Finalized:
    """Weights, the NPU's position repair (fixed-point targets), adaptive rounding of the layers
    with input moments (given ``adaptive_rounding``), bias correction, biases and the bias repair."""
    weights = {name: weight_qparams(w.values, w.axis, preset, name) for name, w in view.weights.items()}
    activations = dict(view.activations)
    notes: list[str] = []
    unrepairable: dict[str, str] = {}
    if preset.target.fixed_point_rules:
        unrepairable = _conflicting_layers(view, activations, weights)
        notes += _repair_positions(view, activations, weights, set(unrepairable))
    rounded: dict[str, np.ndarray] = {}
    if adaptive_rounding is not None:
        rounded, ratios, costly = _rounded_weights(view, weights, adaptive_rounding)
        if rounded:
            notes.append(
                f"adaptive rounding: {len(rounded)} layer(s), their output error on the calibration data "
                f"{np.mean(ratios):.2f}x nearest rounding's on average (lowest {min(ratios):.2f}x)"
            )
        notes += [
            f"adaptive rounding: {name} keeps nearest rounding: one step costs {cost:.2g} multiply-adds, over "
            f"AdaRoundConfig.max_step_cost ({adaptive_rounding.config.max_step_cost:.2g})"
            for name, cost in costly.items()
        ]
    corrected = _corrected_biases(view, weights, rounded)
    if corrected:
        notes.append(f"bias correction: {len(corrected)} layer(s), their mean outputs kept where the float layers' are")
    biases: dict[str, QParams] = {}
    for layer in view.layers:
        if layer.bias is None or layer.input not in activations:
            continue
        source, weight = activations[layer.input], weights[layer.weight]
        qp = bias_qparams(corrected.get(layer.name, layer.bias), source, weight, preset.bias, preset.bias_rule)
        if preset.bias_rule is BiasScaleRule.OWN_POWER_OF_TWO and layer.shifted and layer.output in activations:
            repaired = npu_rules.repair_bias_qparams(qp, weight, source, activations[layer.output])
            if repaired is not qp:
                notes.append(f"{layer.name}: bias scale {float(qp.scale):g} -> {float(repaired.scale):g} (shift_bias limits)")
            qp = repaired
        biases[layer.name] = qp
    return Finalized(activations, weights, biases, notes, unrepairable, corrected, rounded)


def _rounded_weights(
    view: ModelView, weights: dict[str, QParams], rounding: AdaptiveRounding
) -> tuple[dict[str, np.ndarray], list[float], dict[str, int]]:
    """Every layer with input moments and a weight of its own, rounded adaptively; a layer whose
    bias is corrected afterwards reconstructs its output up to the mean (the input's covariance).
    Also the layers too costly to optimize (name -> multiply-adds of one step)."""
    users = Counter(layer.weight for layer in view.layers)
    candidates = [
        layer
        for layer in view.layers
        if layer.input_moments is not None and view.weights[layer.weight].axis is not None and users[layer.weight] == 1
    ]
    cost = {
        layer.name: step_cost(view.weights[layer.weight].values.shape, view.weights[layer.weight].axis) for layer in candidates
    }
    costly = {name: c for name, c in cost.items() if c > rounding.config.max_step_cost}
    chosen = [layer for layer in candidates if layer.name not in costly]
    done = [layer for layer in chosen if rounding.is_done(layer.weight, weights[layer.weight])]
    fresh = [layer for layer in chosen if not rounding.is_done(layer.weight, weights[layer.weight])]
    rounded, ratios = {}, []
    for layer in done + list(rounding.progress(fresh)):  # the bar counts only the layers still to optimize
        weight = view.weights[layer.weight]
        moments = layer.input_moments
        corrected = layer.bias is not None and layer.input_mean is not None
        gram = moments.centered() if corrected else moments.gram
        rounded[layer.weight], ratio = rounding.round(layer.weight, weight.values, weights[layer.weight], weight.axis, gram)
        ratios.append(ratio)
    return rounded, ratios, costly


def _corrected_biases(view: ModelView, weights: dict[str, QParams], rounded: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every layer with a bias and an input mean: its bias corrected for its quantized weight
    (adaptively rounded where ``rounded`` has it)."""
    corrected = {}
    for layer in view.layers:
        weight = view.weights[layer.weight]
        if layer.bias is None or layer.input_mean is None or weight.axis is None:
            continue
        quantized = rounded.get(layer.weight)
        if quantized is None:
            quantized = fake_quantize(weight.values, weights[layer.weight])
        corrected[layer.name] = bias_correction.corrected_bias(
            layer.bias, weight.values, quantized, layer.input_mean, weight.axis
        )
    return corrected


def _shifted(view: ModelView, activations: dict[Hashable, QParams], weights: dict[str, QParams]) -> list[Layer]:
    """The layers the NPU's shift rules constrain: per-tensor weights, quantized input and output."""
    return [
        layer
        for layer in view.layers
        if layer.shifted and layer.input in activations and layer.output in activations and not weights[layer.weight].per_channel
    ]


def _conflicting_layers(view: ModelView, activations: dict[Hashable, QParams], weights: dict[str, QParams]) -> dict[str, str]:
    """Layers writing one scale (through a Concat's shared scale) whose shift_cut ranges have no
    output position in common: dropped one at a time, farthest from the calibrated position first,
    until the rest agree. Each allows out_pos in [acc - SHIFT_CUT_MAX, acc - SHIFT_CUT_MIN],
    acc = w_pos + in_pos."""
    position = {key: npu_rules.position(qp.scale) for key, qp in activations.items()}
    by_output: dict[Hashable, list[tuple[int, int, Layer]]] = {}  # output key -> (low, high, layer)
    for layer in _shifted(view, activations, weights):
        accumulator = npu_rules.position(weights[layer.weight].scale) + position[layer.input]
        allowed = (accumulator - npu_rules.SHIFT_CUT_MAX, accumulator - npu_rules.SHIFT_CUT_MIN, layer)
        by_output.setdefault(layer.output, []).append(allowed)
    dropped = {}
    for output, members in by_output.items():
        calibrated = position[output]
        while len(members) > 1 and max(low for low, _, _ in members) > min(high for _, high, _ in members):
            worst = max(members, key=lambda m: max(m[0] - calibrated, calibrated - m[1], 0))
            members.remove(worst)
            low, high, layer = worst
            dropped[layer.name] = (
                f"the NPU's shift_cut needs an output position in [{low}, {high}], which the other ops sharing its "
                f"output scale (calibrated position {calibrated}) cannot share"
            )
    return dropped


def _repair_positions(
    view: ModelView, activations: dict[Hashable, QParams], weights: dict[str, QParams], skipped: set[str]
) -> list[str]:
    """Activation positions (and Adds' per-tensor constant operands) moved until every shifted
    layer's shift_cut and every Add's gap hold. A shifted layer's weight keeps its position."""
    positions = {key: npu_rules.position(qp.scale) for key, qp in activations.items()}
    shifted = [
        (npu_rules.position(weights[layer.weight].scale), layer.input, layer.output)
        for layer in _shifted(view, activations, weights)
        if layer.name not in skipped
    ]
    layer_weights = {layer.weight for layer in view.layers if layer.shifted}
    constants = {
        key
        for add in view.adds
        for key in add
        if isinstance(key, ConstantOperand)
        and key.weight in weights
        and key.weight not in layer_weights
        and not weights[key.weight].per_channel
    }
    positions.update({key: npu_rules.position(weights[key.weight].scale) for key in constants})
    adds = [[key for key in add if key in positions] for add in view.adds]
    notes = npu_rules.repair_positions(shifted, adds, positions)
    for key, qp in activations.items():
        if positions[key] != npu_rules.position(qp.scale):
            activations[key] = npu_rules.at_position(qp, positions[key])
    for key in constants:
        if positions[key] != npu_rules.position(weights[key.weight].scale):
            weights[key.weight] = npu_rules.at_position(weights[key.weight], positions[key])
    return notes
