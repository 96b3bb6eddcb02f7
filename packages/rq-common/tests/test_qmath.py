import numpy as np
import pytest

from rq_common import CalibrationDataError, FormatError, QParams, QuantSpec, compute_qparams, get_preset, quantize
from rq_common.format import make_qdq
from rq_common.qmath import is_power_of_two, pow2_ceil, pow2_ceil_exponent


def test_pow2_ceil_is_exact_at_and_around_powers():
    k = np.arange(-60, 60)
    exact = np.ldexp(1.0, k)
    np.testing.assert_array_equal(pow2_ceil_exponent(exact), k)
    np.testing.assert_array_equal(pow2_ceil_exponent(np.nextafter(exact, np.inf)), k + 1)
    np.testing.assert_array_equal(pow2_ceil_exponent(np.nextafter(exact, 0)), k)
    np.testing.assert_array_equal(pow2_ceil(np.array([0.3, 1.0, 5.0])), [0.5, 1.0, 8.0])
    assert list(is_power_of_two([0.25, 0.3, 1.0, 3.0])) == [True, False, True, False]


@pytest.mark.parametrize("preset", ["npu_cnn", "npu_transformer", "cpu"])
def test_symmetric_ranges_never_clip_their_ends(preset, rng):
    spec = get_preset(preset).weight.replace(granularity="per_tensor", axis=None)
    for absmax in rng.uniform(1e-3, 1e3, 50):
        qp = compute_qparams(-absmax, absmax, spec)
        steps = quantize(np.array([-absmax, absmax]), qp).astype(int) - int(qp.zero_point)
        if spec.power_of_two:  # rounded up to 2^k: at most 127 steps, more than half of them used
            assert -127 <= steps[0] < -63 and 63 < steps[1] <= 127
        else:
            assert steps.tolist() == [-127, 127]


def test_uint8_zero_point_128_uses_127_steps_each_side():
    qp = compute_qparams(-1.0, 1.0, QuantSpec(dtype="uint8"))  # symmetric: zero point 128
    np.testing.assert_array_equal(quantize(np.array([-1.0, 0.0, 1.0]), qp), [1, 128, 255])


def test_non_finite_or_inverted_ranges_are_errors():
    spec = QuantSpec()
    for rmin, rmax in ((np.nan, 1.0), (-np.inf, 1.0), (0.0, np.inf)):
        with pytest.raises(CalibrationDataError, match="not finite"):
            compute_qparams(rmin, rmax, spec)
    with pytest.raises(CalibrationDataError, match="above its maximum"):
        compute_qparams(2.0, 1.0, spec)


def test_qparams_reject_zero_points_outside_the_dtype():
    with pytest.raises(ValueError, match="outside uint8"):
        QParams(np.float32(0.1), 300, QuantSpec(dtype="uint8", symmetric=False))


def test_builder_refuses_to_overwrite_a_different_initializer():
    from onnx import helper

    graph = helper.make_graph([], "g", [], [])
    spec = QuantSpec(dtype="uint8", symmetric=False)
    make_qdq("t", QParams(np.float32(0.1), 3, spec)).add_to(graph)
    make_qdq("t", QParams(np.float32(0.1), 3, spec)).add_to(graph)  # same values: shared, fine
    with pytest.raises(FormatError, match="already exists with another value"):
        make_qdq("t", QParams(np.float32(0.2), 3, spec)).add_to(graph)


def test_fold_batchnorm_by_hand():
    from rq_common.qmath import fold_batchnorm

    # factor = 3 / sqrt(3 + 1) = 1.5; b' = (4 - 1) * 1.5 + 0.5 = 5; second channel: factor 1, no bias shift
    w, b = fold_batchnorm(np.array([[2.0], [1.0]]), np.array([4.0, 0.0]), [3.0, 1.0], [0.5, 0.0], [1.0, 0.0], [3.0, 0.0], 1.0)
    np.testing.assert_array_equal(w, np.float32([[3.0], [1.0]]))
    np.testing.assert_array_equal(b, np.float32([5.0, 0.0]))
    w_t, _ = fold_batchnorm(np.ones((1, 2, 1)), None, [3.0, 1.0], [0, 0], [0, 0], [3.0, 0.0], 1.0, channel_axis=1)
    np.testing.assert_array_equal(w_t, np.float32([[[1.5], [1.0]]]))
