"""Fake quantization in torch, bit-exact with rq_common's reference and ONNX Runtime.

ONNX Runtime divides by the scale; torch's fake_quantize ops multiply by its inverse, which
rounds differently near ties for scales that are not powers of two. So the forward pass divides
(float32, round half to even, saturate) with a straight-through rounding: the gradient is 1
inside the range and 0 where clipped, and a learnable scale gets LSQ's gradient (round(x/s) - x/s
inside, the clip level outside). Only while exporting are torch.fake_quantize_per_{tensor,channel}
_affine used: the TorchScript exporter turns them into QuantizeLinear / DequantizeLinear. They
accept only the integer ranges (-128, 127), (0, 255) and (0, 127).
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


def fake_quantize(
    x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, qmin: int, qmax: int, axis: int | None, fused: bool = False
) -> torch.Tensor:
    """``fused``: torch's fused kernels (fast forward and backward), for QAT steps with a fixed
    scale; they multiply by 1/scale, which equals dividing for power-of-two scales and differs
    from ONNX Runtime only at exact ties otherwise, which training does not notice."""
    if fused or torch.onnx.is_in_onnx_export():
        if axis is None:
            return torch.fake_quantize_per_tensor_affine(x, scale, zero_point, qmin, qmax)
        return torch.fake_quantize_per_channel_affine(x, scale, zero_point, axis % x.dim(), qmin, qmax)
    if axis is not None:
        shape = [1] * x.dim()
        shape[axis % x.dim()] = -1
        scale, zero_point = scale.reshape(shape), zero_point.reshape(shape)
    zero_point = zero_point.to(x.dtype)
    scaled = x / scale
    rounded = scaled + (torch.round(scaled) - scaled).detach()  # round half to even, straight-through
    return (torch.clamp(rounded + zero_point, qmin, qmax) - zero_point) * scale


def quantize_dequantize_wide(x: torch.Tensor, scale: torch.Tensor, qmin: int, qmax: int) -> torch.Tensor:
    """Fake quantization for integer ranges torch's ops do not take (int32 bias), zero point 0."""
    return fake_quantize(x, scale, torch.zeros_like(scale, dtype=torch.int32), qmin, qmax, None if scale.dim() == 0 else 0)
