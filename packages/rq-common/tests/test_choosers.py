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


def naive_kl(hist, i, nq):
    """Straight loops, as the algorithm is usually described; the reference for kl_divergence_at."""
    p = [float(v) for v in hist[:i]]
    p[-1] += float(sum(hist[i:]))
    q = [0.0] * i
    for j in range(nq):
        start, stop = (j * i) // nq, ((j + 1) * i) // nq
        total = float(sum(hist[start:stop]))
        nonzero = [k for k in range(start, stop) if p[k] > 0]
        for k in nonzero:
            q[k] = total / len(nonzero)
    ps, qs = sum(p), sum(q)
    return sum((pk / ps) * math.log((pk / ps) / max(qk / qs, 1e-12)) for pk, qk in zip(p, q) if pk > 0)


def test_kl_divergence_matches_naive_loops(rng):
    hist = rng.integers(0, 50, 700)
    hist[300:310] = 0  # empty bins inside, and a candidate whose last bin is empty but gets outliers
    hist[:40:3] = 0
    candidates = np.array([128, 200, 305, 306, 511, 699, 700])
    fast = kl_divergences(hist, candidates, 128)
    for i, value in zip(candidates, fast):
        assert value == pytest.approx(naive_kl(hist, i, 128), rel=1e-9, abs=1e-12)


def test_entropy_clips_outliers_and_keeps_small_ranges(rng):
    x = np.concatenate([rng.standard_normal(200_000), [60.0, -55.0]]).astype(np.float32)
    calibrator = Calibrator(QuantSpec(dtype="int8"), "entropy")
    calibrator.update(x)
    threshold = float(calibrator.qparams().scale) * 127
    assert 2.0 < threshold < 20.0
    tiny = HistogramObserver(num_bins=64)
    tiny.update(np.array([0.1, -0.2, 0.3]))
    assert EntropyChooser().threshold(tiny) >= 0.3  # fewer used bins than levels: keep the range


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
