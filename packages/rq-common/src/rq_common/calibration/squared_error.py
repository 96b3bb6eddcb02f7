"""Expected squared quantization error of a histogram, computed in closed form.

Each bin is taken as uniformly filled between its edges. Inside the representable range the error
of rounding to a grid of step s is a sawtooth whose integral has a closed form; beyond the range
the error is the distance to the clip value. Summing per-bin integrals gives the mean squared
error of fake_quantize over the data without storing a single value.
"""

from __future__ import annotations

import numpy as np


def _sawtooth_integral(x: np.ndarray, step: np.ndarray) -> np.ndarray:
    """Integral from -step/2 to x of (t - step * round(t / step))^2 dt."""
    u = x + step / 2
    periods = np.floor(u / step)
    r = u - periods * step - step / 2
    return periods * step**3 / 12 + (r**3 + (step / 2) ** 3) / 3


def expected_squared_error(
    counts: np.ndarray,
    edges: np.ndarray,
    scale: np.ndarray,
    zero_point: np.ndarray,
    qmin: int,
    qmax: int,
) -> np.ndarray:
    """Mean squared error of fake quantization for each candidate (scale, zero point).

    ``scale`` and ``zero_point`` are 1-d arrays of candidates; the result has one value each.
    """
    keep = counts > 0
    counts = counts[keep].astype(np.float64)
    a = edges[:-1][keep][None, :]
    b = edges[1:][keep][None, :]
    s = np.asarray(scale, np.float64).reshape(-1, 1)
    z = np.asarray(zero_point, np.float64).reshape(-1, 1)
    low, high = (qmin - z) * s, (qmax - z) * s

    below_hi = np.minimum(b, low)
    below = np.where(below_hi > a, ((below_hi - low) ** 3 - (a - low) ** 3) / 3, 0.0)
    above_lo = np.maximum(a, high)
    above = np.where(b > above_lo, ((b - high) ** 3 - (above_lo - high) ** 3) / 3, 0.0)
    mid_a, mid_b = np.maximum(a, low), np.minimum(b, high)
    middle = np.where(mid_b > mid_a, _sawtooth_integral(mid_b, s) - _sawtooth_integral(mid_a, s), 0.0)

    per_value = (below + above + middle) / (b - a)
    return (per_value * counts).sum(axis=1) / counts.sum()
