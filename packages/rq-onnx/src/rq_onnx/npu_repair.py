"""Bring power-of-two positions within the NPU's limits (rq_common.spec.npu_rules), as vai_q_onnx
and Quark do: output positions so that shift_cut is in [0, 16], Add inputs within 7 positions of
each other, bias positions within the shift_bias range. Each change is reported."""

from __future__ import annotations

import numpy as np

from rq_common.qmath import QParams
from rq_common.spec import npu_rules
from rq_onnx.plan import Plan


def _with_position(qp: QParams, pos: int) -> QParams:
    return QParams(np.float32(np.ldexp(1.0, -pos)), qp.zero_point, qp.spec, qp.axis)


def _set_group(plan: Plan, act: dict[str, QParams], tensor: str, pos: int) -> None:
    root = plan.groups.find(tensor)
    for member in act:
        if plan.groups.find(member) == root:
            act[member] = _with_position(act[member], pos)


def repair_positions(plan: Plan, act: dict[str, QParams], weights: dict[str, QParams], notes: list[str], rounds: int = 4) -> None:
    """Adjust activation positions in place until every shift and Add rule holds (or rounds run out)."""
    for _ in range(rounds):
        changed = False
        for op in plan.shifted:
            if op.output_tensor not in act or op.input_tensor not in act or weights[op.weight].per_channel:
                continue
            w_pos, in_pos = npu_rules.position(weights[op.weight].scale), npu_rules.position(act[op.input_tensor].scale)
            out_pos = npu_rules.position(act[op.output_tensor].scale)
            repaired = npu_rules.repair_output_position(w_pos, in_pos, out_pos)
            if repaired != out_pos:
                _set_group(plan, act, op.output_tensor, repaired)
                notes.append(f"{op.node}: output position {out_pos} -> {repaired} (shift_cut must lie in [0, 16])")
                changed = True
        for node, inputs in plan.adds:
            if len(inputs) < 2 or not all(t in act for t in inputs):
                continue
            positions = [npu_rules.position(act[t].scale) for t in inputs]
            repaired = npu_rules.repair_add_positions(positions)
            for tensor, old, new in zip(inputs, positions, repaired, strict=True):
                if old != new:
                    _set_group(plan, act, tensor, new)
                    notes.append(f"{node}: input '{tensor}' position {old} -> {new} (Add inputs within 7 positions)")
                    changed = True
        if not changed:
            return


def repair_bias_position(bias_qp: QParams, weight_qp: QParams, input_qp: QParams, output_qp: QParams | None) -> QParams:
    """The bias's QParams with its position clamped into the shift_bias range."""
    if output_qp is None or weight_qp.per_channel:
        return bias_qp
    w_pos, in_pos = npu_rules.position(weight_qp.scale), npu_rules.position(input_qp.scale)
    out_pos, bias_pos = npu_rules.position(output_qp.scale), npu_rules.position(bias_qp.scale)
    repaired = npu_rules.repair_bias_position(w_pos, in_pos, out_pos, bias_pos)
    return bias_qp if repaired == bias_pos else _with_position(bias_qp, repaired)
