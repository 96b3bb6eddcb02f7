"""Cross-layer equalization against the paper's own statements (Nagel et al. 2019): the scales are
sqrt(r1 / r2) (hand-computed), the two layers' channel ranges end equal, the function through a
ReLU is unchanged (a numpy reference of the layers), a depthwise chain converges, and high-bias
absorption keeps the output where the ReLU's input stays above the moved amount."""

import numpy as np
import pytest

from rq_common.errors import SpecError
from rq_common.qmath.equalization import (
    Equalization,
    Layer,
    Layout,
    absorb_high_bias,
    equalization_scales,
    equalize,
    equalize_pair,
)


def relu(x):
    return np.maximum(x, 0.0)


def dense(layer: Layer, x):
    """x (N, in) through a linear layer, in its own stored layout."""
    weight = layer.weight().astype(np.float64)
    return (x @ weight if layer.layout is Layout.IO else x @ weight.T) + layer.bias


def conv(layer: Layer, x):
    """A no-padding, stride-1 grouped 2-d convolution of x (N, C, H, W): the reference."""
    weight = layer.kernel
    groups, out, per_group = layer.groups, weight.shape[0], weight.shape[1]
    kh, kw = weight.shape[2:]
    n, _, h, w = x.shape
    y = np.zeros((n, out, h - kh + 1, w - kw + 1))
    for o in range(out):
        g = o // (out // groups)
        channels = x[:, g * per_group : (g + 1) * per_group]
        for i in range(kh):
            for j in range(kw):
                window = channels[:, :, i : i + y.shape[2], j : j + y.shape[3]]
                y[:, o] += np.einsum("nchw,c->nhw", window, weight[o, :, i, j])
    return y + layer.bias.reshape(1, -1, 1, 1)


def test_scales_are_the_square_root_of_the_range_ratio_and_leave_both_ranges_equal():
    producer = Layer.linear(np.array([[4.0, -1.0], [0.5, 1.0]]), np.array([1.0, 2.0]))  # out ranges 4, 1
    consumer = Layer.linear(np.array([[1.0, 2.0], [-0.5, -4.0]]))  # in ranges 1, 4
    scales = equalize_pair(producer, consumer)
    np.testing.assert_allclose(scales, [2.0, 0.5])
    np.testing.assert_allclose(producer.output_ranges(), [2.0, 2.0])
    np.testing.assert_allclose(consumer.input_ranges(), [2.0, 2.0])
    np.testing.assert_allclose(producer.bias, [0.5, 4.0])  # the bias divided by the scale


@pytest.mark.parametrize("transposed", [False, True])
def test_a_linear_pair_through_relu_computes_the_same(transposed):
    rng = np.random.default_rng(0)
    spread = 10.0 ** rng.uniform(-2, 2, size=16)
    w1 = rng.standard_normal((16, 8)) * spread[:, None]
    w2 = rng.standard_normal((5, 16)) / spread[None, :]
    first = Layer.linear(w1.T if transposed else w1, rng.standard_normal(16) * spread, transposed)
    second = Layer.linear(w2.T if transposed else w2, rng.standard_normal(5), transposed)
    x = rng.standard_normal((32, 8))
    before = dense(second, relu(dense(first, x)))
    ratio_before = first.output_ranges().max() / first.output_ranges().min()
    equalize([(first, second)])
    np.testing.assert_allclose(dense(second, relu(dense(first, x))), before, rtol=1e-5, atol=1e-5 * np.abs(before).max())
    assert first.output_ranges().max() / first.output_ranges().min() < ratio_before / 10


def test_a_conv_depthwise_conv_chain_converges_with_equal_ranges_and_the_same_output():
    rng = np.random.default_rng(1)
    spread = 10.0 ** rng.uniform(-1.5, 1.5, size=6)
    first = Layer.conv(rng.standard_normal((6, 3, 3, 3)) * spread[:, None, None, None], rng.standard_normal(6))
    depthwise = Layer.conv(rng.standard_normal((6, 1, 3, 3)) / spread[:, None, None, None], rng.standard_normal(6), groups=6)
    last = Layer.conv(rng.standard_normal((4, 6, 1, 1)), rng.standard_normal(4))
    x = rng.standard_normal((2, 3, 9, 9))

    def forward():
        return conv(last, relu(conv(depthwise, relu(conv(first, x)))))

    before = forward()
    rounds = equalize([(first, depthwise), (depthwise, last)], max_iterations=200, tolerance=1e-6)
    assert 1 < rounds < 200  # the depthwise layer sits in two pairs: one round is not enough
    np.testing.assert_allclose(forward(), before, rtol=1e-5, atol=1e-5 * np.abs(before).max())
    np.testing.assert_allclose(first.output_ranges(), depthwise.input_ranges(), rtol=1e-4)
    np.testing.assert_allclose(depthwise.output_ranges(), last.input_ranges(), rtol=1e-4)


def test_grouped_consumer_scales_each_input_channel_in_its_own_group():
    rng = np.random.default_rng(2)
    first = Layer.conv(rng.standard_normal((4, 2, 1, 1)) * np.array([1, 100, 0.01, 5.0])[:, None, None, None])
    grouped = Layer.conv(rng.standard_normal((6, 2, 1, 1)), rng.standard_normal(6), groups=2)
    x = rng.standard_normal((1, 2, 3, 3))
    before = conv(grouped, relu(conv(first, x)))
    equalize_pair(first, grouped)
    np.testing.assert_allclose(conv(grouped, relu(conv(first, x))), before, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(first.output_ranges(), grouped.input_ranges())


def test_a_dead_channel_keeps_scale_one():
    assert list(equalization_scales(np.array([4.0, 0.0]), np.array([1.0, 3.0]))) == [2.0, 1.0]
    assert list(equalization_scales(np.array([4.0, 2.0]), np.array([0.0, 2.0]))) == [1.0, 1.0]


def test_high_bias_absorption_moves_the_least_value_and_keeps_the_output():
    rng = np.random.default_rng(3)
    first = Layer.linear(rng.standard_normal((4, 3)) * 0.1, np.array([5.0, -1.0, 3.0, 0.5]))
    second = Layer.linear(rng.standard_normal((2, 4)), np.array([0.1, 0.2]))
    x = rng.standard_normal((64, 3))
    pre = dense(first, x)
    before = dense(second, relu(pre))
    moved = absorb_high_bias(first, second, pre.min(axis=0))
    np.testing.assert_allclose(moved, np.maximum(pre.min(axis=0), 0))
    assert moved[0] > 4 and moved[1] == 0  # a channel that goes below 0 moves nothing
    np.testing.assert_allclose(dense(second, relu(dense(first, x))), before, atol=1e-9)
    assert relu(dense(first, x)).max() < relu(pre).max() - 4  # the ReLU's output range shrank


def test_high_bias_absorption_into_a_conv_sums_each_kernel():
    rng = np.random.default_rng(4)
    first = Layer.conv(rng.standard_normal((3, 2, 1, 1)) * 0.1, np.array([2.0, 3.0, 4.0]))
    second = Layer.conv(rng.standard_normal((2, 3, 3, 3)), np.zeros(2))
    x = rng.standard_normal((2, 2, 6, 6))
    pre = conv(first, x)
    before = conv(second, relu(pre))
    absorb_high_bias(first, second, pre.min(axis=(0, 2, 3)))
    np.testing.assert_allclose(conv(second, relu(conv(first, x))), before, atol=1e-9)


def test_settings_are_checked():
    with pytest.raises(SpecError, match="relu6"):
        Equalization(relu6="clamp")
    with pytest.raises(SpecError, match="at least 1"):
        Equalization(max_iterations=0)
    assert Equalization(relu6="relu").relu6.value == "relu"


def test_each_framework_layout_converts_to_the_canonical_one_and_back():
    rng = np.random.default_rng(5)
    oik = rng.standard_normal((6, 4, 3, 2))  # (out, in, kh, kw)
    kio = oik.transpose(2, 3, 1, 0)  # Keras / TF: (kh, kw, in, out)
    np.testing.assert_array_equal(Layer.from_weight(kio, layout=Layout.KIO).kernel, oik)
    depthwise = rng.standard_normal((3, 3, 4, 2))  # (kh, kw, C, M): output c * M + m reads input c
    layer = Layer.from_weight(depthwise, layout=Layout.KCM)
    assert layer.groups == 4 and layer.kernel.shape == (8, 1, 3, 3)
    np.testing.assert_array_equal(layer.kernel[2 * 2 + 1, 0], depthwise[:, :, 2, 1])
    for weight, layout in ((oik, Layout.OIK), (kio, Layout.KIO), (depthwise, Layout.KCM), (oik[:, :, 0, 0], Layout.IO)):
        np.testing.assert_array_equal(Layer.from_weight(weight, layout=layout).weight(), weight.astype(np.float32))


def test_a_package_equalizes_per_tensor_presets_by_default_and_never_with_unfolded_batchnorm():
    from rq_common.qmath.equalization import equalization_for
    from rq_common.spec import get_preset

    assert equalization_for(None, get_preset("npu_cnn")) == Equalization()
    assert equalization_for(None, get_preset("cpu")) is None and equalization_for(True, get_preset("cpu")) == Equalization()
    assert equalization_for(False, get_preset("npu_transformer")) is None
    assert equalization_for(None, get_preset("npu_cnn"), batchnorm_kept=True) is None
    with pytest.raises(SpecError, match="use one of the two"):
        equalization_for(True, get_preset("npu_cnn"), batchnorm_kept=True)
