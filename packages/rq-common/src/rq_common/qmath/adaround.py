"""Adaptive rounding (AdaRound: Nagel et al. 2020, "Up or Down? Adaptive Rounding for Post-Training
Quantization"), one layer at a time, from its input's second moments.

Rounding every weight to nearest minimizes each weight's own error, not the layer's output error.
AdaRound picks floor or ceil per weight to minimize E||(W_q - W) x||^2 over the layer's inputs,
relaxed to a continuous problem: W_soft = s * clip(floor(W / s) + h(V)) with the rectified sigmoid
h(V) = clip(sigmoid(V) (zeta - gamma) + gamma, 0, 1), plus a regularizer lambda * sum(1 - |2h - 1|^beta)
that drives every h to 0 or 1 as beta anneals from 20 to 2 (after a warm-up without it).

For a linear layer (a Conv is one on its input patches) that error is sum_o d_o G d_o^T, with
d_o = W_q[o] - W[o] and G = E[x x^T] over the input patches: the loss needs only G (K x K for K
inputs per output), which the adapter accumulates while calibrating (InputMoments) in memory fixed
by the layer's size, not by the sample count, and every step of the optimization is one matrix
product. Where the bias is corrected afterwards (bias_correction), the mean part of the error is
the bias's to absorb, and G is the covariance E[x x^T] - E[x] E[x]^T instead.

The loss is a sum over output channels: a channel keeps AdaRound's rounding only where it beats
nearest rounding's on the same moments, so the result is never worse than nearest rounding there.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import Enum

import numpy as np

from rq_common.qmath.qparams import QParams

ZETA, GAMMA = 1.1, -0.1  # the rectified sigmoid's stretch (the paper's values)


class Rounding(str, Enum):
    """How weights round to their grid: to nearest, or adaptively (AdaRound, from calibration data)."""

    NEAREST = "nearest"
    ADAROUND = "adaround"


@dataclass(frozen=True)
class AdaRoundConfig:
    """The optimization of one layer. ``regularization``: lambda, the weight of the mean rounding
    penalty against the reconstruction loss normalized by nearest rounding's (the same balance in
    every layer, whatever its size and scale). ``max_step_cost``: a layer whose one step costs
    more multiply-adds (O x K x K: a classifier over thousands of classes) keeps nearest rounding."""

    iterations: int = 500
    learning_rate: float = 0.05
    regularization: float = 10.0
    beta: tuple[float, float] = (20.0, 2.0)
    warmup: float = 0.2
    max_step_cost: int = 2**30


@dataclass(frozen=True)
class InputMoments:
    """A layer's input patches' moments per group: ``gram`` E[x x^T] (groups, K, K), ``mean`` E[x]
    (groups, K), in float64. K runs over one output channel's weights in their flattened order."""

    gram: np.ndarray
    mean: np.ndarray

    def centered(self) -> np.ndarray:
        return self.gram - self.mean[:, :, None] * self.mean[:, None, :]


MAX_POSITIONS = 1024  # a conv's patches per sample and layer: far more than its K x K moments need


def position_step(positions: tuple[int, ...]) -> int:
    """The step along each spatial axis of a conv's output that leaves at most MAX_POSITIONS
    positions (every n-th along each axis): each package samples a conv's patches so."""
    step = 1
    while np.prod([-(-n // step) for n in positions]) > MAX_POSITIONS:
        step += 1
    return step


class MomentAccumulator:
    """Running sums of x x^T and x over every patch seen (float32 products, float64 sums)."""

    def __init__(self) -> None:
        self.products: np.ndarray | None = None
        self.sums: np.ndarray | None = None
        self.count = 0

    def add(self, patches: np.ndarray) -> None:
        """``patches``: (groups, P, K), P patches of K values each."""
        patches = np.asarray(patches, np.float32)
        products = np.matmul(patches.transpose(0, 2, 1), patches).astype(np.float64)
        sums = patches.sum(axis=1).astype(np.float64)  # float32 within a batch, float64 across
        if self.products is None:
            self.products, self.sums = products, sums
        else:
            self.products += products
            self.sums += sums
        self.count += patches.shape[1]

    def result(self) -> InputMoments:
        return InputMoments(self.products / self.count, self.sums / self.count)


def step_cost(weight_shape: tuple[int, ...], axis: int) -> int:
    """Multiply-adds of one step for a weight with its output channels on ``axis``: O x K x K."""
    out_channels = weight_shape[axis]
    width = int(np.prod(weight_shape)) // max(out_channels, 1)
    return out_channels * width * width


def rows(weight: np.ndarray, axis: int) -> np.ndarray:
    """The weight as (output channels, K), each row in the flattened order of its channel."""
    moved = np.moveaxis(np.asarray(weight, np.float64), axis, 0)
    return moved.reshape(moved.shape[0], -1)


def row_losses(delta: np.ndarray, gram: np.ndarray) -> np.ndarray:
    """d_o G_g(o) d_o^T for every row o of ``delta`` (O, K); G (groups, K, K), rows grouped in order."""
    groups = gram.shape[0]
    grouped = delta.reshape(groups, -1, delta.shape[1])
    return (np.matmul(grouped, gram) * grouped).sum(axis=2).reshape(-1)


def _grid(qparams: QParams, out_channels: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row: scale, and the integer range [low, high] around the zero point."""
    scale = np.broadcast_to(qparams.scale.astype(np.float64).reshape(-1, 1), (out_channels, 1))
    zero = np.broadcast_to(qparams.zero_point.astype(np.float64).reshape(-1, 1), (out_channels, 1))
    return scale, qparams.qmin - zero, qparams.qmax - zero


def adaround(
    weight: np.ndarray,
    qparams: QParams,
    axis: int,
    gram: np.ndarray,
    config: AdaRoundConfig = AdaRoundConfig(),
) -> tuple[np.ndarray, float]:
    """The weight rounded adaptively, as float values on its quantization grid (s * (q - z), which
    quantize with ``qparams`` to exactly q), and its output error relative to nearest rounding's
    (<= 1). ``gram``: E[x x^T] per group (InputMoments.gram, or .centered())."""
    w = rows(weight, axis)
    scale, low, high = _grid(qparams, w.shape[0])
    nearest = np.clip(np.rint(w / scale), low, high)
    floor = np.floor(w / scale)
    rest = np.clip(w / scale - floor, 0.0, 1.0)
    nearest_loss = row_losses(scale * nearest - w, gram)
    total = float(nearest_loss.sum())
    if total <= 0.0:  # nearest rounding is already exact on these moments
        return _as_weight(scale * nearest, weight, axis), 1.0

    # the loop runs on the integer grid in float32: e = level - w / s, so that the output error's
    # gradient with respect to h is (2 / total) s^2 (e G) row by row
    f32 = np.float32
    target, floor32, low32, high32 = (np.asarray(x, f32) for x in (w / scale, floor, low, high))
    gram32 = np.asarray(gram, f32)
    gain = np.asarray(2.0 * scale**2 / total, f32)
    p = np.clip((rest - GAMMA) / (ZETA - GAMMA), 1e-6, 1 - 1e-6)
    v = np.log(p / (1.0 - p)).astype(f32)
    adam = _Adam(v.shape, config.learning_rate)
    warmup = int(config.warmup * config.iterations)
    penalty = f32(config.regularization / w.size)
    for step in range(config.iterations):
        sigmoid = 1.0 / (1.0 + np.exp(-v))
        stretched = sigmoid * f32(ZETA - GAMMA) + f32(GAMMA)
        h = np.clip(stretched, 0.0, 1.0)
        level = floor32 + h
        inside = (level > low32) & (level < high32) & (stretched > 0.0) & (stretched < 1.0)
        error = np.clip(level, low32, high32) - target
        grouped = error.reshape(gram32.shape[0], -1, error.shape[1])
        grad_h = gain * np.matmul(grouped, gram32).reshape(error.shape)
        if step >= warmup:
            beta = f32(_beta(step, warmup, config))
            centered = 2.0 * h - 1.0
            grad_h -= penalty * beta * 2.0 * np.abs(centered) ** (beta - 1.0) * np.sign(centered)
        grad_v = grad_h * inside * (sigmoid * (1.0 - sigmoid) * f32(ZETA - GAMMA))
        v = adam.step(v, grad_v)

    adaptive = np.clip(floor + (v >= 0.0), low, high)
    adaptive_loss = row_losses(scale * adaptive - w, gram)
    better = (adaptive_loss < nearest_loss)[:, None]
    chosen = np.where(better, adaptive, nearest)
    ratio = float(np.minimum(adaptive_loss, nearest_loss).sum() / total)
    return _as_weight(scale * chosen, weight, axis), ratio


class AdaptiveRounding:
    """AdaRound for a model's layers, each done once: finalize run again on the same calibration
    (rq-onnx's rounds that keep an unrepairable op in float) reuses a weight's rounding while its
    QParams are the same. ``progress`` wraps each list of layers to round (a progress bar)."""

    def __init__(self, config: AdaRoundConfig = AdaRoundConfig(), progress: Callable[[Iterable], Iterable] | None = None):
        self.config = config
        self.progress = progress or (lambda items: items)
        self._done: dict[str, tuple[QParams, np.ndarray, float]] = {}

    def round(self, name: str, weight: np.ndarray, qparams: QParams, axis: int, gram: np.ndarray) -> tuple[np.ndarray, float]:
        """adaround() of the weight called ``name``, or what it gave last time for these QParams."""
        done = self._done.get(name)
        if done is None or done[0] != qparams:
            done = (qparams, *adaround(weight, qparams, axis, gram, self.config))
            self._done[name] = done
        return done[1], done[2]

    def is_done(self, name: str, qparams: QParams) -> bool:
        return name in self._done and self._done[name][0] == qparams


def _beta(step: int, warmup: int, config: AdaRoundConfig) -> float:
    """beta annealed linearly from its start to its end over the iterations after the warm-up."""
    start, end = config.beta
    progress = (step - warmup) / max(config.iterations - warmup, 1)
    return end + (start - end) * (1.0 - progress)


def _as_weight(values: np.ndarray, weight: np.ndarray, axis: int) -> np.ndarray:
    """(O, K) rows back in the weight's own shape, output channels on ``axis``."""
    moved_shape = (weight.shape[axis], *(d for i, d in enumerate(weight.shape) if i != axis % weight.ndim))
    return np.moveaxis(values.reshape(moved_shape), 0, axis).astype(np.float32)


class _Adam:
    """Adam (Kingma & Ba 2015) with its default moments, on one array."""

    def __init__(self, shape: tuple[int, ...], learning_rate: float) -> None:
        self.m = np.zeros(shape, np.float32)
        self.v = np.zeros(shape, np.float32)
        self.t = 0
        self.learning_rate = learning_rate

    def step(self, value: np.ndarray, grad: np.ndarray, b1: float = 0.9, b2: float = 0.999) -> np.ndarray:
        self.t += 1
        self.m = b1 * self.m + (1 - b1) * grad
        self.v = b2 * self.v + (1 - b2) * grad * grad
        m_hat = self.m / (1 - b1**self.t)
        v_hat = self.v / (1 - b2**self.t)
        return value - self.learning_rate * m_hat / (np.sqrt(v_hat) + 1e-8)
