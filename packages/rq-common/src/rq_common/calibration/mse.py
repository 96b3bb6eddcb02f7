"""MSE: search float clipping ranges for the smallest expected squared error (from the histogram)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rq_common.calibration.base import RangeChooser, register_chooser
from rq_common.calibration.squared_error import expected_squared_error
from rq_common.observers import HistogramObserver
from rq_common.qmath.qparams import QParams, compute_qparams
from rq_common.spec.methods import CalibrationMethod
from rq_common.spec.quant_spec import QuantSpec


def best_of(candidates: list[QParams], observer: HistogramObserver) -> QParams:
    """The candidate with the smallest expected squared error; the first one wins ties."""
    errors = expected_squared_error(
        observer.counts,
        observer.bin_edges(),
        np.array([c.scale for c in candidates]),
        np.array([c.zero_point for c in candidates], dtype=np.int64),
        candidates[0].qmin,
        candidates[0].qmax,
    )
    return candidates[int(np.argmin(errors))]


@register_chooser
@dataclass(frozen=True)
class MseChooser(RangeChooser):
    """Ranges alpha * [min, max] for alpha in (min_fraction, 1], ``num_candidates`` steps; widest first."""

    num_candidates: int = 128
    min_fraction: float = 0.05
    method = CalibrationMethod.MSE

    def choose(self, observer: HistogramObserver, spec: QuantSpec) -> QParams:
        self._check_spec(spec)
        lo, hi = observer.range()
        fractions = np.linspace(1.0, self.min_fraction, self.num_candidates)
        candidates = [compute_qparams(lo * f, hi * f, spec) for f in fractions]
        return best_of(candidates, observer)
