"""Mixed precision and the accuracy loop in rq-onnx: the sensitive activation is found by
measurement, widened to int16 over its calibrated range, written valid for its preset, and closer
to float in ONNX Runtime; the loop gets there by itself, scored on batches it did not calibrate on."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from nets import GraphBuilder
from onnx import TensorProto, helper

from rq_common.errors import SpecError
from rq_common.format import validate
from rq_common.format.graph import GraphIndex, qdq_params, record_wide_activations, recorded_wide_activations
from rq_common.pipeline.accuracy_loop import AccuracyTarget
from rq_common.pipeline.mixed_precision import MixedPrecision, output_agreement
from rq_onnx import quantize_static

from conftest import ArrayReader, run

OUTLIER = 200.0


def outlier_net() -> tuple[onnx.ModelProto, str]:
    """x -> Gemm -> Relu -> Gemm, where x's channel 0 is 200 times louder than the others (``data``)
    and the first Gemm nearly ignores it: 8 bits over x's range erase the channels that count."""
    g = GraphBuilder(0)
    w = g.rng.standard_normal((16, 32)).astype(np.float32) / 4
    w[0] *= 1e-3
    hidden = g.op("Relu", [g.op("Gemm", ["x", g.const(w), g.const(np.zeros(32))])])
    g.nodes.append(
        helper.make_node("Gemm", [hidden, g.const(g.rng.standard_normal((32, 8)) / 6), g.const(np.zeros(8))], ["y"], name="last")
    )
    model = g.model(
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 8])],
    )
    return model, "x"


def data(seed: int, n: int = 64) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, 16)).astype(np.float32)
    x[:, 0] *= OUTLIER
    return x


@pytest.mark.parametrize("preset", ["cpu", "npu_transformer"])
def test_the_outlier_tensor_alone_is_widened_over_its_range_and_the_model_agrees_with_float(preset):
    model, loud = outlier_net()
    plain = quantize_static(model, None, ArrayReader("x", data(0), 8), preset=preset, quiet=True)
    mixed = quantize_static(
        model, None, ArrayReader("x", data(0), 8), preset=preset, quiet=True, mixed_precision=MixedPrecision(target=0.999)
    )
    assert recorded_wide_activations(mixed.model) == [loud]
    assert validate(mixed.model, preset) == [] and mixed.violations == []
    assert any(n.startswith("mixed precision: 1 activation group(s) widened to int16") for n in mixed.notes)

    index = GraphIndex(mixed.model)
    (q,) = [n for n in mixed.model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == loud]
    wide, narrow = qdq_params(index, q), plain.qparams[loud]
    assert wide.dtype.value == "int16" and int(wide.zero_point) == 0
    low, high = narrow.representable_range()  # the calibrated range, in 2^16 - 1 steps (symmetric int16)
    assert float(wide.scale) == pytest.approx(max(-low, high) / 32767, rel=1e-6)

    test = data(1, 32)
    reference = run(model, {"x": test})
    before = output_agreement([run(plain.model, {"x": test})], [reference])
    after = output_agreement([run(mixed.model, {"x": test})], [reference])
    assert before < 0.99 < 0.999 < after


def test_a_model_that_agrees_already_is_left_in_8_bits():
    g = GraphBuilder(1)
    hidden = g.op("Relu", [g.linear("x", 16, 16)])
    g.nodes.append(helper.make_node("Gemm", [hidden, g.const(np.eye(16)), g.const(np.zeros(16))], ["y"], name="last"))
    model = g.model(
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 16])],
    )
    result = quantize_static(
        model, None, ArrayReader("x", data(0), 8), preset="cpu", quiet=True, mixed_precision=MixedPrecision(target=0.99)
    )
    assert recorded_wide_activations(result.model) == []
    assert any(n.startswith("mixed precision: no activation widened") for n in result.notes)


def test_npu_cnn_has_no_wider_type_and_says_so():
    model, _ = outlier_net()
    with pytest.raises(SpecError, match="no wider activation type"):
        quantize_static(model, None, ArrayReader("x", data(0), 8), preset="npu_cnn", quiet=True, mixed_precision=MixedPrecision())


def test_check_accepts_16_bits_only_on_the_tensors_the_model_records():
    model, loud = outlier_net()
    mixed = quantize_static(
        model, None, ArrayReader("x", data(0), 8), preset="cpu", quiet=True, mixed_precision=MixedPrecision(target=0.999)
    )
    unrecorded = onnx.ModelProto()
    unrecorded.CopyFrom(mixed.model)
    record_wide_activations(unrecorded, [])
    kinds = {v.kind.value for v in validate(unrecorded, "cpu")}
    assert kinds == {"wrong-dtype"}
    assert validate(mixed.model, "npu_cnn") != []  # the NPU's CNN path runs no int16 activations


def test_the_command_line_widens_checks_and_refuses_a_target_without_16_bits(tmp_path, capsys):
    from rq_onnx.cli import main

    model, loud = outlier_net()
    onnx.save(model, tmp_path / "float.onnx")
    np.savez(tmp_path / "calib.npz", x=data(0))
    quantize = ["quantize", str(tmp_path / "float.onnx"), "--calib-data", str(tmp_path / "calib.npz"), "--quiet"]
    assert (
        main(
            [
                *quantize[:2],
                str(tmp_path / "mixed.onnx"),
                *quantize[2:],
                "--preset",
                "npu_transformer",
                "--mixed-precision",
                "0.999",
            ]
        )
        == 0
    )
    assert "note: mixed precision: 1 activation group(s) widened to int16" in capsys.readouterr().out
    assert recorded_wide_activations(onnx.load(tmp_path / "mixed.onnx")) == [loud]
    assert main(["check", str(tmp_path / "mixed.onnx"), "--preset", "npu_transformer"]) == 0
    capsys.readouterr()

    assert (
        main([*quantize[:2], str(tmp_path / "cnn.onnx"), *quantize[2:], "--preset", "npu_cnn", "--mixed-precision", "0.99"]) == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no wider activation type" in err[0] and not (tmp_path / "cnn.onnx").exists()


def test_the_accuracy_loop_reaches_its_goal_on_held_out_batches_and_writes_the_best(tmp_path):
    """Ranges, bias correction and adaround cannot bring back channels 8 bits erase; mixed precision
    can: the loop ends there, and the written model scores the goal on data it never calibrated on."""
    model, loud = outlier_net()
    out = tmp_path / "auto.onnx"
    result = quantize_static(
        model, out, ArrayReader("x", data(0, 128), 8), preset="cpu", quiet=True, target=AccuracyTarget(score=0.99)
    )
    loop = [n for n in result.notes if n.startswith("accuracy loop:")]
    assert loop[0].startswith("accuracy loop: adaround + mixed_precision scores") or loop[0].startswith(
        "accuracy loop: mixed_precision scores"
    )
    assert "goal 0.9900 reached" in loop[0] and loop[-1].endswith("(kept)")
    written = onnx.load(out)
    assert recorded_wide_activations(written) == [loud] and validate(written, "cpu") == []
    test = data(2, 32)
    assert output_agreement([run(written, {"x": test})], [run(model, {"x": test})]) > 0.99


def test_the_accuracy_loop_needs_batches_beyond_its_holdout(tmp_path):
    model, _ = outlier_net()
    with pytest.raises(SpecError, match="4 batch\\(es\\) given; the accuracy loop scores on the last"):
        quantize_static(
            model,
            tmp_path / "x.onnx",
            ArrayReader("x", data(0, 32), 8),
            preset="cpu",
            quiet=True,
            target=AccuracyTarget(score=0.99, holdout=4),
        )
    assert not (tmp_path / "x.onnx").exists()


def test_the_command_line_runs_the_loop_to_a_maximum_drop(tmp_path, capsys):
    from rq_onnx.cli import main

    model, _ = outlier_net()
    onnx.save(model, tmp_path / "float.onnx")
    np.savez(tmp_path / "calib.npz", x=data(0, 128))
    args = ["quantize", str(tmp_path / "float.onnx"), str(tmp_path / "q.onnx"), "--calib-data", str(tmp_path / "calib.npz")]
    assert main([*args, "--batch-size", "8", "--preset", "npu_transformer", "--max-drop", "0.01", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "goal 0.9900 reached" in out and main(["check", str(tmp_path / "q.onnx"), "--preset", "npu_transformer"]) == 0


def test_the_same_search_writes_the_same_bytes(tmp_path):
    model, _ = outlier_net()
    for name in ("a.onnx", "b.onnx"):
        quantize_static(
            model,
            tmp_path / name,
            ArrayReader("x", data(0), 8),
            preset="cpu",
            quiet=True,
            mixed_precision=MixedPrecision(target=0.999),
        )
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()


@pytest.mark.parametrize("preset", ["npu_cnn", "cpu"])
def test_a_trial_with_the_written_numbers_computes_what_the_written_model_does(preset):
    """TrialModel's float arithmetic against ONNX Runtime's own QuantizeLinear / DequantizeLinear,
    on a residual CNN (every activation a candidate)."""
    import nets

    from rq_onnx.precision import TrialModel

    model = nets.resnet_block_net()
    calibration = np.random.default_rng(0).standard_normal((16, 3, 16, 16)).astype(np.float32)
    result = quantize_static(model, None, ArrayReader("input", calibration, 1), preset=preset, quiet=True)
    index = GraphIndex(result.model)
    tensors = {n.input[0] for n in result.model.graph.node if n.op_type == "QuantizeLinear" and not index.is_constant(n.input[0])}
    trials = TrialModel(result.model, tensors)
    assert set(trials.qparams) == tensors
    feeds = [{"input": calibration[i : i + 1]} for i in range(4)]
    expected = [run(result.model, feed, as_written=True) for feed in feeds]
    for got, want in zip(trials.run(feeds, {}), expected, strict=True):
        np.testing.assert_allclose(got[0], want[0], rtol=1e-4, atol=1e-5)


def test_one_trial_is_enough_where_the_prior_points_at_the_outlier():
    model, loud = outlier_net()
    config = MixedPrecision(target=0.999, max_trials=1, trial_batches=2)
    result = quantize_static(model, None, ArrayReader("x", data(0), 8), preset="cpu", quiet=True, mixed_precision=config)
    assert recorded_wide_activations(result.model) == [loud]
