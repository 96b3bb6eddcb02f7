"""Cross-layer equalization on ONNX graphs: the equalized float model computes what the original
did (ONNX Runtime, to 1e-5), its paired channel ranges are equal, a ReLU6 pair is left alone unless
asked, high-bias absorption keeps the output on the data it measured, and a per-tensor int8 model of a
badly scaled net comes closer to float with it than without."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from rq_common.qmath.equalization import Equalization
from rq_onnx import quantize_static
from rq_onnx.cli import main
from rq_onnx.equalize import equalize_model
from rq_onnx.readers import FeedListReader

from conftest import ArrayReader, run, sqnr_db


def channel_ranges(weight: np.ndarray, axis: int) -> np.ndarray:
    return np.abs(np.moveaxis(weight, axis, 0)).reshape(weight.shape[axis], -1).max(axis=1)


def conv_chain(activation: str = "Relu", spread: float = 2.0, seed: int = 0, bias_shift: float = 0.0):
    """Conv 3x3 -> act -> depthwise 3x3 -> act -> Conv 1x1, its channels scaled by 10**U(-spread, spread)
    and compensated in the next layer, as BN folding leaves real backbones."""
    rng = np.random.default_rng(seed)
    scales = 10.0 ** rng.uniform(-spread, spread, 8)
    w1 = rng.standard_normal((8, 3, 3, 3)) * 0.3 * scales[:, None, None, None]
    b1 = rng.standard_normal(8) * 0.1 * scales
    dw = rng.standard_normal((8, 1, 3, 3)) * 0.3 / scales[:, None, None, None]
    b2 = rng.standard_normal(8) * 0.1 + bias_shift
    w3 = rng.standard_normal((4, 8, 1, 1)) * 0.3
    initializers = [
        numpy_helper.from_array(v.astype(np.float32), n) for n, v in (("w1", w1), ("b1", b1), ("dw", dw), ("b2", b2), ("w3", w3))
    ]
    acts, inputs = [], []
    if activation == "Clip6":
        initializers += [numpy_helper.from_array(np.float32(0), "lo"), numpy_helper.from_array(np.float32(6), "hi")]
    for name in ("a1", "a2"):
        if activation == "Clip6":
            acts.append(helper.make_node("Clip", [f"{name}_in", "lo", "hi"], [name]))
        else:
            acts.append(helper.make_node(activation, [f"{name}_in"], [name]))
        inputs.append(f"{name}_in")
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["a1_in"], name="conv1", pads=[1, 1, 1, 1]),
        acts[0],
        helper.make_node("Conv", ["a1", "dw", "b2"], ["a2_in"], name="dw", group=8, pads=[1, 1, 1, 1]),
        acts[1],
        helper.make_node("Conv", ["a2", "w3"], ["y"], name="conv3"),
    ]
    graph = helper.make_graph(
        nodes,
        "chain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 3, 12, 12])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        initializers,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def weights(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Each node's weight (its input 1) by node name."""
    values = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    return {n.name: values[n.input[1]] for n in model.graph.node if n.op_type in ("Conv", "Gemm", "MatMul")}


def images(n: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3, 12, 12)).astype(np.float32)


def test_the_equalized_chain_computes_the_same_with_equal_paired_ranges():
    model = conv_chain()
    x = images(4)
    (before,) = run(model, {"x": x})
    notes: list[str] = []
    equalize_model(model, Equalization(max_iterations=100), notes)
    (after,) = run(model, {"x": x})
    np.testing.assert_allclose(after, before, rtol=1e-5, atol=1e-5 * np.abs(before).max())
    w = weights(model)
    np.testing.assert_allclose(channel_ranges(w["conv1"], 0), channel_ranges(w["dw"], 0), rtol=1e-3)
    np.testing.assert_allclose(channel_ranges(w["dw"], 0), channel_ranges(w["conv3"], 1), rtol=1e-3)
    assert any("2 pair(s) of layers equalized" in n for n in notes)


def test_linear_pairs_gemm_and_matmul_compute_the_same():
    rng = np.random.default_rng(2)
    spread = 10.0 ** rng.uniform(-2, 2, 16)
    w1 = (rng.standard_normal((16, 8)) * spread[:, None]).astype(np.float32)  # Gemm transB=1: (out, in)
    b1 = (rng.standard_normal(16) * spread).astype(np.float32)
    w2 = (rng.standard_normal((16, 6)) / spread[:, None]).astype(np.float32)  # MatMul: (in, out)
    nodes = [
        helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], name="fc1", transB=1),
        helper.make_node("LeakyRelu", ["h"], ["a"], alpha=0.1),
        helper.make_node("MatMul", ["a", "w2"], ["y"], name="fc2"),
    ]
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(b1, "b1"), numpy_helper.from_array(w2, "w2")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    x = rng.standard_normal((5, 8)).astype(np.float32)
    (before,) = run(model, {"x": x})
    equalize_model(model, Equalization(), [])
    (after,) = run(model, {"x": x})
    np.testing.assert_allclose(after, before, rtol=1e-5, atol=1e-5 * np.abs(before).max())
    w = weights(model)
    np.testing.assert_allclose(channel_ranges(w["fc1"], 0), channel_ranges(w["fc2"], 0), rtol=1e-5)


def test_relu6_pairs_are_left_alone_unless_asked():
    model = conv_chain("Clip6")
    original = weights(model)
    notes: list[str] = []
    equalize_model(model, Equalization(), notes)
    assert all(np.array_equal(original[k], v) for k, v in weights(model).items())
    assert any("2 pair(s) joined through ReLU6 left as they are" in n for n in notes)

    relaxed = conv_chain("Clip6")
    notes = []
    equalize_model(relaxed, Equalization(relu6="relu"), notes)
    assert [n.op_type for n in relaxed.graph.node].count("Clip") == 0
    assert any("2 ReLU6 became ReLU" in n for n in notes)
    x = images(2) * 0.01  # small inputs: nothing reaches 6, so ReLU and ReLU6 agree
    np.testing.assert_allclose(run(relaxed, {"x": x})[0], run(conv_chain("Clip6"), {"x": x})[0], rtol=1e-4, atol=1e-6)


def test_high_bias_absorption_keeps_the_output_and_shrinks_the_relu_range():
    # conv1 -> Relu -> dw (padded: no absorption) -> Relu -> conv3 (1x1: absorbed)
    model = conv_chain(bias_shift=10.0)
    x = images(8)
    (before,) = run(model, {"x": x})
    feeds = [{"x": x[i : i + 2]} for i in range(0, 8, 2)]
    kept = onnx.ModelProto()
    kept.CopyFrom(model)
    equalize_model(kept, Equalization(absorb_high_bias=False), [])
    notes: list[str] = []
    equalize_model(model, Equalization(), notes, feeds)
    assert any("bias moved into the next layer in 1 of 1 pair(s)" in n for n in notes), notes
    np.testing.assert_allclose(run(model, {"x": x})[0], before, rtol=1e-5, atol=1e-5 * np.abs(before).max())

    def relu_range(m):
        from rq_onnx.calibrate import with_outputs

        return np.abs(run(with_outputs(m, ["a2"]), {"x": x})[1]).max()

    assert relu_range(model) < relu_range(kept)


def test_a_weight_read_by_two_layers_is_not_equalized():
    model = conv_chain()
    model.graph.node[4].input[1] = "shared"
    model.graph.initializer.append(numpy_helper.from_array(np.ones((4, 8, 1, 1), np.float32), "shared"))
    extra = helper.make_node("Conv", ["a2", "shared"], ["z"], name="other")
    model.graph.node.append(extra)
    model.graph.output.append(helper.make_tensor_value_info("z", TensorProto.FLOAT, None))
    notes: list[str] = []
    equalize_model(model, Equalization(), notes)
    assert any("1 pair(s) of layers equalized" in n for n in notes)  # conv1 -> dw only


def badly_scaled_reader(n: int = 32):
    return ArrayReader("x", images(n, seed=5), batch_size=4)


def test_per_tensor_int8_of_a_badly_scaled_net_comes_closer_to_float():
    model = conv_chain(spread=1.5, seed=3)
    x = images(16, seed=9)
    (expected,) = run(model, {"x": x})
    scores = {}
    for equalization in (False, True):
        result = quantize_static(model, None, badly_scaled_reader(), "npu_transformer", equalization=equalization, quiet=True)
        assert not result.violations
        scores[equalization] = sqnr_db(expected, run(result.model, {"x": x}, as_written=True)[0])
    assert scores[True] > scores[False] + 6, scores  # 6 dB: a quarter of the error


def test_cli_equalizes_per_tensor_presets_by_default_and_writes_valid_deterministic_models(tmp_path):
    model_path = tmp_path / "chain.onnx"
    onnx.save(conv_chain(), model_path)
    np.savez(tmp_path / "data.npz", x=images(16))
    written = {}
    for name, flags in (("auto", []), ("again", []), ("on", ["--equalize", "on"]), ("off", ["--equalize", "off"])):
        out = tmp_path / f"{name}.onnx"
        arguments = ["quantize", str(model_path), str(out), "--calib-data", str(tmp_path / "data.npz"), "--preset", "npu_cnn"]
        assert main([*arguments, *flags, "--quiet"]) == 0
        assert main(["check", str(out), "--preset", "npu_cnn"]) == 0
        written[name] = out.read_bytes()
    assert written["auto"] == written["again"] == written["on"] != written["off"]


def test_per_channel_weights_are_not_equalized_unless_asked():
    reader = badly_scaled_reader
    default = quantize_static(conv_chain(), None, reader(), "cpu", quiet=True)
    assert not any("equaliz" in n for n in default.notes)
    asked = quantize_static(conv_chain(), None, reader(), "cpu", equalization=True, quiet=True)
    assert any("2 pair(s) of layers equalized" in n for n in asked.notes)
    per_tensor = quantize_static(conv_chain(), None, reader(), "npu_transformer", quiet=True)
    assert any("2 pair(s) of layers equalized" in n for n in per_tensor.notes)


def test_a_reader_that_cannot_rewind_still_calibrates_on_every_batch():
    reader = badly_scaled_reader(16)
    result = quantize_static(conv_chain(), None, reader, "npu_transformer", equalization=True, quiet=True)
    rewindable = quantize_static(
        conv_chain(),
        None,
        FeedListReader([{"x": images(16, 5)[i : i + 4]} for i in range(0, 16, 4)]),
        "npu_transformer",
        equalization=True,
        quiet=True,
    )
    assert result.model.SerializeToString() == rewindable.model.SerializeToString()


@pytest.mark.parametrize("preset", ["npu_cnn", "npu_transformer", "cpu"])
def test_equalized_models_pass_the_check(preset):
    result = quantize_static(conv_chain(), None, badly_scaled_reader(), preset, equalization=True, quiet=True)
    assert not result.violations
