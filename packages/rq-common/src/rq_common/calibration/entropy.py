"""Entropy (KL divergence) calibration, as TensorRT introduced it, on the |x| histogram.

For a candidate threshold i (in bins), P is the histogram cut at i with the outliers added to
its last bin, and Q is the same bins merged into ``num_quantized_bins`` groups, each group's
mass spread evenly over the group's bins where P is non-zero. The threshold with the smallest
KL(P || Q) wins.

Every candidate is evaluated at once from prefix sums: within a group Q is constant, so
sum(P log Q) over the group is (group mass) x log(group average), and sum(P log P) is a prefix
sum of h log h. The cost is O(candidates x num_quantized_bins), not O(candidates x bins).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rq_common.calibration.base import RangeChooser, register_chooser
from rq_common.calibration.percentile import abs_histogram
from rq_common.observers import HistogramObserver
from rq_common.qmath.qparams import QParams, compute_qparams
from rq_common.spec.methods import CalibrationMethod
from rq_common.spec.quant_spec import QuantSpec

EMPTY_Q = 1e-12  # stands in for 0 in the normalized Q where P has mass: a heavy, finite penalty


def _xlogx(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    return np.where(v > 0, v * np.log(np.where(v > 0, v, 1.0)), 0.0)


def kl_divergences(hist: np.ndarray, candidates: np.ndarray, num_quantized_bins: int) -> np.ndarray:
    """KL(P || Q) for every threshold in ``candidates`` (bin counts, each >= num_quantized_bins)."""
    h = hist.astype(np.float64)
    total = h.sum()
    cut = np.asarray(candidates, dtype=np.int64)
    mass = np.concatenate([[0.0], np.cumsum(h)])
    nonzero = np.concatenate([[0], np.cumsum(h > 0)])
    h_log_h = np.concatenate([[0.0], np.cumsum(_xlogx(h))])

    outliers = total - mass[cut]
    last = h[cut - 1] + outliers  # P's last bin
    p_log_p = (h_log_h[cut - 1] + _xlogx(last)) / total - np.log(total)

    bounds = (np.arange(num_quantized_bins + 1)[None, :] * cut[:, None]) // num_quantized_bins
    group_mass = mass[bounds[:, 1:]] - mass[bounds[:, :-1]]
    group_nonzero = (nonzero[bounds[:, 1:]] - nonzero[bounds[:, :-1]]).astype(np.float64)
    group_nonzero[:, -1] += (h[cut - 1] == 0) & (outliers > 0)  # the outliers make P's last bin non-zero
    p_mass = group_mass.copy()
    p_mass[:, -1] += outliers
    q_total = np.maximum(mass[cut], EMPTY_Q)[:, None]
    average = np.divide(group_mass, group_nonzero, out=np.zeros_like(group_mass), where=group_nonzero > 0)
    log_q = np.log(np.maximum(average / q_total, EMPTY_Q))
    p_log_q = np.where(p_mass > 0, p_mass * log_q, 0.0).sum(axis=1) / total
    return p_log_p - p_log_q


@register_chooser
@dataclass(frozen=True)
class EntropyChooser(RangeChooser):
    """KL-optimal symmetric threshold; ``max_bins`` caps the histogram by exact merging of bin
    pairs (TensorRT uses 2048), ``max_candidates`` the thresholds tried."""

    num_quantized_bins: int = 128
    max_bins: int = 2048
    max_candidates: int = 256  # thresholds tried, evenly spaced (the widest always included)
    method = CalibrationMethod.ENTROPY

    def threshold(self, observer: HistogramObserver) -> float:
        counts, width = abs_histogram(observer)
        used = int(np.flatnonzero(counts)[-1]) + 1
        hist = counts[:used]
        while hist.size > self.max_bins:
            hist = np.add.reduceat(hist, np.arange(0, hist.size, 2))
            width *= 2
        if hist.size <= self.num_quantized_bins:
            return hist.size * width
        stride = -(-(hist.size + 1 - self.num_quantized_bins) // self.max_candidates)
        candidates = np.unique(np.append(np.arange(self.num_quantized_bins, hist.size + 1, stride), hist.size))
        divergences = kl_divergences(hist, candidates, self.num_quantized_bins)
        return int(candidates[int(np.argmin(divergences))]) * width

    def choose(self, observer: HistogramObserver, spec: QuantSpec) -> QParams:
        self._check_spec(spec)
        lo, hi = observer.range()
        t = self.threshold(observer)
        return compute_qparams(max(lo, -t), min(hi, t), spec)
