"""Bias correction from calibration data (Nagel et al. 2019, "Data-Free Quantization Through Weight
Equalization and Bias Correction", sec. 4.2, its empirical form).

A quantized weight's rounding error is not zero on average per output channel: with per-tensor
weights a narrow channel's error can be as large as the channel itself (rounded to zero). The layer's
output mean then shifts by E[(W_q - W) x] = (W_q - W) E[x], which every later layer inherits. The
bias absorbs it: b' = b - (W_q - W) E[x]. E[x] is the float input's mean per channel over the
calibration data; the adapter lays it out like the weight (it broadcasts against the weight, e.g.
(O, I/groups, 1, 1) for a Conv), as only the adapter knows its op's layout.
"""

from __future__ import annotations

import numpy as np


def output_shift(weight: np.ndarray, quantized_weight: np.ndarray, input_mean: np.ndarray, axis: int) -> np.ndarray:
    """E[(W_q - W) x] per output channel (``axis`` of the weight), in float64."""
    error = (np.asarray(quantized_weight, np.float64) - np.asarray(weight, np.float64)) * np.asarray(input_mean, np.float64)
    return error.sum(axis=tuple(i for i in range(error.ndim) if i != axis % error.ndim))


def corrected_bias(
    bias: np.ndarray, weight: np.ndarray, quantized_weight: np.ndarray, input_mean: np.ndarray, axis: int
) -> np.ndarray:
    """The bias that keeps the quantized layer's mean output per channel where the float layer's is."""
    shift = output_shift(weight, quantized_weight, input_mean, axis)
    return (np.asarray(bias, np.float64).reshape(-1) - shift).astype(np.float32)


def conv_input_mean(weight_shape: tuple[int, ...], mean: np.ndarray) -> np.ndarray:
    """A conv input's channel means laid out against its weight (out, in / groups, *kernel): each
    output channel's row reads its group's input channels."""
    out_channels, per_group = weight_shape[:2]
    groups = mean.size // per_group
    layout = np.asarray(mean).reshape(groups, per_group)[np.arange(out_channels) // (out_channels // groups)]
    return layout.reshape(out_channels, per_group, *[1] * (len(weight_shape) - 2))


def linear_input_mean(mean: np.ndarray, transposed: bool = False) -> np.ndarray:
    """A linear layer's input channel means against its weight (out, in), or (in, out) when ``transposed``."""
    mean = np.asarray(mean)
    return mean.reshape(-1, 1) if transposed else mean.reshape(1, -1)
