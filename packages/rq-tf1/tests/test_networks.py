"""The test graphs through every preset: the eval model runs in TensorFlow, the ONNX is in the format,
and ONNX Runtime's output equals the eval model's within one output step (bit for bit where the
preset's scales are powers of two: every product and sum is then exact in float32)."""

import nets
import numpy as np
import pytest

import rq_tf1
from rq_common import get_preset
from rq_common.cpu_features import u8s8_kernels_may_saturate
from rq_common.format import validate

from conftest import Calibration, output_step, run_ort


@pytest.mark.parametrize("preset", ["npu_cnn", "npu_transformer", "cpu"])
@pytest.mark.parametrize("network", list(nets.NETWORKS))
def test_eval_model_and_onnx_agree(tmp_path, network, preset):
    build, shape = nets.NETWORKS[network]
    graph = nets.freeze(build, shape, tmp_path / "float.pb")
    result = rq_tf1.quantize_frozen_graph(
        graph,
        ["x"],
        ["logits"],
        Calibration(shape),
        max_calibration_batches=8,
        output_dir=tmp_path / "out",
        preset=preset,
        quiet=True,
    )
    assert result.violations == [] and result.float_ops == []
    assert validate(result.path, preset) == []
    x = np.random.default_rng(1).standard_normal((8, *shape)).astype(np.float32)
    (expected,) = rq_tf1.run_eval_model(result.files["eval_model"], {"x": x}, ["logits"])
    (float_out,) = rq_tf1.run_eval_model(graph, {"x": x}, ["logits"])
    step = output_step(result.path)
    as_written = run_ort(result.path, {"x:0": x}, as_written=True)
    if preset == "npu_cnn":
        np.testing.assert_array_equal(as_written, expected)
    within_steps(as_written, expected, step, network, preset)
    if not u8s8_kernels_may_saturate():  # ORT's u8s8 kernels without VNNI clip pair sums (rq_common.cpu_features)
        within_steps(run_ort(result.path, {"x:0": x}), expected, step, network, preset)
    sqnr = 10 * np.log10(np.sum(float_out**2) / np.sum((expected - float_out) ** 2))
    assert sqnr > 20  # and it still computes the float graph's function


def within_steps(onnx_out, expected, step, network, preset):
    """One output step; where the network has rounding ties and the scales are not powers of two,
    a tie broken the other way is one step at its op, and later layers can carry it to two."""
    steps = np.abs(onnx_out - expected) / step
    if network in nets.ROUNDING_TIES and not get_preset(preset).power_of_two:
        assert steps.max() <= 2.0001 and np.mean(steps > 1.0001) <= 0.05
    else:
        assert steps.max() <= 1.0001


def test_an_op_no_npu_position_can_serve_runs_in_float(tmp_path):
    """rq-onnx's case (its test_npu_rules): two 1x1 Conv2Ds into one ConcatV2 share its scale on the
    NPU, one with weights near 127 (w_pos 0), one near 1e-5 (w_pos 23); shift_cut in [0, 16] leaves
    them no shared output position. The op rq_common's finalize names unrepairable runs in float in
    both files, with a note; the ONNX is in the format and ORT runs it as the eval model does."""
    rng = np.random.default_rng(0)
    with nets.tf.Graph().as_default() as graph:
        x = nets.v1.placeholder(nets.tf.float32, (None, 4, 4, 2), name="x")
        big = nets.tf.nn.conv2d(x, rng.uniform(60, 127, (1, 1, 2, 2)).astype(np.float32), 1, "SAME", name="conv_big")
        tiny = nets.tf.nn.conv2d(x, rng.uniform(0.6e-5, 1.2e-5, (1, 1, 2, 2)).astype(np.float32), 1, "SAME", name="conv_tiny")
        nets.tf.concat([big, tiny], axis=3, name="logits")
    (tmp_path / "float.pb").write_bytes(graph.as_graph_def().SerializeToString(deterministic=True))
    batches = [rng.uniform(0, 1, (4, 4, 4, 2)).astype(np.float32) for _ in range(4)]
    result = rq_tf1.quantize_frozen_graph(
        tmp_path / "float.pb", ["x"], ["logits"], lambda i: {"x": batches[i]}, 4, tmp_path / "out", quiet=True
    )
    assert [op.node for op in result.float_ops] == ["conv_tiny"] and "conv_tiny" not in result.quantized_ops
    assert "shift_cut needs an output position in [14, 30]" in result.float_ops[0].reason  # w_pos 23 + in_pos 7
    assert any(note.startswith("conv_tiny: kept in float") for note in result.notes)
    assert result.violations == [] and validate(result.path, "npu_cnn") == []
    x = rng.uniform(0, 1, (2, 4, 4, 2)).astype(np.float32)
    (expected,) = rq_tf1.run_eval_model(result.files["eval_model"], {"x": x}, ["logits"])
    np.testing.assert_allclose(run_ort(result.path, {"x:0": x}, as_written=True), expected, rtol=0, atol=1e-5)
