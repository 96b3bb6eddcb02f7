"""Quantized twins of torch's weighted layers, and plain modules for functional ops.

A Quant layer fake-quantizes its weight (per channel on the output-channel axis where the preset
says so) and its bias (int32 at input scale x weight scale, or the NPU's own power-of-two int8
scale). The activations around it are quantized by TensorQuantizers that quantize_model inserts.
While exporting, the bias stays float: rq_common's canonicalizer stores it with the same rule.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rq_common import pipeline
from rq_common.qmath import QParams, bias_qparams, compute_qparams
from rq_common.spec import BiasScaleRule, CalibrationMethod, Granularity, Preset
from rq_torch.fake_quant import check_exportable, quantize_dequantize_wide
from rq_torch.quantizer import Mode, TensorQuantizer

MINMAX_METHODS = (CalibrationMethod.MINMAX, CalibrationMethod.POT_NONOVERFLOW)
HISTOGRAM_REFRESH_STEPS = 16


class QuantLayerMixin:
    """Weight and bias quantization shared by every Quant layer. ``weight_axis``: output channels."""

    weight_axis = 0

    def _init_quantization(self, preset: Preset, name: str) -> None:
        spec = preset.weight
        channels = self.weight.shape[self.weight_axis]
        if spec.per_channel:
            spec = spec.replace(axis=self.weight_axis)
        check_exportable(spec, "weight")
        self.layer_name = name
        self.preset = preset
        self.qat_steps = 0
        self.weight_quantizer = TensorQuantizer(
            spec,
            preset.weight_method,
            name=f"{name}.weight",
            channels=channels if spec.per_channel else None,
            persist_observer=False,
        )
        self.bias_spec = preset.bias
        self.bias_rule = preset.bias_rule
        self.register_buffer(
            "bias_scale", torch.ones(channels if spec.per_channel and preset.bias_rule is BiasScaleRule.PRODUCT else ())
        )
        self.input_quantizer: TensorQuantizer | None = None  # set by quantize_model; not a submodule
        self.output_quantizer: TensorQuantizer | None = None
        self._bias_scale_source: tuple[torch.Tensor, torch.Tensor] | None = None

    @classmethod
    def from_float(cls, module: nn.Module, preset: Preset, name: str):
        quant = cls.__new__(cls)
        quant.__dict__ = dict(module.__dict__)  # same hyper-parameters and parameters
        quant._parameters = dict(module._parameters)
        quant._buffers = dict(module._buffers)
        quant._modules = dict(module._modules)
        quant._init_quantization(preset, name)
        return quant

    @property
    def quantizing(self) -> bool:
        return self.weight_quantizer.mode is Mode.QUANTIZE

    def float_weight(self) -> torch.Tensor:
        """The weight that gets quantized (a Conv+BN layer folds its BN into it)."""
        return self.weight

    def float_bias(self) -> torch.Tensor | None:
        return self.bias

    def weight_qparams(self) -> QParams:
        """Re-derive the weight's QParams from the current weights, by the one rule every package
        uses (rq_common.pipeline.weight_qparams), and hold them."""
        q = self.weight_quantizer
        values = self.float_weight().detach().to(torch.float32).cpu().numpy()
        qparams = pipeline.weight_qparams(values, q.spec.axis if q.spec.per_channel else None, self.preset, q.tensor_name)
        q.set_qparams(qparams)
        return qparams

    def bias_qparams(self) -> QParams | None:
        bias = self.float_bias()
        if bias is None or self.input_quantizer is None:
            return None
        input_qp = self.input_quantizer.qparams()
        weight_qp = self.weight_quantizer.qparams()
        return bias_qparams(bias.detach().cpu().numpy(), input_qp, weight_qp, self.bias_spec, self.bias_rule)

    def set_bias_qparams(self, qparams: QParams) -> None:
        self.bias_scale = torch.as_tensor(np.asarray(qparams.scale, np.float32)).reshape(self.bias_scale.shape).clone()

    def refresh_weight_qparams(self) -> None:
        """QAT: the weights move, so their scale follows. Min/max methods re-derive it every step
        from one torch reduction; histogram methods (pot_minmse, mse, ...) every
        HISTOGRAM_REFRESH_STEPS steps, where the weights have moved enough to matter."""
        q = self.weight_quantizer
        if q.method in MINMAX_METHODS:
            weight = self.float_weight().detach()
            if q.spec.per_channel:
                channels = weight.movedim(q.spec.axis, 0).reshape(weight.shape[q.spec.axis], -1)
                low, high = channels.amin(dim=1), channels.amax(dim=1)
            else:
                low, high = torch.aminmax(weight)
            q.set_qparams(compute_qparams(low.double().numpy(), high.double().numpy(), q.spec))
        elif self.qat_steps % HISTOGRAM_REFRESH_STEPS == 0:
            self.weight_qparams()
        self.qat_steps += 1

    def refresh_bias_scale(self) -> None:
        """QAT: an int32 bias's scale is input scale x weight scale; re-derive it only when one of
        them moved (power-of-two scales seldom do)."""
        if self.bias_rule is not BiasScaleRule.PRODUCT or self.float_bias() is None or self.input_quantizer is None:
            return
        source = (self.input_quantizer.scale, self.weight_quantizer.scale)
        cached = self._bias_scale_source
        if cached is not None and all(torch.equal(a, b) for a, b in zip(source, cached)):
            return
        self.set_bias_qparams(self.bias_qparams())
        self._bias_scale_source = tuple(t.clone() for t in source)

    def quantized_weight(self) -> torch.Tensor:
        if self.training and self.quantizing:
            self.refresh_weight_qparams()
            self.refresh_bias_scale()
        return self.weight_quantizer(self.float_weight())

    def quantized_bias(self) -> torch.Tensor | None:
        bias = self.float_bias()
        if bias is None or not self.quantizing or torch.onnx.is_in_onnx_export():
            return bias
        return quantize_dequantize_wide(bias, self.bias_scale, self.bias_spec.qmin, self.bias_spec.qmax)


class QuantConv1d(QuantLayerMixin, nn.Conv1d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.quantized_weight(), self.quantized_bias())


class QuantConv2d(QuantLayerMixin, nn.Conv2d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.quantized_weight(), self.quantized_bias())


class ConvBn2d(nn.Module):
    """A Conv2d and the BatchNorm2d after it, kept apart for QAT (quantize_model(..., freeze_bn_after=N))."""

    def __init__(self, conv: nn.Conv2d, bn: nn.BatchNorm2d):
        super().__init__()
        self.conv, self.bn = conv, bn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


class QuantConvBn2d(QuantConv2d):
    """QAT with BatchNorm: the convolution always runs with the folded, quantized weight; for the
    first ``freeze_after`` training steps BatchNorm still normalizes with batch statistics (and
    updates its running ones), as in Jacob et al. 2018; after that its statistics are frozen and the
    layer is the folded Conv that inference and export use."""

    @classmethod
    def from_float(cls, module: ConvBn2d, preset: Preset, name: str, freeze_after: int = 0):
        quant = super().from_float(module.conv, preset, name)
        quant.bn = module.bn
        quant.freeze_after = freeze_after
        quant.register_buffer("steps", torch.zeros((), dtype=torch.long))
        return quant

    def _factor(self) -> torch.Tensor:
        return self.bn.weight / torch.sqrt(self.bn.running_var + self.bn.eps)

    def float_weight(self) -> torch.Tensor:
        return self.weight * self._factor().reshape(-1, 1, 1, 1)

    def float_bias(self) -> torch.Tensor:
        bias = self.bias if self.bias is not None else torch.zeros_like(self.bn.running_mean)
        return (bias - self.bn.running_mean) * self._factor() + self.bn.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.quantized_weight()
        if self.training and self.quantizing and int(self.steps) < self.freeze_after:
            self.steps += 1
            y = self._conv_forward(x, weight, None) / self._factor().reshape(1, -1, 1, 1)  # unfold, then BN on batch statistics
            if self.bias is not None:
                y = y + self.bias.reshape(1, -1, 1, 1)
            return self.bn(y)
        return self._conv_forward(x, weight, self.quantized_bias())


class QuantConvTranspose2d(QuantLayerMixin, nn.ConvTranspose2d):
    weight_axis = 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv_transpose2d(
            x,
            self.quantized_weight(),
            self.quantized_bias(),
            self.stride,
            self.padding,
            self.output_padding,
            self.groups,
            self.dilation,
        )


class QuantLinear(QuantLayerMixin, nn.Linear):
    """On 2-d inputs the exporter writes Gemm (bias in the int bias slot). On more dims it writes
    MatMul + Add, and this layer then quantizes what rq-onnx quantizes in that graph: the MatMul's
    output (an activation scale) and the bias as an int8 constant (the weight spec, per tensor)."""

    def _init_quantization(self, preset: Preset, name: str) -> None:
        super()._init_quantization(preset, name)
        self.matmul_quantizer: TensorQuantizer | None = None
        self.bias_quantizer: TensorQuantizer | None = None

    def use_matmul_form(self, preset: Preset) -> None:
        self.matmul_quantizer = TensorQuantizer(preset.activation, preset.activation_method, name=f"{self.layer_name}.matmul")
        if self.bias is not None:
            spec = preset.weight.replace(granularity="per_tensor", axis=None)
            self.bias_quantizer = TensorQuantizer(
                spec, preset.weight_method, name=f"{self.layer_name}.bias", persist_observer=False
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.quantized_weight()
        if self.matmul_quantizer is None:
            return F.linear(x, weight, self.quantized_bias())
        y = self.matmul_quantizer(torch.matmul(x, weight.t()))
        if self.bias is None:
            return y
        if self.training and self.quantizing:  # QAT: the bias moves, so its scale follows
            self.bias_quantizer.reset()
            self.bias_quantizer.observe(self.bias)
            self.bias_quantizer.finalize()
        return y + self.bias_quantizer(self.bias)


QUANT_LAYERS: dict[type[nn.Module], type[QuantLayerMixin]] = {
    ConvBn2d: QuantConvBn2d,
    nn.Conv1d: QuantConv1d,
    nn.Conv2d: QuantConv2d,
    nn.ConvTranspose2d: QuantConvTranspose2d,
    nn.Linear: QuantLinear,
}


# Functional ops as modules: use them where tracing cannot see an op (inside a leaf module) or
# where a model is not traceable; quantize_model treats them as the ONNX op they export to.
class Add(nn.Module):
    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a + b


class Mul(nn.Module):
    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a * b


class MatMul(nn.Module):
    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.matmul(a, b)


class Cat(nn.Module):
    def __init__(self, dim: int = 1):
        super().__init__()
        self.dim = dim

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        return torch.cat(tensors, dim=self.dim)


__all__ = [
    "QUANT_LAYERS",
    "Add",
    "Cat",
    "Granularity",
    "MatMul",
    "Mul",
    "QuantConv1d",
    "QuantConv2d",
    "QuantConvTranspose2d",
    "QuantLinear",
]
