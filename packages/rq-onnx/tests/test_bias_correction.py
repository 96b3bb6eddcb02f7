"""bias_correction=True on a BatchNorm-folded-style Conv whose channels' weight ranges are 100x apart:
per-tensor weights shift the narrow channels' mean outputs, and the corrected biases bring them back
(measured by ONNX Runtime against the float model on data calibration did not see)."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from rq_onnx import quantize_static
from rq_onnx.calibrate import with_outputs
from rq_onnx.cli import main

from conftest import ArrayReader, run


def far_apart_conv():
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((16, 8, 1, 1)) * np.geomspace(0.005, 1.0, 16).reshape(-1, 1, 1, 1)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w", "b"], ["y"], name="conv")],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16, 6, 6])],
        [numpy_helper.from_array(weight.astype(np.float32), "w"), numpy_helper.from_array(np.zeros(16, np.float32), "b")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def inputs(seed, n):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, 8, 6, 6)) + rng.uniform(1, 3, (1, 8, 1, 1))).astype(np.float32)  # means far from 0


def mean_shift(model, quantized, data):
    """Per channel, the quantized Conv's mean output (before the output's QuantizeLinear, whose
    rounding is not the weights') minus the float Conv's."""
    (conv,) = [node for node in quantized.graph.node if node.op_type == "Conv"]
    probed = with_outputs(quantized, [conv.output[0]])
    expected = np.stack([run(model, {"x": x[None]})[0] for x in data]).mean(axis=(0, 1, 3, 4))
    actual = np.stack([run(probed, {"x": x[None]}, as_written=True)[-1] for x in data]).mean(axis=(0, 1, 3, 4))
    return actual - expected


def dequantized_input(model, node, slot):
    """The float value a DequantizeLinear of an initializer gives a node's input."""
    producer = next(n for n in model.graph.node if n.output[0] == node.input[slot])
    values = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    q, scale = values[producer.input[0]].astype(np.float64), values[producer.input[1]].astype(np.float64)
    zero = values[producer.input[2]].astype(np.float64) if len(producer.input) > 2 else 0.0
    return (q - zero) * scale, float(np.max(scale))


@pytest.mark.parametrize("preset", ["npu_cnn", "npu_transformer"])
def test_bias_correction_removes_the_mean_shift_of_per_tensor_weights(tmp_path, preset):
    """The written bias is b - (W_q - W) E[x], E[x] the calibration data's channel means (within one
    bias step), and the Conv's mean output moves back toward the float one on held-out data."""
    model = far_apart_conv()
    calibration, held_out = inputs(1, 32), inputs(2, 32)
    plain = quantize_static(model, tmp_path / "plain.onnx", ArrayReader("x", calibration), preset=preset, quiet=True)
    corrected = quantize_static(
        model, tmp_path / "corrected.onnx", ArrayReader("x", calibration), preset=preset, quiet=True, bias_correction=True
    )
    assert plain.violations == [] and corrected.violations == []
    assert any(note.startswith("bias correction: 1 layer(s)") for note in corrected.notes)
    (conv,) = [node for node in corrected.model.graph.node if node.op_type == "Conv"]
    quantized_weight, _ = dequantized_input(corrected.model, conv, 1)
    bias, bias_step = dequantized_input(corrected.model, conv, 2)
    weight = numpy_helper.to_array(model.graph.initializer[0]).astype(np.float64)
    expected = -(quantized_weight - weight)[:, :, 0, 0] @ calibration.astype(np.float64).mean(axis=(0, 2, 3))  # b = 0
    assert np.abs(bias - expected).max() <= bias_step / 2 * 1.0001
    before = np.abs(mean_shift(model, plain.model, held_out))
    after = np.abs(mean_shift(model, corrected.model, held_out))
    assert after.mean() < 0.5 * before.mean()  # what remains: the input's own rounding, which this leaves alone


def test_the_cli_flag_corrects_the_biases(tmp_path, capsys):
    model = far_apart_conv()
    onnx.save(model, tmp_path / "float.onnx")
    np.savez(tmp_path / "calib.npz", x=inputs(1, 8))
    code = main(
        [
            "quantize",
            str(tmp_path / "float.onnx"),
            str(tmp_path / "q.onnx"),
            "--calib-data",
            str(tmp_path / "calib.npz"),
            "--preset",
            "npu_transformer",
            "--bias-correction",
            "--quiet",
        ]
    )
    assert code == 0 and "note: bias correction: 1 layer(s)" in capsys.readouterr().out


@pytest.mark.parametrize("trans_b", [0, 1])
def test_a_gemm_bias_is_corrected_in_its_weight_layout(tmp_path, trans_b):
    """Gemm's weight is (K, N), or (N, K) with transB: the input means meet the right axis."""
    rng = np.random.default_rng(3)
    weight = rng.standard_normal((16, 8)) * np.geomspace(0.005, 1.0, 16).reshape(-1, 1)  # (N, K)
    stored = weight if trans_b else weight.T
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w", "b"], ["y"], name="fc", transB=trans_b)],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16])],
        [numpy_helper.from_array(stored.astype(np.float32), "w"), numpy_helper.from_array(np.zeros(16, np.float32), "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    data = (rng.standard_normal((64, 8)) + rng.uniform(1, 3, 8)).astype(np.float32)
    result = quantize_static(model, None, ArrayReader("x", data), preset="npu_transformer", quiet=True, bias_correction=True)
    (gemm,) = [node for node in result.model.graph.node if node.op_type == "Gemm"]
    quantized_weight, _ = dequantized_input(result.model, gemm, 1)
    bias, bias_step = dequantized_input(result.model, gemm, 2)
    error = quantized_weight - stored
    expected = -((error if trans_b else error.T) @ data.astype(np.float64).mean(axis=0))
    assert np.abs(expected).max() > 10 * bias_step  # a correction the test can see
    assert np.abs(bias - expected).max() <= bias_step / 2 * 1.0001
