"""Fixed-point rules of the Ryzen AI NPU's CNN path, on power-of-two positions.

With a power-of-two scale 2^-pos, a tensor's integers carry ``pos`` fractional bits. The NPU
computes Conv/Gemm in integers and shifts: the accumulator (position w_pos + in_pos) is shifted
right by ``shift_cut`` to reach the output position, and the int8 bias is shifted left by
``shift_bias`` to reach the accumulator's. vai_q_onnx and Quark enforce these limits; every rq
package repairs its positions with the functions here and the validator checks them. Which ops
fuse an activation or share one scale is in rq_common.optable (``OpFacts.npu``).
"""

from __future__ import annotations

import numpy as np

from rq_common.qmath.qparams import QParams, pow2_exponent

SHIFT_CUT_MIN, SHIFT_CUT_MAX = 0, 16
SHIFT_BIAS_MAX = 15
ACCUMULATOR_BITS = 24
ADD_MAX_POSITION_GAP = 7
LEAKY_ALPHA_STEPS = 256


def position(scale) -> int:
    """pos = -log2(scale) of a power-of-two scale."""
    return -int(pow2_exponent(np.asarray(scale).reshape(-1)[0]))


def shift_cut(weight_pos: int, input_pos: int, output_pos: int) -> int:
    return weight_pos + input_pos - output_pos


def shift_bias(weight_pos: int, input_pos: int, bias_pos: int) -> int:
    return weight_pos + input_pos - bias_pos


def shift_bias_range(cut: int) -> tuple[int, int]:
    """Allowed shift_bias for a given shift_cut: [min(0, -(24 - (8 + cut))), 15]."""
    return min(0, -(ACCUMULATOR_BITS - (8 + cut))), SHIFT_BIAS_MAX


def repair_output_position(weight_pos: int, input_pos: int, output_pos: int) -> int:
    """The output position nearest ``output_pos`` with shift_cut in [0, 16]."""
    accumulator = weight_pos + input_pos
    return int(np.clip(output_pos, accumulator - SHIFT_CUT_MAX, accumulator - SHIFT_CUT_MIN))


def repair_bias_position(weight_pos: int, input_pos: int, output_pos: int, bias_pos: int) -> int:
    """The bias position nearest ``bias_pos`` with shift_bias in its allowed range."""
    low, high = shift_bias_range(shift_cut(weight_pos, input_pos, output_pos))
    accumulator = weight_pos + input_pos
    return int(np.clip(bias_pos, accumulator - high, accumulator - low))


def repair_add_positions(positions: list[int]) -> list[int]:
    """Lower the finest positions (coarser scales, no new clipping) to within 7 of the coarsest."""
    coarsest = min(positions)
    return [min(p, coarsest + ADD_MAX_POSITION_GAP) for p in positions]


def round_leaky_alpha(alpha: float) -> float:
    """LeakyRelu's alpha as the NPU computes it: the nearest multiple of 1/256 (0.1 -> 26/256)."""
    return round(alpha * LEAKY_ALPHA_STEPS) / LEAKY_ALPHA_STEPS


def is_leaky_alpha_exact(alpha: float) -> bool:
    """True when the float32 alpha is a multiple of 1/256 (k/256 is exact in float32)."""
    return np.float32(round_leaky_alpha(float(alpha))) == np.float32(alpha)


def repair_positions(
    layers: list[tuple[int, str, str]],
    adds: list[list[str]],
    positions: dict[str, int],
    rounds: int = 4,
) -> list[str]:
    """Move activation positions until every layer's shift_cut and every Add's gap hold.

    ``layers``: (weight position, input key, output key) per Conv/Gemm/MatMul; ``adds``: the keys
    of each Add's inputs; ``positions``: key -> position, changed in place (a key stands for one
    tensor, or one group of tensors that share a scale). Returns what was changed, one line each.
    """
    changes = []
    for _ in range(rounds):
        changed = False
        for w_pos, source, target in layers:
            if source not in positions or target not in positions:
                continue
            repaired = repair_output_position(w_pos, positions[source], positions[target])
            if repaired != positions[target]:
                changes.append(f"'{target}': output position {positions[target]} -> {repaired} (shift_cut must lie in [0, 16])")
                positions[target], changed = repaired, True
        for keys in adds:
            keys = [k for k in dict.fromkeys(keys) if k in positions]
            if len(keys) < 2:
                continue
            for key, new in zip(keys, repair_add_positions([positions[k] for k in keys]), strict=True):
                if new != positions[key]:
                    changes.append(
                        f"'{key}': position {positions[key]} -> {new} (Add inputs within {ADD_MAX_POSITION_GAP} positions)"
                    )
                    positions[key], changed = new, True
        if not changed:
            break
    return changes


def at_position(qparams: QParams, pos: int) -> QParams:
    """The same QParams with scale 2^-pos."""
    return QParams(np.float32(np.ldexp(1.0, -pos)), qparams.zero_point, qparams.spec, qparams.axis)


def repair_bias_qparams(bias: QParams, weight: QParams, source: QParams, output: QParams | None) -> QParams:
    """The bias's QParams with its position clamped into the shift_bias range (per-tensor weights)."""
    if output is None or weight.per_channel:
        return bias
    w_pos, in_pos, out_pos, bias_pos = (position(q.scale) for q in (weight, source, output, bias))
    repaired = repair_bias_position(w_pos, in_pos, out_pos, bias_pos)
    return bias if repaired == bias_pos else at_position(bias, repaired)
