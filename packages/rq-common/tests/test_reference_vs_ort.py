"""numpy quantize/dequantize against ONNX Runtime's QuantizeLinear/DequantizeLinear, bit for bit."""

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from rq_common import QParams, QuantSpec, dequantize, fake_quantize, quantize

from conftest import make_model, qdq_model, run_ort

N = 100_000
DTYPES = {"int8": (TensorProto.INT8, 17), "uint8": (TensorProto.UINT8, 17), "int16": (TensorProto.INT16, 21)}


def hard_values(rng, scale: float, zero_point: int, spec: QuantSpec) -> np.ndarray:
    """10^5 values: exact ties (k + 0.5) * scale, values far beyond the range, random ones, inf."""
    span = spec.qmax - spec.qmin
    ties = (rng.integers(spec.qmin - zero_point - 20, spec.qmax - zero_point + 20, N // 2) + 0.5) * scale
    wide = rng.uniform(-2, 2, N // 2 - 4) * span * scale
    return np.concatenate([ties, wide, [np.inf, -np.inf, 0.0, -0.0]]).astype(np.float32)


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("scale", [0.5, 0.0625, 0.1, 0.0372, 1 / 3, 3.7e-3])
def test_quantize_matches_ort(rng, dtype, scale):
    onnx_type, opset = DTYPES[dtype]
    spec = QuantSpec(dtype=dtype, symmetric=False)
    zero_point = {"int8": -3, "uint8": 131, "int16": 17}[dtype]
    qp = QParams(np.float32(scale), zero_point, spec)
    x = hard_values(rng, scale, zero_point, spec)
    q_ort, y_ort = run_ort(qdq_model(onnx_type, scale, zero_point, opset=opset), {"x": x})
    q = quantize(x, qp)
    assert q.dtype == q_ort.dtype
    np.testing.assert_array_equal(q, q_ort)
    np.testing.assert_array_equal(dequantize(q, qp), y_ort)
    np.testing.assert_array_equal(fake_quantize(x, qp), y_ort)
    # the test data really contains saturated values, and exact ties where the scale allows them
    if scale in (0.5, 0.0625):
        scaled = x[np.isfinite(x)] / np.float32(scale)
        assert np.sum(np.abs(scaled - np.rint(scaled)) == 0.5) > N // 10
    assert np.sum(q == spec.qmax) > 100 and np.sum(q == spec.qmin) > 100


def test_nan_matches_ort():
    x = np.array([np.nan] * 37, np.float32)
    for dtype, (onnx_type, opset) in DTYPES.items():
        qp = QParams(np.float32(0.1), 3, QuantSpec(dtype=dtype, symmetric=False))
        q_ort, _ = run_ort(qdq_model(onnx_type, 0.1, 3, opset=opset), {"x": x})
        np.testing.assert_array_equal(quantize(x, qp), q_ort)


@pytest.mark.parametrize("axis", [0, 1])
def test_per_channel_matches_ort(rng, axis):
    scales = np.array([0.5, 0.03, 0.25, 1 / 7], np.float32)
    zero_points = np.array([0, 5, -7, 100], np.int8)
    shape = [4, 4, 3, 3]
    x = (rng.standard_normal([2500] + shape) * 20).astype(np.float32)
    x.reshape(-1)[: x.size // 2] = np.float32(0.25) * (rng.integers(-600, 600, x.size // 2) + 0.5)
    model = qdq_model(TensorProto.INT8, scales, zero_points, axis=axis + 1, shape=[None] + shape)
    q_ort, y_ort = run_ort(model, {"x": x})
    spec = QuantSpec(dtype="int8", symmetric=False, granularity="per_channel", axis=axis + 1)
    qp = QParams(scales, zero_points, spec, axis=axis + 1)
    np.testing.assert_array_equal(quantize(x, qp), q_ort)
    np.testing.assert_array_equal(dequantize(q_ort, qp), y_ort)


def test_int32_dequantize_matches_ort(rng):
    q = rng.integers(-(2**31), 2**31 - 1, N, dtype=np.int64).astype(np.int32)
    scale = np.float32(3.1e-5)
    model = make_model(
        [helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"])],
        [helper.make_tensor_value_info("q", TensorProto.INT32, [None])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None])],
        [numpy_helper.from_array(np.array(scale), "s"), numpy_helper.from_array(np.array(0, np.int32), "z")],
    )
    (y_ort,) = run_ort(model, {"q": q})
    qp = QParams(scale, 0, QuantSpec(dtype="int32"))
    np.testing.assert_array_equal(dequantize(q, qp), y_ort)


def test_half_up_models_tensorflow_fake_quant():
    qp = QParams(np.float32(1.0), 0, QuantSpec(dtype="int8", round_mode="half_up"))
    np.testing.assert_array_equal(quantize(np.array([0.5, 1.5, -0.5, -1.5, 2.5]), qp), [1, 2, 0, -1, 3])
