"""Adaptive rounding's data in rq-torch: each Conv2d's and Linear's input patches' moments (E[x x^T],
E[x]) over the calibration batches, gathered by forward pre-hooks while calibrating; rq_common
rounds (rq_common.qmath.adaround, applied by finalize). A Conv2d's patches come from F.unfold,
every n-th output position along each axis as rq-onnx samples them (rq_common's position_step),
so both packages round from the same moments."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rq_common.qmath.adaround import InputMoments, MomentAccumulator, position_step
from rq_torch.modules import QuantConv2d, QuantConvBn2d, QuantLayerMixin, QuantLinear


def roundable(layer: QuantLayerMixin) -> bool:
    return isinstance(layer, (QuantConv2d, QuantLinear)) and not isinstance(layer, QuantConvBn2d)


def patches(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``x`` as the (groups, P, K) patches ``layer``'s weight multiplies, K in the order of one
    output channel's flattened weight."""
    x = x.detach().to(torch.float32)
    if isinstance(layer, nn.Linear):
        return x.reshape(1, -1, x.shape[-1])
    mode = "constant" if layer.padding_mode == "zeros" else layer.padding_mode
    x = F.pad(x, layer._reversed_padding_repeated_twice, mode=mode)  # explicit pads, 'same' too, as the conv computes
    (kh, kw), (dh, dw), (sh, sw) = layer.kernel_size, layer.dilation, layer.stride
    columns = F.unfold(x, (kh, kw), dilation=(dh, dw), stride=(sh, sw))  # (N, C kh kw, L)
    n = x.shape[0]
    out_h = (x.shape[2] - dh * (kh - 1) - 1) // sh + 1
    columns = columns.reshape(n, columns.shape[1], out_h, -1)
    step = position_step(tuple(columns.shape[2:]))
    columns = columns[:, :, ::step, ::step]
    groups = layer.groups
    per_group = columns.shape[1] // groups
    return columns.reshape(n, groups, per_group, -1).permute(1, 0, 3, 2).reshape(groups, -1, per_group)


class InputMomentsHooks:
    """Each roundable layer's input patches' running moments, hooked in while it lives."""

    def __init__(self, layers: dict[str, QuantLayerMixin]):
        self.layers = {name: layer for name, layer in layers.items() if roundable(layer)}
        self.moments = {name: MomentAccumulator() for name in self.layers}
        self.handles = [layer.register_forward_pre_hook(self._hook(name)) for name, layer in self.layers.items()]

    def _hook(self, name: str):
        def hook(layer, args):
            self.moments[name].add(patches(layer, args[0]).numpy())

        return hook

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()

    def result(self) -> dict[str, InputMoments]:
        return {name: m.result() for name, m in self.moments.items() if m.count}
