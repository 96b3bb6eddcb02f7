"""Folding inference BatchNormalization into the preceding convolution / linear layer.

BN computes gamma * (x - mean) / sqrt(var + eps) + beta = factor * x + shift per channel, so
W' = W * factor (along the output-channel axis) and b' = (b - mean) * factor + beta. Every rq
package folds with this one function, in float64, so their folded weights agree to the bit.
"""

from __future__ import annotations

import numpy as np


def fold_batchnorm(weight, bias, gamma, beta, mean, var, eps: float, channel_axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(W', b') as float32; ``bias`` may be None (treated as zeros)."""
    weight = np.asarray(weight, dtype=np.float64)
    channels = weight.shape[channel_axis]
    bias = np.zeros(channels) if bias is None else np.asarray(bias, dtype=np.float64)
    factor = np.asarray(gamma, np.float64) / np.sqrt(np.asarray(var, np.float64) + float(eps))
    shape = [1] * weight.ndim
    shape[channel_axis] = channels
    folded_weight = weight * factor.reshape(shape)
    folded_bias = (bias - np.asarray(mean, np.float64)) * factor + np.asarray(beta, np.float64)
    return folded_weight.astype(np.float32), folded_bias.astype(np.float32)
