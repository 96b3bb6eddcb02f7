"""Folding inference BatchNormalization into the preceding convolution / linear layer.

BN computes gamma * (x - mean) / sqrt(var + eps) + beta = factor * x + shift per channel, so
W' = W * factor (along the output-channel axis) and b' = (b - mean) * factor + beta. Every rq
package folds with this one function, in float64, so their folded weights agree to the bit.
"""

from __future__ import annotations

import numpy as np


def fold_batchnorm(weight, bias, gamma, beta, mean, var, eps: float, channel_axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(W', b') as float32; ``bias`` may be None (treated as zeros)."""
    weight, bias, shape = _per_channel(weight, bias, channel_axis)
    factor = np.asarray(gamma, np.float64) / np.sqrt(np.asarray(var, np.float64) + float(eps))
    folded_bias = (bias - np.asarray(mean, np.float64)) * factor + np.asarray(beta, np.float64)
    return (weight * factor.reshape(shape)).astype(np.float32), folded_bias.astype(np.float32)


def _per_channel(weight, bias, channel_axis: int):
    """float64 weight and bias (zeros if None), and the shape that broadcasts along the channels."""
    weight = np.asarray(weight, dtype=np.float64)
    channels = weight.shape[channel_axis]
    bias = np.zeros(channels) if bias is None else np.asarray(bias, dtype=np.float64)
    shape = [1] * weight.ndim
    shape[channel_axis] = channels
    return weight, bias, shape


def fold_scale_shift(weight, bias, scale, shift, channel_axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A per-output-channel y * scale + shift after the layer, folded: W' = W * scale,
    b' = b * scale + shift (float64, returned as float32). The Mul/Add form of an inference
    BatchNorm (how TensorFlow writes a Keras BatchNormalization after a depthwise conv) folds so."""
    weight, bias, shape = _per_channel(weight, bias, channel_axis)
    scale = np.broadcast_to(np.asarray(scale, np.float64).reshape(-1), bias.shape)
    shift = np.broadcast_to(np.asarray(shift, np.float64).reshape(-1), bias.shape)
    return (weight * scale.reshape(shape)).astype(np.float32), (bias * scale + shift).astype(np.float32)
