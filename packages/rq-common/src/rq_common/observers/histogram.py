"""A fixed-size histogram whose bins widen by exact doubling as the range grows.

Bins have width w = 2^e and cover [-N/2 w, N/2 w), with edges on multiples of w. When a batch
falls outside, e grows by one and adjacent bin pairs are summed: the new edges are a subset of
the old ones, so the counts are exactly those a single pass at the final width would give.
That makes batch-by-batch updates, and merges across processes, equal to one pass over the
concatenated data, and keeps the state at N counts whatever the number of batches.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from rq_common.errors import CalibrationDataError, SpecError
from rq_common.observers.base import NonFinitePolicy, Observer

# Bins narrower than 2^-100 are never needed: they would only hold values that quantize to 0.
_MIN_EXPONENT = -100


class HistogramObserver(Observer):
    """Exact min/max plus a histogram of ``num_bins`` counts (a multiple of 4)."""

    def __init__(self, name: str = "tensor", num_bins: int = 4096, nonfinite=NonFinitePolicy.RAISE):
        super().__init__(name, nonfinite)
        if num_bins < 8 or num_bins % 4:
            raise SpecError("num_bins", f"num_bins must be a multiple of 4 and at least 8, got {num_bins}")
        self.num_bins = num_bins
        self.counts = np.zeros(num_bins, dtype=np.int64)
        self.exponent: int | None = None
        self.min = np.inf
        self.max = -np.inf

    @property
    def is_empty(self) -> bool:
        return self.exponent is None

    @property
    def bin_width(self) -> float:
        return float(np.ldexp(1.0, self._exponent()))

    def _exponent(self) -> int:
        if self.exponent is None:
            raise CalibrationDataError(f"{self.name}: no calibration data was observed; run calibration first")
        return self.exponent

    def bin_edges(self) -> np.ndarray:
        width = self.bin_width
        return (np.arange(self.num_bins + 1, dtype=np.float64) - self.num_bins // 2) * width

    def _exponent_for(self, absmax: float) -> int:
        """Smallest e with absmax < N/2 * 2^e; the finest width for an all-zero batch, so that
        later, larger batches widen the bins exactly instead of inheriting a coarse guess."""
        if absmax == 0.0:
            return _MIN_EXPONENT
        _, e = np.frexp(absmax / (self.num_bins // 2))
        return max(int(e), _MIN_EXPONENT)

    def _grow_to(self, exponent: int) -> None:
        while self.exponent < exponent:
            pairs = self.counts.reshape(-1, 2).sum(axis=1)
            quarter = self.num_bins // 4
            self.counts = np.zeros_like(self.counts)
            self.counts[quarter : quarter + pairs.size] = pairs
            self.exponent += 1

    def update(self, x) -> None:
        x, lo, hi = self._clean(x)
        x = x.ravel()
        needed = self._exponent_for(max(-lo, hi))
        if self.exponent is None:
            self.exponent = needed
        else:
            self._grow_to(needed)
        self.min, self.max = min(self.min, lo), max(self.max, hi)
        inverse_width = np.ldexp(x.dtype.type(1.0), -self.exponent)  # exact: a power of two
        index = np.floor(x * inverse_width).astype(np.int64) + self.num_bins // 2
        self.counts += np.bincount(index, minlength=self.num_bins)

    def merge(self, other: Observer) -> HistogramObserver:
        self._require_same_type(other)
        if other.num_bins != self.num_bins:
            raise SpecError("num_bins", f"cannot merge histograms of {other.num_bins} and {self.num_bins} bins")
        if other.exponent is None:
            return self
        other_counts = other.counts.copy()
        if self.exponent is None:
            self.exponent, self.counts = other.exponent, other_counts
        else:
            widened = HistogramObserver(num_bins=self.num_bins)
            widened.load_state_dict(other.state_dict())
            target = max(self.exponent, other.exponent)
            self._grow_to(target)
            widened._grow_to(target)
            self.counts = self.counts + widened.counts
        self.min, self.max = min(self.min, other.min), max(self.max, other.max)
        return self

    def range(self) -> tuple[float, float]:
        self._exponent()
        return self.min, self.max

    @property
    def total(self) -> int:
        return int(self.counts.sum())

    def state_dict(self) -> dict[str, np.ndarray]:
        return {
            "counts": self.counts.copy(),
            "exponent": np.array(_MIN_EXPONENT - 1 if self.exponent is None else self.exponent, np.int64),
            "min": np.array(self.min, np.float64),
            "max": np.array(self.max, np.float64),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        counts = np.asarray(state["counts"], np.int64)
        if counts.shape != (self.num_bins,):
            raise SpecError("num_bins", f"state has {counts.shape[0]} bins, observer has {self.num_bins}")
        exponent = int(np.asarray(state["exponent"]))
        self.counts = counts.copy()
        self.exponent = None if exponent < _MIN_EXPONENT else exponent
        self.min, self.max = float(np.asarray(state["min"])), float(np.asarray(state["max"]))
