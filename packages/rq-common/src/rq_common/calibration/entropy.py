"""Entropy (KL divergence) calibration, as TensorRT introduced it, on the |x| histogram.

For each candidate threshold i (in bins), P is the histogram cut at i with the outliers added to
its last bin, and Q is the same bins merged into ``num_quantized_bins`` levels and spread back
over P's non-empty bins. The threshold with the smallest KL(P || Q) wins.
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

_EMPTY_Q = 1e-12  # stands in for 0 in Q where P has mass: a heavy, finite penalty


def kl_divergence_at(hist: np.ndarray, i: int, num_quantized_bins: int) -> float:
    """KL(P || Q) for the threshold at bin ``i`` (see the module docstring)."""
    reference = hist[:i].astype(np.float64)
    p = reference.copy()
    p[-1] += hist[i:].sum()
    nonzero = p > 0
    bounds = (np.arange(num_quantized_bins + 1) * i) // num_quantized_bins
    starts = bounds[:-1]
    group_sums = np.add.reduceat(reference, starts)
    group_nonzero = np.add.reduceat(nonzero.astype(np.float64), starts)
    per_bin = np.divide(group_sums, group_nonzero, out=np.zeros_like(group_sums), where=group_nonzero > 0)
    q = np.repeat(per_bin, np.diff(bounds)) * nonzero
    p = p[nonzero] / p.sum()
    q = q[nonzero] / max(q.sum(), _EMPTY_Q)
    return float(np.sum(p * np.log(p / np.maximum(q, _EMPTY_Q))))


@register_chooser
@dataclass(frozen=True)
class EntropyChooser(RangeChooser):
    """KL-optimal symmetric threshold; ``max_bins`` caps the search cost by exact bin merging."""

    num_quantized_bins: int = 128
    max_bins: int = 2048
    max_candidates: int = 512
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
        stride = max(1, (hist.size - self.num_quantized_bins) // self.max_candidates)
        candidates = list(range(self.num_quantized_bins, hist.size + 1, stride))
        if candidates[-1] != hist.size:
            candidates.append(hist.size)
        divergences = [kl_divergence_at(hist, i, self.num_quantized_bins) for i in candidates]
        return candidates[int(np.argmin(divergences))] * width

    def choose(self, observer: HistogramObserver, spec: QuantSpec) -> QParams:
        self._check_spec(spec)
        lo, hi = observer.range()
        t = self.threshold(observer)
        return compute_qparams(max(lo, -t), min(hi, t), spec)
