"""Fake quantization in torch, bit-exact with rq_common's reference and ONNX Runtime.

ONNX Runtime divides by the scale; torch's fake_quantize ops multiply by its inverse, which
rounds differently near ties for scales that are not powers of two. So the forward pass divides
(float32, round half to even, saturate). The gradient is straight-through: 1 where the rounded
value lies in the integer range, 0 where it was clipped; a learnable scale gets LSQ's gradient
(round(x/s) - x/s inside, the clip level outside). With a fixed scale (PTQ, and QAT of the weights
alone) one autograd Function does this in place, keeping a one-byte mask for the backward pass as
torch's kernel does, and runs forward and backward several times faster on the CPU than
torch.fake_quantize_per_tensor_affine (docs/torch.md). Only while exporting are
torch.fake_quantize_per_{tensor,channel}_affine used: the TorchScript exporter turns them into
QuantizeLinear / DequantizeLinear. They accept only the integer ranges (-128, 127), (0, 255) and
(0, 127).
"""

from __future__ import annotations

import torch

from rq_common.errors import SpecError
from rq_common.spec import QuantSpec

EXPORTABLE_RANGES = {(-128, 127), (0, 255), (0, 127)}


def check_exportable(spec: QuantSpec, field: str) -> None:
    if (spec.qmin, spec.qmax) not in EXPORTABLE_RANGES:
        raise SpecError(
            field,
            f"integer range [{spec.qmin}, {spec.qmax}] cannot be exported by torch's fake-quant ops "
            "(they take (-128, 127), (0, 255) or (0, 127)); use 8-bit specs without narrow_range",
        )


class _FixedScaleFakeQuantize(torch.autograd.Function):
    """round(x / scale) + zero point, clipped, back to float: in place on one buffer; the mask of
    values inside the range is what backward needs."""

    @staticmethod
    def forward(ctx, x, scale, zero_point, qmin, qmax):
        q = torch.div(x, scale).round_().add_(zero_point)
        clipped = q.clamp(qmin, qmax)
        if ctx.needs_input_grad[0]:  # not while calibrating or evaluating
            ctx.save_for_backward(clipped == q)
        return clipped.sub_(zero_point).mul_(scale)

    @staticmethod
    def backward(ctx, grad):
        (inside,) = ctx.saved_tensors
        return grad * inside.view(torch.uint8), None, None, None, None  # bool's multiply is 4x slower


def fake_quantize(
    x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, qmin: int, qmax: int, axis: int | None
) -> torch.Tensor:
    """Fake-quantize ``x`` (per channel on ``axis``, or per tensor when None); the gradient reaches
    ``scale`` only where it requires one (a learned scale)."""
    if torch.onnx.is_in_onnx_export():
        if axis is None:
            return torch.fake_quantize_per_tensor_affine(x, scale, zero_point, qmin, qmax)
        return torch.fake_quantize_per_channel_affine(x, scale, zero_point, axis % x.dim(), qmin, qmax)
    if axis is not None:
        shape = [1] * x.dim()
        shape[axis % x.dim()] = -1
        scale, zero_point = scale.reshape(shape), zero_point.reshape(shape)
    zero_point = zero_point.to(x.dtype)
    if not scale.requires_grad:
        return _FixedScaleFakeQuantize.apply(x, scale, zero_point, qmin, qmax)
    scaled = x / scale
    rounded = scaled + (torch.round(scaled) - scaled).detach()  # round half to even, straight-through
    return (torch.clamp(rounded + zero_point, qmin, qmax) - zero_point) * scale


def quantize_dequantize_wide(x: torch.Tensor, scale: torch.Tensor, qmin: int, qmax: int) -> torch.Tensor:
    """Fake quantization for integer ranges torch's ops do not take (int32 bias), zero point 0."""
    return fake_quantize(x, scale, torch.zeros_like(scale, dtype=torch.int32), qmin, qmax, None if scale.dim() == 0 else 0)
