"""Bring power-of-two positions within the NPU's limits, as vai_q_onnx and Quark do. The rules
and their orchestration are rq_common.spec.npu_rules; this module maps the plan onto them."""

from __future__ import annotations

from rq_common.qmath import QParams
from rq_common.spec import npu_rules
from rq_onnx.plan import Plan


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
            act[tensor] = npu_rules.at_position(qp, positions[group(tensor)])
