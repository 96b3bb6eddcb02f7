"""numpy reference quantize / dequantize / fake_quantize, bit-exact with ONNX Runtime.

ONNX Runtime's QuantizeLinear (checked on 1.32, x86) computes x / scale in float32, rounds half to
even, adds the zero point and saturates; NaN becomes the lowest integer, +inf the highest, -inf the
lowest. This module does the same for int8, uint8 and int16. int32 (bias) has no QuantizeLinear;
it is computed in float64 so that values beyond 2^24 keep their precision, then saturated.
DequantizeLinear is (q - z) * scale in float32.
"""

from __future__ import annotations

import numpy as np

from rq_common.errors import SpecError
from rq_common.qmath.qparams import QParams
from rq_common.spec.dtypes import QuantDType
from rq_common.spec.quant_spec import RoundMode


def _broadcast(values: np.ndarray, qparams: QParams, ndim: int) -> np.ndarray:
    """Reshape a per-channel 1-d parameter so it broadcasts along ``qparams.axis``."""
    if not qparams.per_channel:
        return values
    axis = qparams.axis % ndim
    shape = [1] * ndim
    shape[axis] = values.shape[0]
    return values.reshape(shape)


def quantize(x, qparams: QParams) -> np.ndarray:
    """x -> integers of the spec's dtype, saturating at the spec's [qmin, qmax]."""
    spec = qparams.spec
    work = np.float64 if spec.dtype is QuantDType.INT32 else np.float32
    x = np.asarray(x, dtype=work)
    if qparams.per_channel and x.shape[qparams.axis % x.ndim] != qparams.scale.shape[0]:
        raise SpecError(
            "axis",
            f"tensor has {x.shape[qparams.axis % x.ndim]} channels on axis {qparams.axis}, qparams have {qparams.scale.shape[0]}",
        )
    scale = _broadcast(qparams.scale.astype(work), qparams, x.ndim)
    zero_point = _broadcast(qparams.zero_point.astype(work), qparams, x.ndim)
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        scaled = x / scale
        if spec.round_mode is RoundMode.HALF_TO_EVEN:
            rounded = np.rint(scaled)
        else:
            rounded = np.floor(scaled + work(0.5))
        q = rounded + zero_point
    q = np.where(np.isnan(q), spec.qmin, q)
    return np.clip(q, spec.qmin, spec.qmax).astype(spec.dtype.np_dtype)


def dequantize(q, qparams: QParams) -> np.ndarray:
    """(q - z) * scale in float32."""
    q = np.asarray(q)
    scale = _broadcast(qparams.scale, qparams, q.ndim)
    zero_point = _broadcast(qparams.zero_point.astype(np.int64), qparams, q.ndim)
    return ((q.astype(np.int64) - zero_point).astype(np.float32) * scale).astype(np.float32)


def fake_quantize(x, qparams: QParams) -> np.ndarray:
    """dequantize(quantize(x)): what a QuantizeLinear -> DequantizeLinear pair computes."""
    return dequantize(quantize(x, qparams), qparams)
