"""Bias correction (Nagel et al. 2019, sec. 4.2) against ONNX Runtime: with the corrected bias, the
quantized layer's mean output per channel over the data equals the float layer's; without it, the
weight's rounding error shifts it."""

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from rq_common import get_preset
from rq_common.pipeline import Layer, ModelView, Weight, finalize, weight_qparams
from rq_common.qmath import QParams, bias_correction, fake_quantize


def conv_outputs(x, weight, bias, group):
    """Conv with no padding (every output sees a whole window) run by ONNX Runtime."""
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w", "b"], ["y"], group=group)],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(weight.astype(np.float32), "w"), numpy_helper.from_array(bias.astype(np.float32), "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x.astype(np.float32)})[0]


def channels_with_far_apart_ranges(rng, shape):
    """BatchNorm-folded weights: output channels whose ranges differ 100x, so per-tensor weights
    round the narrow ones coarsely (some to zero)."""
    return rng.standard_normal(shape) * np.geomspace(0.01, 1.0, shape[0]).reshape(-1, *[1] * (len(shape) - 1))


@pytest.mark.parametrize("group,kernel", [(1, 1), (6, 3)])  # a plain Conv and a depthwise one
def test_the_corrected_bias_keeps_each_channels_mean_output(group, kernel):
    """E[x] per channel is each output's mean input exactly where every window sees the same mean:
    a 1x1 kernel, or (3x3) an input constant over space within each sample."""
    rng = np.random.default_rng(0)
    channels_in, channels_out = 6, 6
    spatial = (9, 9) if kernel == 1 else (1, 1)
    x = rng.standard_normal((16, channels_in, *spatial)) + rng.uniform(0.5, 2.0, (1, channels_in, 1, 1))  # non-zero means
    x = np.broadcast_to(x, (16, channels_in, 9, 9))
    weight = channels_with_far_apart_ranges(rng, (channels_out, channels_in // group, kernel, kernel)).astype(np.float32)
    bias = rng.standard_normal(channels_out).astype(np.float32) * 0.1
    qp = weight_qparams(weight, 0, get_preset("npu_transformer"))  # per tensor
    quantized = fake_quantize(weight, qp)
    mean = x.mean(axis=(0, 2, 3))
    in_weight_layout = mean.reshape(group, channels_in // group)[np.arange(channels_out) // (channels_out // group)]
    corrected = bias_correction.corrected_bias(bias, weight, quantized, in_weight_layout[:, :, None, None], axis=0)

    float_mean = conv_outputs(x, weight, bias, group).mean(axis=(0, 2, 3))
    plain_mean = conv_outputs(x, quantized, bias, group).mean(axis=(0, 2, 3))
    corrected_mean = conv_outputs(x, quantized, corrected, group).mean(axis=(0, 2, 3))
    assert np.abs(plain_mean - float_mean).max() > 1e-3  # the shift the correction removes
    np.testing.assert_allclose(corrected_mean, float_mean, rtol=0, atol=1e-5)


def test_finalize_corrects_the_biases_of_layers_with_an_input_mean():
    """finalize corrects only where the adapter gave an input mean, quantizes the corrected bias by
    the preset's rule (int32 at s_in x s_w) and says so in a note."""
    rng = np.random.default_rng(1)
    preset = get_preset("npu_transformer")
    weight = channels_with_far_apart_ranges(rng, (8, 4)).astype(np.float32)  # a Gemm's (N, K) weight
    bias = np.zeros(8, np.float32)
    mean = rng.uniform(1, 3, 4).astype(np.float32)
    source = QParams(np.float32(0.05), np.int8(0), preset.activation)
    layers = [Layer("fc", "w", "x", None, bias, input_mean=mean[None, :]), Layer("fc_plain", "w", "x", None, bias)]
    result = finalize(ModelView({"x": source}, {"w": Weight(weight, 0)}, layers), preset)
    assert list(result.corrected_biases) == ["fc"]
    quantized = fake_quantize(weight, result.weights["w"])
    expected = bias - (quantized.astype(np.float64) - weight) @ mean  # b - (W_q - W) E[x], by hand
    np.testing.assert_allclose(result.corrected_biases["fc"], expected, rtol=0, atol=1e-6)
    step = float(result.biases["fc"].scale.reshape(-1)[0])
    assert step == pytest.approx(0.05 * float(result.weights["w"].scale))  # int32 at s_in x s_w
    assert any(note.startswith("bias correction: 1 layer(s)") for note in result.notes)
