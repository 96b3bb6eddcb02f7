"""Scale math: ranges to scales and zero points, bias scales, reference (de)quantization."""

from rq_common.qmath import adaround, bias_correction, npu_rules
from rq_common.qmath.batchnorm import fold_batchnorm, fold_scale_shift
from rq_common.qmath.bias import bias_qparams
from rq_common.qmath.qparams import (
    QParams,
    compute_qparams,
    is_power_of_two,
    pow2_ceil,
    pow2_ceil_exponent,
    pow2_exponent,
    qparams_with_scale,
    symmetric_levels,
    widen,
)
from rq_common.qmath.reference import dequantize, fake_quantize, quantize

__all__ = [
    "QParams",
    "adaround",
    "bias_correction",
    "npu_rules",
    "bias_qparams",
    "compute_qparams",
    "dequantize",
    "fold_batchnorm",
    "fold_scale_shift",
    "fake_quantize",
    "is_power_of_two",
    "pow2_ceil",
    "pow2_ceil_exponent",
    "pow2_exponent",
    "qparams_with_scale",
    "widen",
    "quantize",
    "symmetric_levels",
]
