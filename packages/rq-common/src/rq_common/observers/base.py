"""What every observer shares: input checks, a fixed-size state, and merging."""

from __future__ import annotations

from abc import ABC, abstractmethod
from enum import Enum
from typing import Any

import numpy as np

from rq_common.errors import CalibrationDataError, SpecError


class NonFinitePolicy(Enum):
    """What an observer does with NaN / inf in calibration data.

    RAISE (default): stop with CalibrationDataError naming the tensor and the count.
    IGNORE_INF: skip +-inf (attention masks use -inf on purpose); NaN still raises.
    """

    RAISE = "raise"
    IGNORE_INF = "ignore_inf"


class Observer(ABC):
    """Streaming statistics of one tensor. State size never depends on the number of batches."""

    def __init__(self, name: str = "tensor", nonfinite: NonFinitePolicy = NonFinitePolicy.RAISE):
        self.name = name
        self.nonfinite = NonFinitePolicy(nonfinite)

    @abstractmethod
    def update(self, x: np.ndarray) -> None:
        """Add one batch of values."""

    @abstractmethod
    def merge(self, other: Observer) -> Observer:
        """Fold another observer's statistics (another batch stream, process or rank) into this one."""

    @abstractmethod
    def state_dict(self) -> dict[str, np.ndarray]:
        """The whole state as fixed-shape arrays (for saving, or all-reduce across ranks)."""

    @abstractmethod
    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what state_dict returned."""

    @property
    @abstractmethod
    def is_empty(self) -> bool:
        """True until the first value has been seen."""

    @property
    def state_nbytes(self) -> int:
        return sum(np.asarray(v).nbytes for v in self.state_dict().values())

    def _as_float(self, x) -> np.ndarray:
        x = np.asarray(x)
        if x.dtype not in (np.float32, np.float64):
            x = x.astype(np.float32)
        if x.size == 0:
            raise CalibrationDataError(f"{self.name}: calibration batch is empty; feed at least one value")
        return x

    def _clean(self, x) -> tuple[np.ndarray, float, float]:
        """The batch as a float array with its non-finite values handled by the policy, and its
        min and max. NaN propagates through min/max, so finite bounds prove a clean batch in the
        same pass that finds them."""
        x = self._as_float(x)
        lo, hi = float(x.min()), float(x.max())
        if np.isfinite(lo) and np.isfinite(hi):
            return x, lo, hi
        self._reject_nonfinite(x)
        x = x[np.isfinite(x)]
        if x.size == 0:
            raise CalibrationDataError(f"{self.name}: calibration batch holds only infinite values")
        return x, float(x.min()), float(x.max())

    def _reject_nonfinite(self, x: np.ndarray) -> None:
        """Raise unless the policy allows what is there (only infinities, under IGNORE_INF)."""
        nan_count = int(np.isnan(x).sum())
        inf_count = int(np.isinf(x).sum())
        if nan_count or (inf_count and self.nonfinite is NonFinitePolicy.RAISE):
            raise CalibrationDataError(
                f"{self.name}: calibration batch holds {nan_count} NaN and {inf_count} infinite values "
                f"of {x.size}; check the input data and preprocessing"
                + ("" if nan_count else ", or pass nonfinite=ignore_inf (rq-onnx: --nonfinite ignore_inf) to skip infinities")
            )

    def _require_same_type(self, other: Observer) -> None:
        if type(other) is not type(self):
            raise SpecError("observer", f"cannot merge {type(other).__name__} into {type(self).__name__}")
