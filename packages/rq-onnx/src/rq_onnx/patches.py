"""A layer's input as the patches its weight multiplies, for adaptive rounding's input moments
(rq_common.qmath.adaround): per op, its input x -> (groups, P, K), each patch's K values in the
order of one output channel's flattened weight. One table, by op type.

A Conv's input gives one patch per output position: at high resolution far more than its K x K
moments need (and im2col copies each input value K times). Each sample gives at most
MAX_POSITIONS of them, every n-th output position along each axis."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
from numpy.lib.stride_tricks import sliding_window_view

from rq_common.format.graph import attribute
from rq_common.qmath.adaround import position_step

PatchLayout = Callable[[onnx.NodeProto, tuple[int, ...], np.ndarray], np.ndarray]


def _conv_pads(
    node: onnx.NodeProto, spatial: tuple[int, ...], kernel: tuple[int, ...], strides, dilations
) -> list[tuple[int, int]]:
    """(begin, end) padding per spatial axis, explicit or from auto_pad (ONNX's Conv definition)."""
    auto_pad = attribute(node, "auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        pads = []
        for size, k, s, d in zip(spatial, kernel, strides, dilations, strict=True):
            out = -(-size // s)
            total = max((out - 1) * s + (k - 1) * d + 1 - size, 0)
            small, large = total // 2, total - total // 2
            pads.append((small, large) if auto_pad == "SAME_UPPER" else (large, small))
        return pads
    if auto_pad == "VALID":
        return [(0, 0)] * len(spatial)
    flat = list(attribute(node, "pads", [0] * (2 * len(spatial))))
    return list(zip(flat[: len(spatial)], flat[len(spatial) :], strict=True))


def conv_patches(node: onnx.NodeProto, weight_shape: tuple[int, ...], x: np.ndarray) -> np.ndarray:
    """im2col: every output position's receptive field, per group, as (c, k1, k2, ...)."""
    out_channels, per_group, *kernel = weight_shape
    spatial = x.shape[2:]
    rank = len(kernel)
    strides = list(attribute(node, "strides", [1] * rank))
    dilations = list(attribute(node, "dilations", [1] * rank))
    groups = x.shape[1] // per_group
    batch = x.shape[0]
    pads = _conv_pads(node, spatial, kernel, strides, dilations)
    if all(k == 1 for k in kernel) and all(s == 1 for s in strides) and not any(sum(p) for p in pads):
        step = position_step(spatial)  # a pointwise conv: each position is a patch
        sampled = x[(slice(None), slice(None), *[slice(None, None, step)] * rank)]
        grouped = sampled.reshape(batch, groups, per_group, -1)
        return np.ascontiguousarray(grouped.transpose(1, 0, 3, 2)).reshape(groups, -1, per_group)
    padded = np.pad(x, [(0, 0), (0, 0), *pads])
    spans = [(k - 1) * d + 1 for k, d in zip(kernel, dilations, strict=True)]
    windows = sliding_window_view(padded, spans, axis=tuple(range(2, 2 + rank)))
    windows = windows[
        (slice(None), slice(None), *[slice(None, None, s) for s in strides], *[slice(None, None, d) for d in dilations])
    ]
    step = position_step(windows.shape[2 : 2 + rank])
    windows = windows[(slice(None), slice(None), *[slice(None, None, step)] * rank)]
    # (N, C, o1.., k1..) -> (groups, N, o1.., per_group, k1..) -> (groups, P, K)
    grouped = windows.reshape(batch, groups, per_group, *windows.shape[2:])
    order = [1, 0, *range(3, 3 + rank), 2, *range(3 + rank, 3 + 2 * rank)]
    return np.ascontiguousarray(grouped.transpose(order)).reshape(groups, -1, per_group * int(np.prod(kernel)))


def gemm_patches(node: onnx.NodeProto, weight_shape: tuple[int, ...], x: np.ndarray) -> np.ndarray:
    rows = x.T if attribute(node, "transA", 0) else x
    return rows.reshape(1, -1, rows.shape[-1])


def matmul_patches(node: onnx.NodeProto, weight_shape: tuple[int, ...], x: np.ndarray) -> np.ndarray:
    return x.reshape(1, -1, x.shape[-1])


PATCH_LAYOUTS: dict[str, PatchLayout] = {"Conv": conv_patches, "Gemm": gemm_patches, "MatMul": matmul_patches}
