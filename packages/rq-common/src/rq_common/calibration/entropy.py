"""Entropy (KL divergence) calibration: TensorRT's algorithm, on the grid the spec will use.

TensorRT (and ONNX Runtime's variant of it) picks a clipping threshold t from a histogram: for
each candidate t, P is the histogram inside the clip with the clipped mass added to the end bins,
and Q is the same bins merged into as many groups as the spec has levels, each group's mass spread
evenly over its non-empty bins. The t with the smallest KL(P || Q) wins (the widest on ties).

Three details decide whether this keeps a trained model or collapses it (docs/calibration.md has
the measurements):

* Levels and grid. A symmetric spec has ``qmax + 1`` (128) levels per sign: KL is taken on the
  |x| histogram, as TensorRT does. An asymmetric (uint8) spec maps [min(rmin, 0), max(rmax, 0)]
  onto ``qmax - qmin + 1`` (256) levels, so its KL is taken on the signed histogram over that
  grid, the clip being ONNX Runtime's window [max(lo, -t), min(hi, t)].
* The tightest candidate keeps ``levels`` histogram bins *of the data* inside the clip. TensorRT
  starts at 128 of 2048 bins, which assumes data that starts at 0. For a tensor living in
  [0.2, 0.8] a clip just above 0.2 puts nearly all mass into P's last bin, where Q (the same
  few bins, normalized) agrees with it: KL is ~0 and the range collapses to a point.
* The bin holding 0 is capped at its neighbours' count (TensorRT's ``bins[0] = bins[1]``). A
  ReLU's exact zeros cost nothing (0 is a level), but to KL they are a spike that every wider
  group smears, so the spike alone drives t down to the tightest candidate.

Every candidate is evaluated at once from prefix sums: within a group Q is constant, so
sum(P log Q) over the group is (group mass) x log(group average), and sum(P log P) is a prefix
sum of h log h. The cost is O(candidates x levels), not O(candidates x bins).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rq_common.calibration.base import RangeChooser, register_chooser
from rq_common.observers import HistogramObserver
from rq_common.qmath.qparams import QParams, compute_qparams
from rq_common.spec.methods import CalibrationMethod
from rq_common.spec.quant_spec import QuantSpec

EMPTY_Q = 1e-12  # stands in for 0 in the normalized Q where P has mass: a heavy, finite penalty


def _xlogx(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    return np.where(v > 0, v * np.log(np.where(v > 0, v, 1.0)), 0.0)


def kl_divergences(hist: np.ndarray, starts: np.ndarray, stops: np.ndarray, levels: int) -> np.ndarray:
    """KL(P || Q) for each grid ``hist[start:stop]`` (bin indices, ``stop - start >= levels``).

    P: the grid's bins, the mass left of it added to its first bin and the mass right of it to its
    last. Q: the grid's own bins (outliers excluded) merged into ``levels`` groups, each group's
    mass spread evenly over the bins where P is non-zero, normalized on its own.
    """
    h = hist.astype(np.float64)
    total = h.sum()
    start = np.asarray(starts, dtype=np.int64)
    stop = np.asarray(stops, dtype=np.int64)
    mass = np.concatenate([[0.0], np.cumsum(h)])
    nonzero = np.concatenate([[0], np.cumsum(h > 0)])
    h_log_h = np.concatenate([[0.0], np.cumsum(_xlogx(h))])

    left, right = mass[start], total - mass[stop]
    inner = h_log_h[stop - 1] - h_log_h[start + 1]  # the bins between P's first and last
    p_log_p = (_xlogx(h[start] + left) + inner + _xlogx(h[stop - 1] + right)) / total - np.log(total)

    bounds = start[:, None] + (np.arange(levels + 1)[None, :] * (stop - start)[:, None]) // levels
    group_mass = mass[bounds[:, 1:]] - mass[bounds[:, :-1]]
    group_nonzero = (nonzero[bounds[:, 1:]] - nonzero[bounds[:, :-1]]).astype(np.float64)
    group_nonzero[:, 0] += (h[start] == 0) & (left > 0)  # the outliers make P's end bins non-zero
    group_nonzero[:, -1] += (h[stop - 1] == 0) & (right > 0)
    p_mass = group_mass.copy()
    p_mass[:, 0] += left
    p_mass[:, -1] += right
    q_total = np.maximum(mass[stop] - mass[start], EMPTY_Q)[:, None]
    average = np.divide(group_mass, group_nonzero, out=np.zeros_like(group_mass), where=group_nonzero > 0)
    log_q = np.log(np.maximum(average / q_total, EMPTY_Q))
    p_log_q = np.where(p_mass > 0, p_mass * log_q, 0.0).sum(axis=1) / total
    return p_log_p - p_log_q


def _widest_argmin(values: np.ndarray) -> int:
    """Index of the last minimum: on ties the widest clip, as TensorRT's calibrator breaks them."""
    return int(values.size - 1 - np.argmin(values[::-1]))


@register_chooser
@dataclass(frozen=True)
class EntropyChooser(RangeChooser):
    """KL-optimal clip; ``num_quantized_bins`` (None: the spec's levels, 128 per sign for int8
    symmetric, 256 for uint8) are Q's groups; ``max_bins`` caps the |x| histogram by exact
    merging of bin pairs (TensorRT uses 2048), ``max_candidates`` the clips tried."""

    num_quantized_bins: int | None = None
    max_bins: int = 2048
    max_candidates: int = 256  # clips tried, evenly spaced (the widest always included)
    method = CalibrationMethod.ENTROPY

    def _signed_counts(self, observer: HistogramObserver) -> tuple[np.ndarray, float]:
        """The observer's counts, bin pairs merged until each sign has at most ``max_bins``, and
        the bin holding 0 capped at its larger neighbour (TensorRT's ``bins[0] = bins[1]``)."""
        counts, width = observer.counts.astype(np.float64), observer.bin_width
        while counts.size // 2 > self.max_bins and counts.size % 4 == 0:
            counts = counts.reshape(-1, 2).sum(axis=1)  # pairs never straddle 0: half is even
            width *= 2
        half = counts.size // 2
        counts[half] = min(counts[half], max(counts[half - 1], counts[half + 1]))
        return counts, width

    def _candidates(self, sizes: np.ndarray, levels: int) -> np.ndarray:
        """Indices into ``sizes`` (the data inside each clip, in bins, growing) worth trying: those
        keeping at least ``levels`` bins of data, thinned to ``max_candidates``, the last kept."""
        usable = np.flatnonzero(sizes >= levels)
        if usable.size == 0:
            return np.array([sizes.size - 1])
        stride = -(-usable.size // self.max_candidates)
        return np.unique(np.append(usable[::stride], sizes.size - 1))

    def threshold(self, observer: HistogramObserver, levels: int = 128) -> float:
        """TensorRT's symmetric threshold on the |x| histogram, ``levels`` groups per sign."""
        counts, width = self._signed_counts(observer)
        half = counts.size // 2
        hist = counts[half:] + counts[:half][::-1]
        occupied = np.flatnonzero(hist)
        if occupied.size == 0:
            return width
        used = int(occupied[-1]) + 1
        stops = np.arange(1, used + 1)
        tried = self._candidates(stops - occupied[0], levels)
        if stops[tried[0]] - occupied[0] < levels:
            return used * width  # fewer bins of data than levels: nothing to gain by clipping
        divergences = kl_divergences(hist[:used], np.zeros(tried.size, np.int64), stops[tried], levels)
        return float(stops[tried[_widest_argmin(divergences)]]) * width

    def window(self, observer: HistogramObserver, levels: int = 256) -> tuple[float, float]:
        """The KL-optimal [max(lo, -t), min(hi, t)] for an asymmetric spec: KL on the signed
        histogram over the grid [min(clip low, 0), max(clip high, 0)] with ``levels`` groups."""
        lo, hi = observer.range()
        counts, width = self._signed_counts(observer)
        half = counts.size // 2
        occupied = np.flatnonzero(counts)
        if occupied.size == 0:
            return lo, hi
        first, last = int(occupied[0]), int(occupied[-1]) + 1
        reach = np.arange(1, max(half - first, last - half) + 1)  # t in bins
        clip_lo, clip_hi = np.maximum(first, half - reach), np.minimum(last, half + reach)
        tried = self._candidates(clip_hi - clip_lo, levels)
        if clip_hi[tried[0]] - clip_lo[tried[0]] < levels:
            return lo, hi
        starts, stops = np.minimum(clip_lo, half)[tried], np.maximum(clip_hi, half)[tried]
        t = float(reach[tried[_widest_argmin(kl_divergences(counts, starts, stops, levels))]]) * width
        return max(lo, -t), min(hi, t)

    def choose(self, observer: HistogramObserver, spec: QuantSpec) -> QParams:
        self._check_spec(spec)
        if spec.symmetric:
            lo, hi = observer.range()
            t = self.threshold(observer, self.num_quantized_bins or spec.qmax - spec.fixed_zero_point + 1)
            return compute_qparams(max(lo, -t), min(hi, t), spec)
        rmin, rmax = self.window(observer, self.num_quantized_bins or spec.qmax - spec.qmin + 1)
        return compute_qparams(rmin, rmax, spec)
