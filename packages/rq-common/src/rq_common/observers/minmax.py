"""Running min/max and its moving-average variant, per tensor or per channel."""

from __future__ import annotations

from typing import Any

import numpy as np

from rq_common.errors import CalibrationDataError, SpecError
from rq_common.observers.base import NonFinitePolicy, Observer


class MinMaxObserver(Observer):
    """Exact minimum and maximum; per channel along ``axis`` when given."""

    def __init__(self, name: str = "tensor", axis: int | None = None, nonfinite=NonFinitePolicy.RAISE):
        super().__init__(name, nonfinite)
        self.axis = axis
        self.min: np.ndarray | None = None
        self.max: np.ndarray | None = None

    def _batch_range(self, x) -> tuple[np.ndarray, np.ndarray]:
        if self.axis is None:
            _, lo, hi = self._clean(x)
            return np.asarray(lo, np.float64), np.asarray(hi, np.float64)
        x = self._as_float(x)
        channels = np.moveaxis(x, self.axis, 0).reshape(x.shape[self.axis], -1)
        lo, hi = channels.min(axis=1), channels.max(axis=1)
        if not (np.isfinite(lo).all() and np.isfinite(hi).all()):
            self._reject_nonfinite(channels)
            finite = np.isfinite(channels)
            lo = np.where(finite, channels, np.inf).min(axis=1)
            hi = np.where(finite, channels, -np.inf).max(axis=1)
        return lo.astype(np.float64), hi.astype(np.float64)

    def update(self, x) -> None:
        lo, hi = self._batch_range(x)
        self._combine(lo, hi)

    def _combine(self, lo: np.ndarray, hi: np.ndarray) -> None:
        if self.min is None:
            self.min, self.max = lo, hi
        else:
            if lo.shape != self.min.shape:
                raise CalibrationDataError(f"{self.name}: channel count changed from {self.min.shape} to {lo.shape}")
            self.min, self.max = np.minimum(self.min, lo), np.maximum(self.max, hi)

    def merge(self, other: Observer) -> MinMaxObserver:
        self._require_same_type(other)
        if other.min is not None:
            self._combine(other.min, other.max)
        return self

    @property
    def is_empty(self) -> bool:
        return self.min is None

    def range(self) -> tuple[np.ndarray, np.ndarray]:
        if self.min is None:
            raise CalibrationDataError(f"{self.name}: no calibration data was observed; run calibration first")
        return self.min, self.max

    def state_dict(self) -> dict[str, np.ndarray]:
        empty = np.array(np.nan)
        return {"min": empty if self.min is None else self.min, "max": empty if self.max is None else self.max}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        lo, hi = np.asarray(state["min"], np.float64), np.asarray(state["max"], np.float64)
        if np.all(np.isnan(lo)):
            self.min = self.max = None
        else:
            self.min, self.max = lo, hi


class MovingAverageMinMaxObserver(MinMaxObserver):
    """Exponential moving average of per-batch min/max (as in QAT): m <- m + c * (batch - m).

    Merging two streams (ranks) averages them, which is what an all-reduce mean of the state gives.
    """

    def __init__(
        self, name: str = "tensor", axis: int | None = None, averaging_constant: float = 0.01, nonfinite=NonFinitePolicy.RAISE
    ):
        super().__init__(name, axis, nonfinite)
        if not 0.0 < averaging_constant <= 1.0:
            raise SpecError("averaging_constant", f"averaging_constant must lie in (0, 1], got {averaging_constant}")
        self.averaging_constant = averaging_constant

    def update(self, x) -> None:
        lo, hi = self._batch_range(x)
        if self.min is None:
            self.min, self.max = lo, hi
        else:
            c = self.averaging_constant
            self.min = self.min + c * (lo - self.min)
            self.max = self.max + c * (hi - self.max)

    def merge(self, other: Observer) -> MovingAverageMinMaxObserver:
        self._require_same_type(other)
        if other.min is None:
            return self
        if self.min is None:
            self.min, self.max = other.min, other.max
        else:
            self.min, self.max = (self.min + other.min) / 2, (self.max + other.max) / 2
        return self
