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
    """QParams for 2^k: k0 (NonOverflow) first, then k0 - 1 ... k0 - below, then k0 + 1 ... k0 + above.

    The order breaks ties: the NonOverflow scale wins an equal error, then the finer scales.
    A zero-width range has only its NonOverflow candidate (scale 1).
    """
    nonoverflow = compute_qparams(rmin, rmax, spec)
    if max(-rmin, rmax) <= 0.0:
        return [nonoverflow]
    k0 = int(pow2_exponent(nonoverflow.scale))
    exponents = [*range(k0, k0 - below - 1, -1), *range(k0 + 1, k0 + above + 1)]
    return [qparams_with_scale(np.ldexp(1.0, k), spec, rmin=rmin) for k in exponents]


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
