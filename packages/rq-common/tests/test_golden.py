"""The code under test against hand-derived golden vectors (rq_common/golden/*.json)."""

import numpy as np
import pytest

from rq_common import QParams, QuantSpec, bias_qparams, compute_qparams, dequantize, get_preset, quantize
from rq_common.golden import load

QPARAMS = load("qparams")
QUANTIZE = load("quantize")


def expected_scale(value) -> np.ndarray:
    if isinstance(value, dict):
        return np.float32(2.0 ** value["pow2"])
    if isinstance(value[0], list):
        return np.array([n / d for n, d in value], dtype=np.float32)
    return np.float32(value[0] / value[1])


def spec_of(case) -> QuantSpec:
    if "preset" in case:
        return getattr(get_preset(case["preset"]), case["tensor"])
    return QuantSpec(**case["spec"])


@pytest.mark.parametrize("case", QPARAMS["cases"] + QPARAMS["per_channel"], ids=lambda c: c["id"])
def test_range_to_qparams(case):
    qp = compute_qparams(case["rmin"], case["rmax"], spec_of(case))
    np.testing.assert_array_equal(qp.scale, expected_scale(case["scale"]))
    np.testing.assert_array_equal(qp.zero_point, np.asarray(case["zero_point"]))


@pytest.mark.parametrize("case", QPARAMS["bias"], ids=lambda c: c["id"])
def test_bias(case):
    preset = get_preset(case["preset"])
    input_qp = QParams(np.float32(case["input_scale"]), np.uint8(0), QuantSpec(dtype="uint8", symmetric=False))
    weight_scale = np.asarray(case["weight_scale"], np.float32)
    weight_spec = preset.weight if weight_scale.ndim else preset.weight.replace(granularity="per_tensor", axis=None)
    weight_qp = QParams(weight_scale, np.zeros(weight_scale.shape, np.int8), weight_spec, axis=0 if weight_scale.ndim else None)
    qp = bias_qparams(np.asarray(case["bias"]), input_qp, weight_qp, preset.bias, preset.bias_rule)
    np.testing.assert_array_equal(qp.scale, expected_scale(case["scale"]))
    assert np.all(qp.zero_point == 0)
    np.testing.assert_array_equal(quantize(np.asarray(case["bias"]), qp), np.asarray(case["quantized"]))
    assert quantize(np.asarray(case["bias"]), qp).dtype == preset.bias.dtype.np_dtype


def _qparams(case) -> QParams:
    spec = QuantSpec(dtype=case["dtype"], symmetric=False)
    return QParams(np.float32(case["scale"]), case["zero_point"], spec)


@pytest.mark.parametrize("case", QUANTIZE["quantize"], ids=lambda c: c["id"])
def test_quantize_golden(case):
    x = np.array([float(v) for v in case["x"]], dtype=np.float64)
    q = quantize(x, _qparams(case))
    np.testing.assert_array_equal(q, np.array(case["q"]))
    assert q.dtype == np.dtype(case["dtype"])


@pytest.mark.parametrize("case", QUANTIZE["dequantize"], ids=lambda c: c["id"])
def test_dequantize_golden(case):
    x = dequantize(np.array(case["q"], dtype=case["dtype"]), _qparams(case))
    np.testing.assert_array_equal(x, np.array(case["x"], np.float32))
    assert x.dtype == np.float32
