"""rq_torch.fake_quant against independent truths: rq_common's numpy reference (what ONNX Runtime
computes) for the values, the straight-through mask written out in numpy and torch's own
fake-quant kernel for the gradient."""

import numpy as np
import pytest
import torch

from rq_common import QParams, QuantSpec
from rq_common.qmath.reference import fake_quantize as reference_fake_quantize
from rq_common.spec import Granularity, QuantDType
from rq_torch.fake_quant import fake_quantize

# (qmin, qmax, dtype): the ranges torch's exporter takes
RANGES = [(-128, 127, QuantDType.INT8), (0, 255, QuantDType.UINT8)]


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def values_with_ties(rng, scale, shape):
    """Values spread over and beyond the range, a quarter of them exactly half a step off the grid."""
    x = rng.uniform(-200, 200, shape).astype(np.float32) * np.float32(scale).max()
    ties = rng.random(shape) < 0.25
    x[ties] = ((np.round(x / scale) + 0.5) * scale)[ties] if np.ndim(scale) == 0 else x[ties]
    return x


@pytest.mark.parametrize("qmin,qmax,dtype", RANGES)
@pytest.mark.parametrize("scale", [2.0**-4, 0.0371])  # a power of two, and one that rounds at ties
def test_per_tensor_values_equal_the_reference_and_the_gradient_is_the_unclipped_mask(rng, qmin, qmax, dtype, scale):
    zero_point = 0 if qmin < 0 else 131
    x = values_with_ties(rng, np.float32(scale), (4, 3, 5, 5))
    spec = QuantSpec(dtype=dtype, symmetric=False)
    qparams = QParams(np.float32(scale), np.array(zero_point, dtype.np_dtype), spec)

    xt = torch.tensor(x, requires_grad=True)
    out = fake_quantize(xt, torch.tensor(np.float32(scale)), torch.tensor(zero_point, dtype=torch.int32), qmin, qmax, None)
    np.testing.assert_array_equal(out.detach().numpy(), reference_fake_quantize(x, qparams))

    upstream = rng.standard_normal(x.shape).astype(np.float32)
    out.backward(torch.tensor(upstream))
    q = np.round(x / np.float32(scale)) + zero_point  # numpy rounds half to even, as ONNX does
    np.testing.assert_array_equal(xt.grad.numpy(), upstream * ((q >= qmin) & (q <= qmax)))


def test_the_gradient_equals_torchs_fake_quant_kernel_for_power_of_two_scales(rng):
    x = torch.tensor(values_with_ties(rng, np.float32(2.0**-3), (8, 16)), requires_grad=True)
    x_torch = x.detach().clone().requires_grad_(True)
    upstream = torch.randn(8, 16)
    fake_quantize(x, torch.tensor(2.0**-3), torch.tensor(5, dtype=torch.int32), 0, 255, None).backward(upstream)
    torch.fake_quantize_per_tensor_affine(x_torch, 2.0**-3, 5, 0, 255).backward(upstream)
    torch.testing.assert_close(x.grad, x_torch.grad, rtol=0, atol=0)


def test_per_channel_values_equal_the_reference(rng):
    scales = np.array([0.011, 2.0**-6, 0.3], np.float32)
    x = rng.standard_normal((3, 2, 3, 3)).astype(np.float32) * scales.reshape(3, 1, 1, 1) * 150
    spec = QuantSpec(dtype=QuantDType.INT8, symmetric=True, granularity=Granularity.PER_CHANNEL, axis=0)
    qparams = QParams(scales, np.zeros(3, np.int8), spec, axis=0)
    out = fake_quantize(torch.tensor(x), torch.tensor(scales), torch.zeros(3, dtype=torch.int32), -128, 127, 0)
    np.testing.assert_array_equal(out.numpy(), reference_fake_quantize(x, qparams))


def test_a_learned_scale_computes_the_same_values_and_gets_a_gradient(rng):
    x = torch.tensor(values_with_ties(rng, np.float32(0.05), (64,)))
    fixed = fake_quantize(x, torch.tensor(0.05), torch.tensor(0, dtype=torch.int32), -128, 127, None)
    scale = torch.tensor(0.05, requires_grad=True)
    learned = fake_quantize(x, scale, torch.tensor(0, dtype=torch.int32), -128, 127, None)
    torch.testing.assert_close(learned.detach(), fixed, rtol=0, atol=0)
    learned.sum().backward()
    assert scale.grad is not None and torch.isfinite(scale.grad)
