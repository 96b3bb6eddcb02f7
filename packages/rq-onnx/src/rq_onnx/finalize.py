"""rq-onnx's adapter to rq_common's finalize: the plan's weights, layers and Adds as a ModelView,
and the Finalized numbers back per tensor (every member of a scale group gets the group's)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from rq_common.pipeline import ConstantOperand, Layer, ModelView, Weight, finalize
from rq_common.qmath import QParams
from rq_common.spec import Preset
from rq_onnx.plan import Plan


@dataclass
class Numbers:
    """What write_quantized writes: per run-time tensor, per weight initializer, per (node, bias slot)."""

    activations: dict[str, QParams]
    weights: dict[str, QParams]
    biases: dict[tuple[str, int], QParams]
    unrepairable: dict[str, str]  # node -> why no NPU position serves it


def finalize_plan(
    model: onnx.ModelProto, plan: Plan, preset: Preset, calibrated: dict[str, QParams], notes: list[str]
) -> Numbers:
    """``calibrated``: per planned run-time tensor, the QParams calibration chose for its group."""
    constants = {t.name: t for t in model.graph.initializer}

    def key(tensor: str) -> str | None:
        return plan.groups.find(tensor) if tensor in calibrated else None

    def add_key(tensor: str) -> str | ConstantOperand | None:
        return ConstantOperand(tensor) if tensor in plan.weights else key(tensor)

    def bias(use) -> np.ndarray | None:
        return None if use is None else numpy_helper.to_array(constants[use.name]).astype(np.float32).reshape(-1)

    biases = {use.node: use for use in plan.biases if use.name in constants and use.weight in plan.weights}
    layers = [
        Layer(op.node, op.weight, key(op.input_tensor), key(op.output_tensor), bias(biases.pop(op.node, None)))
        for op in plan.shifted
    ]
    layers += [Layer(u.node, u.weight, key(u.input_tensor), None, bias(u), shifted=False) for u in biases.values()]
    view = ModelView(
        activations={key(t): qp for t, qp in calibrated.items()},
        weights={name: Weight(numpy_helper.to_array(constants[name]), use.axis) for name, use in plan.weights.items()},
        layers=layers,
        adds=[keys for keys in ([add_key(t) for t in inputs] for _, inputs in plan.adds) if None not in keys],
    )
    result = finalize(view, preset)
    notes += result.notes
    slots = {use.node: use.slot for use in plan.biases}
    return Numbers(
        activations={t: result.activations[key(t)] for t in calibrated},
        weights=result.weights,
        biases={(node, slots[node]): qp for node, qp in result.biases.items()},
        unrepairable=result.unrepairable,
    )
