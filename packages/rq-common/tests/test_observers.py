import numpy as np
import pytest

from rq_common import CalibrationDataError, HistogramObserver, MinMaxObserver, MovingAverageMinMaxObserver, NonFinitePolicy


def batches(rng, count, size=257):
    """Batches whose spread grows, so the histogram must widen several times."""
    return [rng.standard_t(2, size).astype(np.float32) * (1 + i) for i in range(count)]


def test_minmax_per_tensor_and_per_channel(rng):
    data = rng.standard_normal((8, 3, 5)).astype(np.float32)
    obs = MinMaxObserver()
    for b in data:
        obs.update(b)
    assert obs.range() == (data.min(), data.max())
    per_channel = MinMaxObserver(axis=1)
    for b in data:
        per_channel.update(b[None])
    np.testing.assert_array_equal(per_channel.min, data.min(axis=(0, 2)))
    np.testing.assert_array_equal(per_channel.max, data.max(axis=(0, 2)))


def test_moving_average_follows_the_formula():
    obs = MovingAverageMinMaxObserver(averaging_constant=0.5)
    obs.update(np.array([-1.0, 1.0]))
    obs.update(np.array([-3.0, 5.0]))
    assert (float(obs.min), float(obs.max)) == (-2.0, 3.0)  # -1 + 0.5 * (-3 - -1), 1 + 0.5 * (5 - 1)
    other = MovingAverageMinMaxObserver(averaging_constant=0.5)
    other.update(np.array([0.0, 1.0]))
    obs.merge(other)
    assert (float(obs.min), float(obs.max)) == (-1.0, 2.0)


def test_histogram_batches_equal_one_pass(rng):
    parts = batches(rng, 40)
    streamed = HistogramObserver(num_bins=512)
    for b in parts:
        streamed.update(b)
    whole = HistogramObserver(num_bins=512)
    whole.update(np.concatenate(parts))
    assert streamed.exponent == whole.exponent
    np.testing.assert_array_equal(streamed.counts, whole.counts)
    assert streamed.range() == whole.range()
    # independent truth: numpy's histogram over the same edges
    expected, _ = np.histogram(np.concatenate(parts).astype(np.float64), bins=whole.bin_edges())
    np.testing.assert_array_equal(whole.counts, expected)


def test_histogram_merge_across_processes_equals_one_pass(rng):
    parts = batches(rng, 30)
    shards = [HistogramObserver(num_bins=256) for _ in range(3)]
    for i, b in enumerate(parts):
        shards[i % 3].update(b)
    merged = HistogramObserver(num_bins=256)
    for shard in reversed(shards):
        restored = HistogramObserver(num_bins=256)
        restored.load_state_dict(shard.state_dict())  # as if sent from another process
        merged.merge(restored)
    whole = HistogramObserver(num_bins=256)
    whole.update(np.concatenate(parts))
    np.testing.assert_array_equal(merged.counts, whole.counts)
    assert merged.total == sum(b.size for b in parts)


def test_minmax_merge(rng):
    a, b = MinMaxObserver(), MinMaxObserver()
    x, y = rng.standard_normal(100), rng.standard_normal(100) * 3
    a.update(x)
    b.update(y)
    a.merge(b)
    assert a.range() == (min(x.min(), y.min()), max(x.max(), y.max()))


@pytest.mark.parametrize("make", [MinMaxObserver, MovingAverageMinMaxObserver, HistogramObserver, lambda: MinMaxObserver(axis=0)])
def test_state_size_does_not_grow(rng, make):
    few, many = make(), make()
    for i in range(10):
        few.update(rng.standard_normal((4, 16)) * (i + 1))
    for i in range(10_000):
        many.update(rng.standard_normal((4, 16)) * (1 + i % 97))
    assert few.state_nbytes == many.state_nbytes
    assert {k: np.shape(v) for k, v in few.state_dict().items()} == {k: np.shape(v) for k, v in many.state_dict().items()}


@pytest.mark.parametrize("make", [MinMaxObserver, HistogramObserver, lambda: MinMaxObserver(axis=0)])
def test_bad_calibration_data_is_named(make):
    obs = make()
    with pytest.raises(CalibrationDataError, match="NaN"):
        obs.update(np.array([[1.0, np.nan]]))
    with pytest.raises(CalibrationDataError, match="infinite"):
        obs.update(np.array([[1.0, np.inf]]))
    with pytest.raises(CalibrationDataError, match="empty"):
        obs.update(np.zeros((0, 3)))
    with pytest.raises(CalibrationDataError, match="no calibration data"):
        make().range()


def test_ignore_inf_skips_infinities():
    obs = HistogramObserver(nonfinite=NonFinitePolicy.IGNORE_INF)
    obs.update(np.array([-np.inf, -2.0, 3.0]))
    assert obs.range() == (-2.0, 3.0) and obs.total == 2
    with pytest.raises(CalibrationDataError, match="NaN"):
        obs.update(np.array([np.nan]))


def test_all_zero_first_batch_keeps_fine_bins_for_small_values():
    obs = HistogramObserver(num_bins=64)
    obs.update(np.zeros(10))  # a dead ReLU on the first batch
    obs.update(np.array([0.01, 0.02]))
    assert obs.bin_width == 2.0**-10  # smallest 2^e with 0.02 < 32 bins * 2^e


def test_all_zero_batch_then_growth():
    obs = HistogramObserver(num_bins=64)
    obs.update(np.zeros(10))
    obs.update(np.array([1e6, -5.0]))
    whole = HistogramObserver(num_bins=64)
    whole.update(np.concatenate([np.zeros(10), [1e6, -5.0]]))
    np.testing.assert_array_equal(obs.counts, whole.counts)


def test_scale_groups_union_and_deterministic_roots():
    from rq_common.calibration import ScaleGroups

    groups = ScaleGroups()
    for key in ("a", "b", "c", "d", "e"):
        groups.add(key)
    groups.union("d", "b")
    groups.union("e", "d")
    groups.union("c", "a")
    assert groups.members() == {"a": ["a", "c"], "b": ["b", "d", "e"]}  # the earliest member names the group
    assert groups.find("e") == "b"
