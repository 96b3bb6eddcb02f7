"""Range -> (scale, zero point) for every spec: the one place where scales are decided.

Rules (docs/format.md has the derivations):
- ranges always include 0 (rmin <= 0 <= rmax), so that 0.0 is exactly representable;
- symmetric specs fix the zero point z and use L = min(qmax - z, z - qmin) levels on each side:
  scale = max(|rmin|, |rmax|) / L; a zero point at the bottom of the range (uint8 z=0) uses the
  positive side only: scale = rmax / (qmax - z);
- asymmetric specs: scale = (rmax - rmin) / (qmax - qmin), z = clip(qmin - round(rmin / scale));
- power-of-two specs round the scale up to the next 2^k (the smallest power of two that does not
  overflow), computed exactly with frexp, never with a float log2;
- a zero-width range (an all-zero tensor) gets scale 1.0 (which is 2^0) and the zero point the
  rules give; scales below float32's smallest normal number count as zero-width;
- NaN or infinite bounds raise CalibrationDataError: there is no scale that represents them.
Scales are float32 (what ONNX stores); zero points are computed from the float32 scale.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rq_common.errors import CalibrationDataError, SpecError
from rq_common.spec.quant_spec import QuantSpec

_TINY = float(np.finfo(np.float32).tiny)


@dataclass(frozen=True, eq=False)
class QParams:
    """Scale and zero point of one tensor: 0-d arrays per tensor, 1-d along ``axis`` per channel."""

    scale: np.ndarray
    zero_point: np.ndarray
    spec: QuantSpec
    axis: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "scale", np.asarray(self.scale, dtype=np.float32))
        zero_point = np.asarray(self.zero_point)
        dtype = self.spec.dtype
        if np.any(zero_point < dtype.min) or np.any(zero_point > dtype.max):
            raise SpecError("zero_point", f"{zero_point.tolist()} is outside {dtype.value} [{dtype.min}, {dtype.max}]")
        object.__setattr__(self, "zero_point", zero_point.astype(dtype.np_dtype))
        if self.scale.shape != self.zero_point.shape:
            raise SpecError("scale", f"scale shape {self.scale.shape} != zero point shape {self.zero_point.shape}")
        if self.scale.ndim > 1:
            raise SpecError("scale", "scale must be a scalar (per tensor) or 1-d (per channel)")
        if self.scale.ndim == 1 and self.axis is None:
            raise SpecError("axis", "per-channel QParams need the channel axis")

    @property
    def per_channel(self) -> bool:
        return self.scale.ndim == 1

    @property
    def qmin(self) -> int:
        return self.spec.qmin

    @property
    def qmax(self) -> int:
        return self.spec.qmax

    def representable_range(self) -> tuple[np.ndarray, np.ndarray]:
        """The float interval [low, high] that quantizes without clipping (per channel if so)."""
        s = self.scale.astype(np.float64)
        z = self.zero_point.astype(np.float64)
        return (self.qmin - z) * s, (self.qmax - z) * s

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, QParams):
            return NotImplemented
        return (
            self.spec == other.spec
            and self.axis == other.axis
            and np.array_equal(self.scale, other.scale)
            and np.array_equal(self.zero_point, other.zero_point)
        )

    def __repr__(self) -> str:
        return f"QParams(scale={self.scale.tolist()}, zero_point={self.zero_point.tolist()}, dtype={self.spec.dtype.value}, axis={self.axis})"


def compute_qparams(rmin, rmax, spec: QuantSpec, axis: int | None = None) -> QParams:
    """Scale and zero point for the range [rmin, rmax] (scalars, or 1-d arrays for per channel)."""
    rmin = np.asarray(rmin, dtype=np.float64)
    rmax = np.asarray(rmax, dtype=np.float64)
    _check_finite(rmin, rmax)
    if np.any(rmin > rmax):
        raise CalibrationDataError(f"range minimum {rmin} is above its maximum {rmax}")
    if spec.per_channel and rmin.ndim != 1:
        raise SpecError("granularity", "a per-channel spec needs 1-d rmin/rmax, one value per channel")
    if axis is None and spec.per_channel:
        axis = spec.axis
    if not spec.per_channel:
        axis = None
        if rmin.ndim != 0:
            raise SpecError("granularity", "a per-tensor spec needs scalar rmin/rmax")
    rmin = np.minimum(rmin, 0.0)
    rmax = np.maximum(rmax, 0.0)
    if spec.symmetric:
        scale = _symmetric_scale(rmin, rmax, spec)
        scale = _finish_scale(scale, spec)
        zero_point = np.full(scale.shape, spec.fixed_zero_point, dtype=np.int64)
    else:
        scale = _finish_scale((rmax - rmin) / (spec.qmax - spec.qmin), spec)
        zero_point = asymmetric_zero_point(rmin, scale, spec)
    return QParams(scale=scale, zero_point=zero_point, spec=spec, axis=axis)


def symmetric_levels(spec: QuantSpec) -> tuple[int, int]:
    """Integer steps available above and below a symmetric spec's fixed zero point."""
    z = spec.fixed_zero_point
    return spec.qmax - z, z - spec.qmin


def _symmetric_scale(rmin: np.ndarray, rmax: np.ndarray, spec: QuantSpec) -> np.ndarray:
    up, down = symmetric_levels(spec)
    if up > 0 and down > 0:
        return np.maximum(-rmin, rmax) / min(up, down)
    if down == 0:  # zero point at the bottom: non-negative values only (ReLU outputs)
        return rmax / up
    return -rmin / down


def asymmetric_zero_point(rmin: np.ndarray, scale: np.ndarray, spec: QuantSpec) -> np.ndarray:
    """z = qmin - round_half_even(rmin / scale), clipped into the integer range."""
    z = spec.qmin - np.rint(rmin / scale.astype(np.float64))
    return np.clip(z, spec.qmin, spec.qmax).astype(np.int64)


def _finish_scale(scale: np.ndarray, spec: QuantSpec) -> np.ndarray:
    """Zero-width ranges get 1.0; power-of-two specs round up to 2^k; then float32."""
    scale = np.where(scale < _TINY, 1.0, scale)
    if spec.power_of_two:
        scale = pow2_ceil(scale)
    return np.asarray(scale, dtype=np.float32)


def pow2_ceil(x) -> np.ndarray:
    """The smallest power of two >= x (x > 0), exactly."""
    return np.exp2(pow2_ceil_exponent(x)).astype(np.float64)


def pow2_ceil_exponent(x) -> np.ndarray:
    """k = ceil(log2(x)) for x > 0, exact for every float (frexp, not log2)."""
    mantissa, exponent = np.frexp(np.asarray(x, dtype=np.float64))
    return np.where(mantissa == 0.5, exponent - 1, exponent).astype(np.int64)


def is_power_of_two(x) -> np.ndarray:
    """True where x is exactly 2^k (k any integer)."""
    mantissa, _ = np.frexp(np.asarray(x, dtype=np.float64))
    return mantissa == 0.5


def pow2_exponent(scale) -> np.ndarray:
    """k of a scale that is exactly 2^k (the NPU's shift is -k)."""
    if not np.all(is_power_of_two(scale)):
        raise SpecError("scale", f"{scale} is not a power of two")
    return pow2_ceil_exponent(scale)


def _check_finite(rmin: np.ndarray, rmax: np.ndarray) -> None:
    if not (np.all(np.isfinite(rmin)) and np.all(np.isfinite(rmax))):
        raise CalibrationDataError(
            f"range [{rmin}, {rmax}] is not finite: the calibration data holds NaN or inf; "
            "clean the data, or use an observer with nonfinite=ignore to skip infinite values"
        )


def widen(qparams: QParams, spec: QuantSpec) -> QParams:
    """QParams in the (wider) per-tensor ``spec`` over the interval ``qparams`` represents: the range
    calibration chose stays, with 2^8 times finer steps for int8 -> int16 (mixed precision)."""
    low, high = qparams.representable_range()
    return compute_qparams(low, high, spec)


def qparams_with_scale(scale, spec: QuantSpec, rmin=0.0, axis: int | None = None) -> QParams:
    """QParams for a chosen scale (a search result); asymmetric specs place z from rmin."""
    scale = np.asarray(scale, dtype=np.float32)
    if spec.symmetric:
        zero_point = np.full(scale.shape, spec.fixed_zero_point, dtype=np.int64)
    else:
        zero_point = asymmetric_zero_point(np.minimum(np.asarray(rmin, dtype=np.float64), 0.0), scale, spec)
    return QParams(scale=scale, zero_point=zero_point, spec=spec, axis=axis if spec.per_channel else None)
