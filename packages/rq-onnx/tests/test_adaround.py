"""rounding="adaround": each layer's input patches as its weight sees them (checked against ONNX
Runtime's Conv), and the written model: every weight on its grid at floor or ceil of W / s, the
layer's output closer to float than with nearest rounding on data calibration did not see, the
same bytes twice."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from rq_common.errors import SpecError
from rq_common.qmath.adaround import rows
from rq_onnx import quantize_static
from rq_onnx.calibrate import with_outputs
from rq_onnx.cli import main
from rq_onnx.patches import conv_patches, gemm_patches, matmul_patches

from conftest import ArrayReader, run


def single_op_model(node, x_shape, weight, bias=None):
    initializers = [numpy_helper.from_array(weight.astype(np.float32), "w")]
    if bias is not None:
        initializers.append(numpy_helper.from_array(bias.astype(np.float32), "b"))
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        initializers,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


CONVS = [
    ((2, 4, 9, 11), (6, 4, 3, 3), dict(pads=[1, 1, 1, 1])),
    ((2, 4, 9, 11), (6, 2, 3, 3), dict(group=2, strides=[2, 2], pads=[1, 0, 1, 2], dilations=[1, 2])),
    ((1, 6, 9, 11), (6, 1, 3, 3), dict(group=6, auto_pad="SAME_UPPER", strides=[2, 2])),
    ((1, 6, 9, 11), (6, 1, 3, 3), dict(group=6, auto_pad="SAME_LOWER", strides=[2, 1])),
    ((2, 8, 5, 5), (5, 8, 1, 1), {}),
    ((2, 8, 13), (4, 4, 3), dict(group=2, pads=[2, 1], dilations=[2])),
    ((1, 8, 9, 11), (4, 8, 2, 2), dict(auto_pad="VALID", strides=[2, 3])),
]


@pytest.mark.parametrize("x_shape,w_shape,attrs", CONVS)
def test_conv_patches_times_the_weight_rows_are_onnx_runtimes_conv(x_shape, w_shape, attrs):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(x_shape).astype(np.float32)
    weight = rng.standard_normal(w_shape).astype(np.float32)
    node = helper.make_node("Conv", ["x", "w"], ["y"], **attrs)
    (expected,) = run(single_op_model(node, x_shape, weight), {"x": x})
    patches = conv_patches(node, w_shape, x)  # (groups, P, K)
    groups = patches.shape[0]
    per_group = rows(weight, 0).reshape(groups, w_shape[0] // groups, -1)
    out = np.matmul(patches, per_group.transpose(0, 2, 1))  # (groups, N * positions, O / groups)
    out = out.reshape(groups, x_shape[0], *expected.shape[2:], -1)
    got = np.concatenate([np.moveaxis(out[g], -1, 1) for g in range(groups)], axis=1)
    np.testing.assert_allclose(got, expected, atol=1e-4)


@pytest.mark.parametrize("trans_a", [0, 1])
def test_gemm_and_matmul_patches_are_their_rows_of_inputs(trans_a):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((5, 3) if trans_a else (3, 5))
    node = helper.make_node("Gemm", ["x", "w"], ["y"], transA=trans_a)
    np.testing.assert_array_equal(gemm_patches(node, (5, 4), x)[0], x.T if trans_a else x)
    batched = rng.standard_normal((2, 3, 5))
    np.testing.assert_array_equal(matmul_patches(None, (5, 4), batched)[0], batched.reshape(6, 5))


def smooth_images(seed, count, channels=4, size=10):
    """Neighbouring pixels alike (a blurred field): the patches' features are correlated, where the
    best rounding of a 3x3 kernel differs from rounding each weight to nearest."""
    rng = np.random.default_rng(seed)
    noise = rng.standard_normal((count, channels, size + 2, size + 2))
    blurred = sum(noise[:, :, i : i + size, j : j + size] for i in range(3) for j in range(3)) / 3
    return (blurred + 0.5).astype(np.float32)


def conv_model():
    rng = np.random.default_rng(2)
    weight = rng.standard_normal((8, 4, 3, 3)) * np.geomspace(0.05, 1.0, 8).reshape(-1, 1, 1, 1)
    node = helper.make_node("Conv", ["x", "w", "b"], ["y"], name="conv", pads=[1, 1, 1, 1])
    return single_op_model(node, (1, 4, 10, 10), weight, rng.standard_normal(8) * 0.1)


def conv_error(model, quantized, data):
    """Mean squared error of the quantized Conv's output (before its output's QuantizeLinear)."""
    (conv,) = [node for node in quantized.graph.node if node.op_type == "Conv"]
    probed = with_outputs(quantized, [conv.output[0]])
    return np.mean([(run(probed, {"x": x[None]}, as_written=True)[-1] - run(model, {"x": x[None]})[0]) ** 2 for x in data])


def written_weight(quantized):
    """The Conv's integer weight and its scale, as written."""
    values = {t.name: numpy_helper.to_array(t) for t in quantized.graph.initializer}
    (conv,) = [node for node in quantized.graph.node if node.op_type == "Conv"]
    dq = next(n for n in quantized.graph.node if n.output[0] == conv.input[1])
    return values[dq.input[0]].astype(np.float64), values[dq.input[1]].astype(np.float64)


@pytest.mark.parametrize("preset", ["npu_cnn", "npu_transformer", "cpu"])
@pytest.mark.parametrize("bias_correction", [False, True])
def test_adaround_reconstructs_the_layer_output_better_than_nearest(tmp_path, preset, bias_correction):
    model = conv_model()
    calibration, held_out = smooth_images(3, 48), smooth_images(4, 24)
    options = dict(preset=preset, quiet=True, bias_correction=bias_correction)
    nearest = quantize_static(model, tmp_path / "nearest.onnx", ArrayReader("x", calibration), **options)
    adaptive = quantize_static(model, tmp_path / "ada.onnx", ArrayReader("x", calibration), rounding="adaround", **options)
    assert adaptive.violations == []
    assert any(note.startswith("adaptive rounding: 1 layer(s)") for note in adaptive.notes)
    q, scale = written_weight(adaptive.model)
    q_nearest, _ = written_weight(nearest.model)
    weight = numpy_helper.to_array(model.graph.initializer[0]).astype(np.float64)
    exact = weight / scale.reshape(-1, *[1] * 3) if scale.ndim else weight / scale
    assert np.all((q == np.floor(exact)) | (q == np.ceil(exact)))  # up or down, never further
    assert np.mean(q != q_nearest) > 0.02  # it did choose differently
    assert conv_error(model, adaptive.model, held_out) < 0.9 * conv_error(model, nearest.model, held_out)
    again = quantize_static(model, tmp_path / "again.onnx", ArrayReader("x", calibration), rounding="adaround", **options)
    assert again.path.read_bytes() == adaptive.path.read_bytes()


def test_the_cli_rounds_adaptively_and_names_a_wrong_rounding(tmp_path, capsys):
    onnx.save(conv_model(), tmp_path / "float.onnx")
    np.savez(tmp_path / "calib.npz", x=smooth_images(5, 8))
    args = ["quantize", str(tmp_path / "float.onnx"), str(tmp_path / "q.onnx"), "--calib-data", str(tmp_path / "calib.npz")]
    assert main([*args, "--rounding", "adaround", "--quiet"]) == 0
    assert "note: adaptive rounding: 1 layer(s)" in capsys.readouterr().out
    with pytest.raises(SpecError, match="'upward' is not a rounding; use one of: nearest, adaround"):
        quantize_static(conv_model(), None, ArrayReader("x", smooth_images(5, 2)), rounding="upward")
