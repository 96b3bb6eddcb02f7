import math

import numpy as np
import pytest

from rq_common import (
    Calibrator,
    HistogramObserver,
    QuantSpec,
    SpecError,
    compute_qparams,
    fake_quantize,
    get_preset,
    make_chooser,
)
from rq_common.calibration import EntropyChooser, expected_squared_error, pow2_candidates
from rq_common.calibration.entropy import kl_divergences

HEAVY_TAILED = {
    "student_t2": lambda rng, n: rng.standard_t(2, n),
    "student_t3_shifted": lambda rng, n: rng.standard_t(3, n) * 0.7 + 0.3,
    "laplace": lambda rng, n: rng.laplace(0, 0.5, n),
    "cauchy_clipped": lambda rng, n: np.clip(rng.standard_cauchy(n), -500, 500),
    "relu_of_t": lambda rng, n: np.maximum(rng.standard_t(2.5, n), 0),
}
POT_SPECS = {"npu_cnn_activation": get_preset("npu_cnn").activation, "npu_cnn_weight": get_preset("npu_cnn").weight}


def true_mse(x: np.ndarray, qp) -> float:
    return float(np.mean((fake_quantize(x, qp).astype(np.float64) - x.astype(np.float64)) ** 2))


@pytest.mark.parametrize("spec_name", list(POT_SPECS))
@pytest.mark.parametrize("dist", list(HEAVY_TAILED))
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pot_minmse_equals_brute_force_over_stored_values(spec_name, dist, seed):
    spec = POT_SPECS[spec_name]
    rng = np.random.default_rng(seed)
    chooser = make_chooser("pot_minmse")
    calibrator = Calibrator(spec, chooser)
    stored = []
    for _ in range(20):
        batch = HEAVY_TAILED[dist](rng, 5000).astype(np.float32)
        calibrator.update(batch)
        stored.append(batch)  # kept by the test only, for the brute force
    x = np.concatenate(stored)
    candidates = pow2_candidates(float(x.min()), float(x.max()), spec, chooser.search_below, chooser.search_above)
    errors = [true_mse(x, c) for c in candidates]
    brute = candidates[int(np.argmin(errors))]
    chosen = calibrator.qparams()
    assert chosen == brute, (chosen, brute, errors)
    assert isinstance(calibrator.observer, HistogramObserver)


def test_expected_squared_error_matches_stored_values(rng):
    x = rng.standard_t(3, 200_000).astype(np.float32)
    obs = HistogramObserver()
    obs.update(x)
    spec = QuantSpec(dtype="uint8", symmetric=False)
    for fraction in (1.0, 0.5, 0.2, 0.05):
        qp = compute_qparams(x.min() * fraction, x.max() * fraction, spec)
        estimate = expected_squared_error(obs.counts, obs.bin_edges(), qp.scale[None], qp.zero_point[None], spec.qmin, spec.qmax)[
            0
        ]
        assert estimate == pytest.approx(true_mse(x, qp), rel=0.03)


@pytest.mark.parametrize("symmetric", [True, False])
def test_mse_chooser_is_near_the_best_candidate(rng, symmetric):
    x = (rng.standard_t(2.5, 100_000) + 0.5).astype(np.float32)
    spec = QuantSpec(dtype="int8", symmetric=symmetric)
    calibrator = Calibrator(spec, "mse")
    calibrator.update(x)
    chosen = calibrator.qparams()
    fractions = np.linspace(1.0, 0.05, 128)
    best = min(true_mse(x, compute_qparams(x.min() * f, x.max() * f, spec)) for f in fractions)
    assert true_mse(x, chosen) <= best * 1.02
    assert true_mse(x, chosen) < true_mse(x, compute_qparams(x.min(), x.max(), spec))


def test_percentile_matches_numpy(rng):
    x = rng.standard_normal(400_000).astype(np.float32)
    for symmetric, p in ((True, 99.9), (False, 99.0)):
        calibrator = Calibrator(QuantSpec(dtype="int8", symmetric=symmetric), make_chooser("percentile", percentile=p))
        for part in np.split(x, 8):
            calibrator.update(part)
        width = calibrator.observer.bin_width
        qp = calibrator.qparams()
        if symmetric:
            expected = np.percentile(np.abs(x), p)
            assert qp.scale * 127 == pytest.approx(expected, abs=width)
        else:
            lo, hi = np.percentile(x, [(100 - p) / 2, 100 - (100 - p) / 2])
            assert float(qp.scale) * 255 == pytest.approx(hi - lo, abs=2 * width)


def naive_kl(p, q) -> float:
    """KL(P || Q) of two unnormalized lists, as scipy.stats.entropy computes it (Q floored at 1e-12)."""
    ps, qs = sum(p), sum(q)
    return sum((pk / ps) * math.log((pk / ps) / max(qk / qs, 1e-12)) for pk, qk in zip(p, q) if pk > 0)


def naive_p_q(hist, start, stop, levels):
    """P and Q of the grid hist[start:stop], built bin by bin: P gets the outliers in its end bins,
    Q spreads each of ``levels`` groups' in-grid mass over the group's bins where P is non-zero."""
    p = [float(v) for v in hist[start:stop]]
    p[0] += float(sum(hist[:start]))
    p[-1] += float(sum(hist[stop:]))
    q = [0.0] * len(p)
    for j in range(levels):
        lo, hi = (j * len(p)) // levels, ((j + 1) * len(p)) // levels
        group = float(sum(hist[start + lo : start + hi]))
        nonzero = [k for k in range(lo, hi) if p[k] > 0]
        for k in nonzero:
            q[k] = group / len(nonzero)
    return p, q


def capped_zero_bin(counts):
    """TensorRT's bins[0] = bins[1], on the signed histogram: the bin holding 0 is no larger than
    its larger neighbour."""
    c = [float(v) for v in counts]
    half = len(c) // 2
    c[half] = min(c[half], max(c[half - 1], c[half + 1]))
    return c


def reference_symmetric_threshold(observer, levels):
    """TensorRT's loop on |x|: every threshold i that keeps ``levels`` bins of data, the last
    minimum of KL(P || Q)."""
    c = capped_zero_bin(observer.counts)
    half = len(c) // 2
    hist = [c[half + k] + c[half - 1 - k] for k in range(half)]
    first = min(k for k in range(half) if hist[k] > 0)
    used = max(k for k in range(half) if hist[k] > 0) + 1
    best, best_i = math.inf, used
    for i in range(first + levels, used + 1):
        kl = naive_kl(*naive_p_q(hist[:used], 0, i, levels))
        if kl <= best:
            best, best_i = kl, i
    return best_i * observer.bin_width


def reference_asymmetric_window(observer, levels):
    """ONNX Runtime's window [max(lo, -t), min(hi, t)] on the signed histogram, KL over the grid
    that includes 0, for every t keeping ``levels`` bins of data; the last minimum."""
    c = capped_zero_bin(observer.counts)
    half = len(c) // 2
    occupied = [k for k in range(len(c)) if c[k] > 0]
    first, last = occupied[0], occupied[-1] + 1
    best, best_t = math.inf, None
    for t in range(1, max(half - first, last - half) + 1):
        clip_lo, clip_hi = max(first, half - t), min(last, half + t)
        if clip_hi - clip_lo < levels:
            continue
        kl = naive_kl(*naive_p_q(c, min(clip_lo, half), max(clip_hi, half), levels))
        if kl <= best:
            best, best_t = kl, t
    lo, hi = observer.range()
    t = best_t * observer.bin_width
    return max(lo, -t), min(hi, t)


REFERENCE_DATA = {
    "student_t3": lambda rng: rng.standard_t(3, 40_000),
    "relu_of_normal": lambda rng: np.maximum(rng.standard_normal(40_000), 0),
    "shifted_laplace": lambda rng: rng.laplace(0.8, 0.4, 40_000),
    "offset_normal": lambda rng: 0.5 + 0.05 * rng.standard_normal(40_000),
    "two_bumps": lambda rng: np.concatenate([rng.normal(-1, 0.1, 30_000), rng.normal(3, 0.5, 10_000)]),
}


@pytest.mark.parametrize("data", list(REFERENCE_DATA))
def test_entropy_matches_plain_loops(rng, data):
    observer = HistogramObserver(num_bins=512)
    observer.update(REFERENCE_DATA[data](rng))
    every = EntropyChooser(max_candidates=10**6)
    assert every.threshold(observer, 32) == pytest.approx(reference_symmetric_threshold(observer, 32), rel=1e-12)
    assert every.window(observer, 64) == pytest.approx(reference_asymmetric_window(observer, 64), rel=1e-12)


def test_kl_divergence_matches_naive_loops(rng):
    hist = rng.integers(0, 50, 700)
    hist[300:310] = 0  # empty bins inside, and grids whose end bins are empty but get outliers
    hist[:40:3] = 0
    starts = np.array([0, 0, 0, 3, 9, 40, 300, 0, 171])
    stops = np.array([128, 200, 305, 306, 511, 699, 700, 700, 310])
    fast = kl_divergences(hist, starts, stops, 128)
    for start, stop, value in zip(starts, stops, fast):
        assert value == pytest.approx(naive_kl(*naive_p_q(hist, start, stop, 128)), rel=1e-9, abs=1e-12)


def test_entropy_clips_outliers_and_keeps_small_ranges(rng):
    x = np.concatenate([rng.standard_normal(200_000), [60.0, -55.0]]).astype(np.float32)
    calibrator = Calibrator(QuantSpec(dtype="int8"), "entropy")
    calibrator.update(x)
    threshold = float(calibrator.qparams().scale) * 127
    assert 2.0 < threshold < 20.0
    tiny = HistogramObserver(num_bins=64)
    tiny.update(np.array([0.1, -0.2, 0.3]))
    assert EntropyChooser().threshold(tiny) >= 0.3  # fewer used bins than levels: keep the range
    assert EntropyChooser().window(tiny) == (pytest.approx(-0.2), pytest.approx(0.3))


# The collapses found on zoo models (docs/calibration.md), each as a small synthetic tensor, on the
# cpu preset's uint8 activations. Before the fix, entropy chose the first range, minmax the second:
COLLAPSES = {
    # mtcnn_onet's box regression output, in [0.21, 0.79]: [0, 0.21] (every value clipped to one)
    "offset": lambda rng: (0.5 + 0.08 * rng.standard_normal(100_000)).clip(0.2, 0.8),
    # ReLU outputs, half exact zeros: [0, 1.48] of [0, 4.3]
    "relu_zeros": lambda rng: np.maximum(rng.standard_normal(200_000), 0),
    # ddddocr_det's text probability map, 98 % near 0: [0, 0.074] of [0, 1]
    "probability_map": lambda rng: 1 / (1 + np.exp(-np.concatenate([rng.normal(-9, 1.5, 196_000), rng.normal(4, 1.5, 4_000)]))),
}


@pytest.mark.parametrize("pattern", list(COLLAPSES))
def test_entropy_does_not_collapse_where_minmax_keeps(rng, pattern):
    x = COLLAPSES[pattern](rng).astype(np.float32)
    spec = get_preset("cpu").activation
    errors = {}
    for method in ("entropy", "minmax"):
        calibrator = Calibrator(spec, method)
        calibrator.update(x)
        errors[method] = true_mse(x, calibrator.qparams())
        if method == "entropy":
            assert float(calibrator.qparams().scale) * 255 > 0.9 * float(x.max())
    assert errors["entropy"] <= 1.1 * errors["minmax"], errors


def test_entropy_levels_follow_the_spec(rng):
    """uint8 asymmetric has 256 levels over its grid, int8 symmetric 128 per sign: with the levels
    given explicitly the choice is the same."""
    x = rng.standard_t(3, 50_000)
    observer = HistogramObserver()
    observer.update(x)
    uint8 = get_preset("cpu").activation
    assert EntropyChooser().choose(observer, uint8) == EntropyChooser(num_quantized_bins=256).choose(observer, uint8)
    int8 = QuantSpec(dtype="int8")
    assert EntropyChooser().choose(observer, int8) == EntropyChooser(num_quantized_bins=128).choose(observer, int8)


def test_pot_minmse_of_an_all_zero_tensor_is_scale_one():
    cal = Calibrator(get_preset("npu_cnn").activation, "pot_minmse")
    cal.update(np.zeros(100))
    assert float(cal.qparams().scale) == 1.0


def test_minmax_and_nonoverflow():
    cal = Calibrator(get_preset("npu_cnn").activation, "pot_nonoverflow")
    cal.update(np.array([-1.0, 3.9]))
    assert float(cal.qparams().scale) == 2.0**-5  # 3.9 / 127 = 0.0307 -> 2^-5
    per_channel = Calibrator(get_preset("cpu").weight, "minmax")
    per_channel.update(np.array([[1.0, -2.0], [0.5, 0.25]]))
    np.testing.assert_array_equal(per_channel.qparams().scale, np.float32([2 / 127, 0.5 / 127]))


def test_method_and_spec_mismatch_is_an_error():
    with pytest.raises(SpecError, match="power-of-two"):
        Calibrator(QuantSpec(), "pot_minmse")
    with pytest.raises(SpecError, match="float scales"):
        Calibrator(get_preset("npu_cnn").activation, "mse")
    with pytest.raises(SpecError, match="per-channel"):
        Calibrator(get_preset("cpu").weight, "entropy")
    with pytest.raises(SpecError, match="unknown calibration method"):
        make_chooser("kl")


def test_calibrators_merge_like_one_stream(rng):
    parts = [rng.standard_t(3, 1000) for _ in range(6)]
    spec = get_preset("npu_cnn").activation
    a, b, whole = (Calibrator(spec, "pot_minmse") for _ in range(3))
    for i, p in enumerate(parts):
        (a if i % 2 else b).update(p)
        whole.update(p)
    assert a.merge(b).qparams() == whole.qparams()
