"""Power-of-two MinMSE: try 2^k around the NonOverflow scale, keep the smallest squared error."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rq_common.calibration.base import RangeChooser, register_chooser
from rq_common.calibration.mse import best_of
from rq_common.observers import HistogramObserver
from rq_common.qmath.qparams import QParams, compute_qparams, pow2_exponent, qparams_with_scale
from rq_common.spec.methods import CalibrationMethod
from rq_common.spec.quant_spec import QuantSpec


def pow2_candidates(rmin: float, rmax: float, spec: QuantSpec, below: int, above: int) -> list[QParams]:
    """QParams for 2^k, k from k0 + above down to k0 - below (k0: NonOverflow), largest first."""
    k0 = int(pow2_exponent(compute_qparams(rmin, rmax, spec).scale))
    return [qparams_with_scale(np.ldexp(1.0, k), spec, rmin=rmin) for k in range(k0 + above, k0 - below - 1, -1)]


@register_chooser
@dataclass(frozen=True)
class Pow2MinMseChooser(RangeChooser):
    """vai_q method 1; the error of each candidate comes from the histogram, never stored values."""

    search_below: int = 8
    search_above: int = 1
    method = CalibrationMethod.POT_MINMSE

    def choose(self, observer: HistogramObserver, spec: QuantSpec) -> QParams:
        self._check_spec(spec)
        lo, hi = observer.range()
        return best_of(pow2_candidates(lo, hi, spec, self.search_below, self.search_above), observer)
