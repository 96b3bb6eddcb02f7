"""Bring power-of-two positions within the NPU's limits, as vai_q_onnx and Quark do. The rules
and their orchestration are rq_common.spec.npu_rules; this module maps the plan onto them."""

from __future__ import annotations

import numpy as np

from rq_common.qmath import QParams
from rq_common.spec import npu_rules
from rq_onnx.plan import Plan


def _with_position(qp: QParams, pos: int) -> QParams:
    return QParams(np.float32(np.ldexp(1.0, -pos)), qp.zero_point, qp.spec, qp.axis)


def repair_positions(plan: Plan, act: dict[str, QParams], weights: dict[str, QParams], notes: list[str]) -> None:
    """Adjust activation positions in place (one position per scale group)."""
    group = plan.groups.find
    positions = {group(t): npu_rules.position(qp.scale) for t, qp in act.items()}
    layers = [
        (npu_rules.position(weights[op.weight].scale), group(op.input_tensor), group(op.output_tensor))
        for op in plan.shifted
        if op.input_tensor in act and op.output_tensor in act and not weights[op.weight].per_channel
    ]
    adds = [[group(t) for t in inputs] for _, inputs in plan.adds if all(t in act for t in inputs)]
    notes.extend(npu_rules.repair_positions(layers, adds, positions))
    for tensor, qp in act.items():
        if positions[group(tensor)] != npu_rules.position(qp.scale):
            act[tensor] = _with_position(qp, positions[group(tensor)])


def repair_bias_position(bias_qp: QParams, weight_qp: QParams, input_qp: QParams, output_qp: QParams | None) -> QParams:
    """The bias's QParams with its position clamped into the shift_bias range."""
    if output_qp is None or weight_qp.per_channel:
        return bias_qp
    w_pos, in_pos = npu_rules.position(weight_qp.scale), npu_rules.position(input_qp.scale)
    out_pos, bias_pos = npu_rules.position(output_qp.scale), npu_rules.position(bias_qp.scale)
    repaired = npu_rules.repair_bias_position(w_pos, in_pos, out_pos, bias_pos)
    return bias_qp if repaired == bias_pos else _with_position(bias_qp, repaired)
