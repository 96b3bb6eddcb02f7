"""rq-onnx's adapter to rq_common's finalize: the plan's weights, layers and Adds as a ModelView,
and the Finalized numbers back per tensor (every member of a scale group gets the group's)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import numpy as np
import onnx
from onnx import numpy_helper

from rq_common.format.graph import attribute
from rq_common.pipeline import ConstantOperand, Layer, ModelView, Weight, finalize
from rq_common.qmath import QParams
from rq_common.qmath.adaround import AdaptiveRounding, InputMoments
from rq_common.qmath.bias_correction import conv_input_mean, linear_input_mean
from rq_common.spec import Preset
from rq_onnx.patches import PATCH_LAYOUTS
from rq_onnx.plan import Plan


@dataclass
class Numbers:
    """What write_quantized writes: per run-time tensor, per weight initializer, per (node, bias slot)."""

    activations: dict[str, QParams]
    weights: dict[str, QParams]
    biases: dict[tuple[str, int], QParams]
    unrepairable: dict[str, str]  # node -> why no NPU position serves it
    bias_values: dict[tuple[str, int], np.ndarray] = field(default_factory=dict)  # corrected float biases
    weight_values: dict[str, np.ndarray] = field(default_factory=dict)  # adaptively rounded float weights


# Bias correction: per op with a bias slot, the channel axis of its data input and how that input's
# channel means are laid out against its weight (they multiply the weight's rounding error)
def _conv_mean(node: onnx.NodeProto, weight_shape: tuple[int, ...], mean: np.ndarray) -> np.ndarray:
    return conv_input_mean(weight_shape, mean)


def _conv_transpose_mean(node: onnx.NodeProto, weight_shape: tuple[int, ...], mean: np.ndarray) -> np.ndarray:
    return mean.reshape(-1, *[1] * (len(weight_shape) - 1))  # (C_in, C_out / groups, k...): row i reads input channel i


def _gemm_mean(node: onnx.NodeProto, weight_shape: tuple[int, ...], mean: np.ndarray) -> np.ndarray:
    return linear_input_mean(mean, transposed=not attribute(node, "transB", 0))


@dataclass(frozen=True)
class MeanLayout:
    input_axis: Callable[[onnx.NodeProto], int]
    like_weight: Callable[[onnx.NodeProto, tuple[int, ...], np.ndarray], np.ndarray]


MEAN_LAYOUTS: dict[str, MeanLayout] = {
    "Conv": MeanLayout(lambda node: 1, _conv_mean),
    "ConvTranspose": MeanLayout(lambda node: 1, _conv_transpose_mean),
    "Gemm": MeanLayout(lambda node: 0 if attribute(node, "transA", 0) else 1, _gemm_mean),
}


def corrected_inputs(model: onnx.ModelProto, plan: Plan) -> dict[str, int]:
    """The data input of every layer whose bias correction can correct -> its channel axis."""
    nodes = {node.name: node for node in model.graph.node}
    axes = {}
    for use in plan.biases:
        layout = MEAN_LAYOUTS.get(nodes[use.owner].op_type)
        if layout is not None and use.weight in plan.weights and use.input_tensor in plan.activations:
            axes[use.input_tensor] = layout.input_axis(nodes[use.owner])
    return axes


def patched_inputs(model: onnx.ModelProto, plan: Plan) -> dict[str, tuple[str, Callable[[np.ndarray], np.ndarray]]]:
    """Every layer adaptive rounding can round (a Conv, Gemm or 2-d MatMul weight of its own) ->
    its input tensor and how that input becomes the patches its weight multiplies."""
    nodes = {node.name: node for node in model.graph.node}
    shapes = {t.name: tuple(t.dims) for t in model.graph.initializer}
    users = Counter(op.weight for op in plan.shifted)  # a shared weight is not rounded (rq_common's finalize)
    inputs = {}
    for op in plan.shifted:
        node = nodes[op.node]
        layout = PATCH_LAYOUTS.get(node.op_type)
        if layout is None or users[op.weight] > 1 or (node.op_type == "MatMul" and len(shapes[op.weight]) != 2):
            continue
        inputs[op.node] = (op.input_tensor, partial(layout, node, shapes[op.weight]))
    return inputs


def finalize_plan(
    model: onnx.ModelProto,
    plan: Plan,
    preset: Preset,
    calibrated: dict[str, QParams],
    notes: list[str],
    channel_means: dict[str, np.ndarray] | None = None,
    input_moments: dict[str, InputMoments] | None = None,
    adaptive_rounding: AdaptiveRounding | None = None,
) -> Numbers:
    """``calibrated``: per planned run-time tensor, the QParams calibration chose for its group.
    ``channel_means``: per layer input, its float mean per channel: those layers' biases are corrected.
    ``input_moments``: per layer, its input patches' moments: with ``adaptive_rounding``, those
    layers' weights are rounded adaptively."""
    constants = {t.name: t for t in model.graph.initializer}
    nodes = {node.name: node for node in model.graph.node}
    channel_means = channel_means or {}
    input_moments = input_moments or {}

    def input_mean(use) -> np.ndarray | None:
        layout = MEAN_LAYOUTS.get(nodes[use.owner].op_type) if use is not None else None
        if layout is None or use.input_tensor not in channel_means:
            return None
        return layout.like_weight(nodes[use.owner], tuple(constants[use.weight].dims), channel_means[use.input_tensor])

    def key(tensor: str) -> str | None:
        return plan.groups.find(tensor) if tensor in calibrated else None

    def add_key(tensor: str) -> str | ConstantOperand | None:
        return ConstantOperand(tensor) if tensor in plan.weights else key(tensor)

    def bias(use) -> np.ndarray | None:
        return None if use is None else numpy_helper.to_array(constants[use.name]).astype(np.float32).reshape(-1)

    biases = {use.owner: use for use in plan.biases if use.name in constants and use.weight in plan.weights}
    layers = []
    for op in plan.shifted:
        use = biases.pop(op.node, None)
        layers.append(
            Layer(
                op.node,
                op.weight,
                key(op.input_tensor),
                key(op.output_tensor),
                bias(use),
                input_mean=input_mean(use),
                input_moments=input_moments.get(op.node),
            )
        )
    layers += [
        Layer(u.owner, u.weight, key(u.input_tensor), None, bias(u), shifted=False, input_mean=input_mean(u))
        for u in biases.values()
    ]
    view = ModelView(
        activations={key(t): qp for t, qp in calibrated.items()},
        weights={name: Weight(numpy_helper.to_array(constants[name]), use.axis) for name, use in plan.weights.items()},
        layers=layers,
        adds=[keys for keys in ([add_key(t) for t in inputs] for _, inputs in plan.adds) if None not in keys],
    )
    result = finalize(view, preset, adaptive_rounding)
    notes += result.notes
    slots = {use.owner: (use.node, use.slot) for use in plan.biases}
    return Numbers(
        activations={t: result.activations[key(t)] for t in calibrated},
        weights=result.weights,
        biases={slots[layer]: qp for layer, qp in result.biases.items()},
        unrepairable=result.unrepairable,
        bias_values={slots[layer]: values for layer, values in result.corrected_biases.items()},
        weight_values=result.rounded_weights,
    )
