"""Percentile: clip the rarest tails, read off the histogram with linear interpolation in a bin."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rq_common.calibration.base import RangeChooser, register_chooser
from rq_common.errors import SpecError
from rq_common.observers import HistogramObserver
from rq_common.qmath.qparams import QParams, compute_qparams
from rq_common.spec.methods import CalibrationMethod
from rq_common.spec.quant_spec import QuantSpec


def abs_histogram(observer: HistogramObserver) -> tuple[np.ndarray, float]:
    """Counts of |x| in bins [j w, (j+1) w), j = 0..N/2-1, and the width w (exact fold)."""
    half = observer.num_bins // 2
    counts = observer.counts
    return counts[half:] + counts[:half][::-1], observer.bin_width


def quantile(counts: np.ndarray, first_edge: float, width: float, fraction: float) -> float:
    """The value below which ``fraction`` of the counted mass lies (uniform inside a bin)."""
    cdf = np.cumsum(counts, dtype=np.float64)
    target = fraction * cdf[-1]
    i = int(np.searchsorted(cdf, target, side="left"))
    i = min(i, counts.size - 1)
    before = cdf[i - 1] if i > 0 else 0.0
    inside = (target - before) / counts[i] if counts[i] else 1.0
    return first_edge + width * (i + inside)


@register_chooser
@dataclass(frozen=True)
class PercentileChooser(RangeChooser):
    """Symmetric specs clip |x| at the percentile; asymmetric ones clip (100-p)/2 % from each tail."""

    percentile: float = 99.999
    method = CalibrationMethod.PERCENTILE

    def __post_init__(self) -> None:
        if not 0.0 < self.percentile <= 100.0:
            raise SpecError("percentile", f"percentile must lie in (0, 100], got {self.percentile}")

    def choose(self, observer: HistogramObserver, spec: QuantSpec) -> QParams:
        self._check_spec(spec)
        lo, hi = observer.range()
        if spec.symmetric:
            counts, width = abs_histogram(observer)
            t = quantile(counts, 0.0, width, self.percentile / 100.0)
            rmin, rmax = max(lo, -t), min(hi, t)
        else:
            tail = (100.0 - self.percentile) / 200.0
            first_edge = float(observer.bin_edges()[0])
            rmin = max(lo, quantile(observer.counts, first_edge, observer.bin_width, tail))
            rmax = min(hi, quantile(observer.counts, first_edge, observer.bin_width, 1.0 - tail))
        return compute_qparams(rmin, rmax, spec)
