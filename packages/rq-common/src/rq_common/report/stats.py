"""Per-tensor quantization error statistics, accumulated batch by batch in fixed-size state."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from rq_common.errors import SpecError
from rq_common.qmath.qparams import QParams


@dataclass
class TensorErrorStats:
    """Running sums that give SQNR, max |error| and the clipped fraction of one tensor."""

    name: str
    signal_energy: float = 0.0
    error_energy: float = 0.0
    max_abs_error: float = 0.0
    clipped: int = 0
    count: int = 0

    def update(self, reference, approximation, qparams: QParams | None = None) -> None:
        """Add a batch: ``reference`` (float) against ``approximation`` (the quantized model's).

        With ``qparams``, values of ``reference`` outside its representable range count as clipped.
        """
        ref = np.asarray(reference, dtype=np.float64)
        approx = np.asarray(approximation, dtype=np.float64)
        if ref.shape != approx.shape:
            raise SpecError(self.name, f"reference shape {ref.shape} != quantized shape {approx.shape}")
        error = approx - ref
        self.signal_energy += float(np.sum(ref * ref))
        self.error_energy += float(np.sum(error * error))
        if error.size:
            self.max_abs_error = max(self.max_abs_error, float(np.max(np.abs(error))))
        if qparams is not None:
            low, high = qparams.representable_range()
            if qparams.per_channel:
                shape = [1] * ref.ndim
                shape[qparams.axis % ref.ndim] = -1
                low, high = low.reshape(shape), high.reshape(shape)
            self.clipped += int(np.sum((ref < low) | (ref > high)))
        self.count += ref.size

    def merge(self, other: TensorErrorStats) -> TensorErrorStats:
        self.signal_energy += other.signal_energy
        self.error_energy += other.error_energy
        self.max_abs_error = max(self.max_abs_error, other.max_abs_error)
        self.clipped += other.clipped
        self.count += other.count
        return self

    @property
    def sqnr_db(self) -> float:
        """10 log10(sum x^2 / sum (x - x_q)^2); +inf when the error is zero."""
        if self.error_energy == 0.0:
            return math.inf
        if self.signal_energy == 0.0:
            return -math.inf
        return 10.0 * math.log10(self.signal_energy / self.error_energy)

    @property
    def clipped_fraction(self) -> float:
        return self.clipped / self.count if self.count else 0.0

    def as_dict(self) -> dict:
        out = asdict(self)
        out.update(sqnr_db=self.sqnr_db, clipped_fraction=self.clipped_fraction)
        return out
