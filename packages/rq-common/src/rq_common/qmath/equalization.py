"""Cross-layer equalization and high-bias absorption (Nagel et al. 2019, "Data-Free Quantization
Through Weight Equalization and Bias Correction", sections 4.1 and 4.2).

Two layers joined through a positively homogeneous function f (identity, ReLU, LeakyRelu, max and
average pooling: f(x / s) = f(x) / s for s > 0, per channel) compute the same when the first
layer's output channel i is divided by s_i and the second's input channel i is multiplied by it.
With s_i = sqrt(r1_i / r2_i), r1 the first layer's per-output-channel weight ranges and r2 the
second's per-input-channel ones, both become sqrt(r1_i * r2_i): a per-tensor weight grid then fits
every channel, where before the widest channel set the step for all. A depthwise layer sits in
two pairs (its input and its output channel are the same); iterating the pairs converges.

High-bias absorption: where the function is ReLU and the first layer's output channel i never
falls below c_i >= 0, relu(x - c_i) = relu(x) - c_i, so c_i leaves the first layer's bias and
enters the second's as W2[:, i] summed times c_i. That is exact where the second layer reads no
padding (a padded border would read 0 where it read c_i).

Layers are held in float64 in one canonical layout, (out, in / groups, *kernel), so Conv, Gemm
and MatMul weights share every formula; ``weight()`` gives each back in its own layout.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import numpy as np

from rq_common.errors import SpecError

# a channel whose range is below this share of its layer's widest is dead: left unscaled, for a
# scale from it would blow its bias up (b / s) for nothing
DEAD_CHANNEL = 1e-8


class Layout(Enum):
    """How a framework stores a weight; a Layer converts to and from its own (OIK)."""

    OIK = "out, in / groups, *kernel"  # ONNX and torch convs, a Gemm with transB = 1, torch's Linear
    IO = "in, out"  # a MatMul's weight, a Gemm's with transB = 0, Keras's Dense, TF's MatMul
    KIO = "*kernel, in / groups, out"  # Keras's and TF's Conv1D / Conv2D
    KCM = "kh, kw, channels, multiplier"  # Keras's and TF's depthwise conv: output c * M + m reads input c


@dataclass
class Layer:
    """One weight layer: ``kernel`` (out, in / groups, *kernel) and ``bias`` (out,), float64, and
    the layout and shape its framework stores the weight in (``weight()`` gives it back so)."""

    kernel: np.ndarray
    bias: np.ndarray
    groups: int = 1
    layout: Layout = Layout.OIK
    shape: tuple[int, ...] = ()

    @classmethod
    def from_weight(cls, weight, bias=None, layout: Layout = Layout.OIK, groups: int = 1) -> Layer:
        """``weight`` as its framework stores it (``layout``); ``bias`` None for none (zeros)."""
        stored = np.array(weight, dtype=np.float64)
        if layout is Layout.IO:
            kernel = stored.T.copy()
        elif layout is Layout.KIO:
            spatial = stored.ndim - 2
            kernel = stored.transpose(spatial + 1, spatial, *range(spatial)).copy()
        elif layout is Layout.KCM:
            kh, kw, channels, multiplier = stored.shape
            kernel = stored.reshape(kh, kw, channels * multiplier).transpose(2, 0, 1)[:, None].copy()
            groups = channels
        else:
            kernel = stored
        return cls(kernel, _bias(bias, kernel.shape[0]), groups, layout, stored.shape)

    @classmethod
    def conv(cls, weight, bias=None, groups: int = 1) -> Layer:
        """An ONNX / torch conv weight (out, in / groups, *kernel)."""
        return cls.from_weight(weight, bias, Layout.OIK, groups)

    @classmethod
    def linear(cls, weight, bias=None, transposed: bool = False) -> Layer:
        """A Gemm / MatMul weight: (out, in), or (in, out) when ``transposed``."""
        return cls.from_weight(weight, bias, Layout.IO if transposed else Layout.OIK)

    def weight(self) -> np.ndarray:
        """The weight in its framework's layout and shape, float32."""
        if self.layout is Layout.IO:
            stored = self.kernel.T
        elif self.layout is Layout.KIO:
            stored = self.kernel.transpose(*range(2, self.kernel.ndim), 1, 0)
        elif self.layout is Layout.KCM:
            stored = self.kernel[:, 0].transpose(1, 2, 0).reshape(self.shape)
        else:
            stored = self.kernel
        return np.ascontiguousarray(stored, dtype=np.float32)

    @property
    def out_channels(self) -> int:
        return self.kernel.shape[0]

    @property
    def in_channels(self) -> int:
        return self.kernel.shape[1] * self.groups

    def _grouped(self) -> np.ndarray:
        """(groups, out / groups, in / groups, kernel elements)."""
        out, per_group = self.kernel.shape[:2]
        return self.kernel.reshape(self.groups, out // self.groups, per_group, -1)

    def output_ranges(self) -> np.ndarray:
        return np.abs(self.kernel).reshape(self.out_channels, -1).max(axis=1)

    def input_ranges(self) -> np.ndarray:
        return np.abs(self._grouped()).max(axis=(1, 3)).reshape(-1)

    def scale_outputs(self, scales: np.ndarray) -> None:
        """Output channel i divided by scales[i] (weight and bias)."""
        self.kernel /= scales.reshape((-1,) + (1,) * (self.kernel.ndim - 1))
        self.bias /= scales

    def scale_inputs(self, scales: np.ndarray) -> None:
        """Input channel i's weights multiplied by scales[i]."""
        scaled = self._grouped() * scales.reshape(self.groups, 1, -1, 1)
        self.kernel = scaled.reshape(self.kernel.shape)

    def absorb_input_shift(self, shift: np.ndarray) -> None:
        """The bias that keeps the output the same when input channel i arrives lowered by shift[i]."""
        self.bias += (self._grouped() * shift.reshape(self.groups, 1, -1, 1)).sum(axis=(2, 3)).reshape(-1)


def _bias(bias, channels: int) -> np.ndarray:
    return np.zeros(channels) if bias is None else np.array(bias, dtype=np.float64).reshape(-1)


def equalization_scales(producer_ranges: np.ndarray, consumer_ranges: np.ndarray) -> np.ndarray:
    """s_i = sqrt(r1_i / r2_i); 1 for a dead channel of either layer."""
    r1 = np.asarray(producer_ranges, np.float64)
    r2 = np.asarray(consumer_ranges, np.float64)
    live = (r1 > DEAD_CHANNEL * r1.max(initial=0.0)) & (r2 > DEAD_CHANNEL * r2.max(initial=0.0))
    scales = np.ones_like(r1)
    scales[live] = np.sqrt(r1[live] / r2[live])
    return scales


def equalize_pair(producer: Layer, consumer: Layer) -> np.ndarray:
    """Equalize one pair in place; the scales it applied."""
    if producer.out_channels != consumer.in_channels:
        raise ValueError(f"the producer has {producer.out_channels} output channels, the consumer reads {consumer.in_channels}")
    scales = equalization_scales(producer.output_ranges(), consumer.input_ranges())
    producer.scale_outputs(scales)
    consumer.scale_inputs(scales)
    return scales


def equalize(pairs: list[tuple[Layer, Layer]], max_iterations: int = 20, tolerance: float = 1e-4) -> int:
    """Equalize every pair, again and again until no scale moves more than ``tolerance`` (a layer in
    two pairs, a depthwise conv between two convs, moves with both); the rounds it took."""
    for round_ in range(1, max_iterations + 1):
        moved = max((float(np.abs(np.log(equalize_pair(p, c))).max(initial=0.0)) for p, c in pairs), default=0.0)
        if moved < tolerance:
            return round_
    return max_iterations


def absorb_high_bias(producer: Layer, consumer: Layer, lower_bounds: np.ndarray) -> np.ndarray:
    """Move max(0, lower_bounds[i]) (the least value producer output channel i takes before its ReLU)
    from the producer's bias into the consumer's; the amounts moved."""
    shift = np.maximum(np.asarray(lower_bounds, np.float64).reshape(-1), 0.0)
    producer.bias -= shift
    consumer.absorb_input_shift(shift)
    return shift


class Relu6(str, Enum):
    """What equalization does with a pair of layers joined through ReLU6 (Clip(0, 6))."""

    KEEP = "keep"  # the pair is left as it is: a clamp at 6 does not commute with a scale
    RELU = "relu"  # ReLU6 becomes ReLU and the pair is equalized (AIMET's choice): the float model changes where a value passed 6


@dataclass(frozen=True)
class Equalization:
    """Cross-layer equalization's settings: ``max_iterations`` rounds over all pairs at most;
    ``absorb_high_bias`` where a ReLU joins the pair and the second layer reads no padding,
    from the least value each channel takes on the first ``absorb_batches`` calibration batches."""

    max_iterations: int = 20
    absorb_high_bias: bool = True
    absorb_batches: int = 8
    relu6: Relu6 = Relu6.KEEP

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "relu6", Relu6(self.relu6))
        except ValueError:
            raise SpecError("relu6", f"{self.relu6!r} is not a choice; use one of: {', '.join(r.value for r in Relu6)}") from None
        if self.max_iterations < 1 or self.absorb_batches < 1:
            raise SpecError("equalization", "max_iterations and absorb_batches must be at least 1")


def resolve_equalization(choice: Equalization | bool | None, per_tensor_weights: bool) -> Equalization | None:
    """The equalization a run does: ``choice``, or for None the default, which is on where the
    weights are per tensor (the NPU presets): there one grid serves every channel, and on the zoo
    equalization lifts such models (docs/pipeline.md); per-channel weights gain nothing from it."""
    if choice is None:
        return Equalization() if per_tensor_weights else None
    if isinstance(choice, bool):
        return Equalization() if choice else None
    return choice


def equalization_for(choice: Equalization | bool | None, preset, batchnorm_kept: bool = False) -> Equalization | None:
    """The equalization a package runs for ``preset``: resolve_equalization by its weights' granularity.
    Where BatchNorm stays unfolded for QAT (``batchnorm_kept``: freeze_bn_after), there is no folded
    weight to rescale: none by default, and asking for it is refused."""
    if batchnorm_kept:
        if choice:
            raise SpecError(
                "equalization",
                "equalization rescales folded Conv weights, and freeze_bn_after keeps BatchNorm unfolded: use one of the two",
            )
        return None
    return resolve_equalization(choice, not preset.weight.per_channel)
