"""Bias quantization: int32 at input scale x weight scale, or int8 with its own power-of-two scale."""

from __future__ import annotations

import numpy as np

from rq_common.errors import SpecError
from rq_common.qmath.qparams import QParams, compute_qparams
from rq_common.spec.methods import BiasScaleRule
from rq_common.spec.quant_spec import Granularity, QuantSpec


def bias_qparams(
    bias: np.ndarray,
    input_qparams: QParams,
    weight_qparams: QParams,
    bias_spec: QuantSpec,
    rule: BiasScaleRule,
) -> QParams:
    """The bias's QParams (zero point 0) under ``rule``.

    PRODUCT: s_bias = s_in * s_w, per channel when the weights are (computed as a correctly rounded
    float32 product, which is what a float32 multiply gives in every framework).
    OWN_POWER_OF_TWO: the smallest power of two that holds max|bias| (NonOverflow), per tensor.
    """
    if input_qparams.per_channel:
        raise SpecError("input", "the input of a biased op is quantized per tensor")
    if rule is BiasScaleRule.PRODUCT:
        scale = (input_qparams.scale.astype(np.float64) * weight_qparams.scale.astype(np.float64)).astype(np.float32)
        spec = bias_spec
        axis = None
        if weight_qparams.per_channel:
            spec = bias_spec.replace(granularity=Granularity.PER_CHANNEL, axis=0)
            axis = 0
        return QParams(scale=scale, zero_point=np.zeros(scale.shape, np.int64), spec=spec, axis=axis)
    bias = np.asarray(bias, dtype=np.float64)
    absmax = float(np.max(np.abs(bias))) if bias.size else 0.0
    return compute_qparams(-absmax, absmax, bias_spec)
