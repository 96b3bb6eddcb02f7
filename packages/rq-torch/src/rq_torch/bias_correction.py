"""Bias correction's data in rq-torch: each Conv's and Linear's float input mean per channel over
the calibration batches, gathered by forward pre-hooks while calibrating (the correction itself is
rq_common's: rq_common.qmath.bias_correction, applied by finalize). ConvTranspose, a Conv with its
BatchNorm kept for QAT, a layer without a bias and a bias two calls share are left as they are."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from rq_common.qmath.bias_correction import conv_input_mean, linear_input_mean
from rq_torch.modules import QuantConv1d, QuantConv2d, QuantConvBn2d, QuantLayerMixin, QuantLinear


def correctable(layer: QuantLayerMixin) -> bool:
    return (
        isinstance(layer, (QuantConv1d, QuantConv2d, QuantLinear))
        and not isinstance(layer, QuantConvBn2d)
        and layer.bias is not None
    )


class InputMeans:
    """Running per-channel sums of each correctable layer's input (float64), hooked in while it lives."""

    def __init__(self, layers: dict[str, QuantLayerMixin]):
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, int] = {}
        shared = [id(layer.bias) for layer in layers.values() if layer.bias is not None]  # a module called twice: twins share it
        self.layers = {n: layer for n, layer in layers.items() if correctable(layer) and shared.count(id(layer.bias)) == 1}
        self.handles = [layer.register_forward_pre_hook(self._hook(name)) for name, layer in self.layers.items()]

    def _hook(self, name: str):
        def hook(layer, args):
            x = args[0].detach().to(torch.float64)
            axis = -1 if isinstance(layer, nn.Linear) else 1
            channels = torch.movedim(x, axis, 0).reshape(x.shape[axis], -1)
            self.sums[name] = self.sums.get(name, 0) + channels.sum(dim=1)
            self.counts[name] = self.counts.get(name, 0) + channels.shape[1]

        return hook

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()

    def synced(self) -> None:
        """Under torch.distributed, every rank's sums and counts added up (all ranks then correct alike)."""
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            return
        for name in sorted(self.sums):
            total = torch.cat([self.sums[name], torch.tensor([float(self.counts[name])], dtype=torch.float64)])
            torch.distributed.all_reduce(total)
            self.sums[name], self.counts[name] = total[:-1], int(total[-1])

    def laid_out(self) -> dict[str, np.ndarray]:
        """Layer name -> its input mean laid out against its weight, as rq_common's Layer takes it."""
        out = {}
        for name, layer in self.layers.items():
            if name not in self.sums:
                continue
            mean = (self.sums[name] / self.counts[name]).numpy()
            shape = tuple(layer.weight.shape)
            out[name] = linear_input_mean(mean) if isinstance(layer, nn.Linear) else conv_input_mean(shape, mean)
        return out
