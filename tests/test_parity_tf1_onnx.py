"""Parity of rq-tf1 and rq-onnx: a frozen TF1 graph quantized by rq-tf1, and the same graph written as
float ONNX by tf2onnx and quantized by rq-onnx, with the same calibration data and preset, give the
same int8 model: the same power-of-two scales (float scales within 1e-5 relative), the same int8
weights and biases."""

import numpy as np
import onnx
import pytest
import tensorflow as tf
import tf2onnx
from parity import assert_recorded_bytes, assert_same_layers, package_test_module, recorded_preset, stable_tf2onnx

import rq_tf1
from rq_common.qmath.equalization import Equalization
from rq_onnx import ArrayReader, quantize_static

nets = package_test_module("rq-tf1", "nets")


def both_quantize(tmp_path, network: str, preset, tf1_equalization, onnx_equalization):
    """The same frozen graph and calibration data through rq-tf1 and through tf2onnx's float ONNX
    into rq-onnx: (rq-tf1's result, rq-onnx's result)."""
    build, shape = nets.NETWORKS[network]
    graph = nets.freeze(build, shape, tmp_path / "float.pb")
    batches = [np.random.default_rng(i).standard_normal((4, *shape)).astype(np.float32) for i in range(4)]
    result = rq_tf1.quantize_frozen_graph(
        graph, ["x"], ["logits"], lambda i: {"x": batches[i]}, max_calibration_batches=4, output_dir=tmp_path / "out",
        preset=preset, quiet=True, equalization=tf1_equalization,
    )  # fmt: skip
    graph_def = tf.compat.v1.GraphDef()
    graph_def.ParseFromString(graph.read_bytes())
    float_model, _ = tf2onnx.convert.from_graph_def(graph_def, input_names=["x:0"], output_names=["logits:0"], opset=17)
    (tmp_path / "float.onnx").write_bytes(stable_tf2onnx(float_model))
    reader = ArrayReader({"x:0": np.concatenate(batches)}, batch_size=1)
    from_onnx = quantize_static(
        tmp_path / "float.onnx", tmp_path / "onnx.onnx", reader, preset=preset, quiet=True, equalization=onnx_equalization
    )
    assert result.violations == [] and from_onnx.violations == []
    return result, from_onnx


@pytest.mark.parametrize("preset", ["npu_cnn", "npu_transformer", "cpu"])
@pytest.mark.parametrize("network", list(nets.NETWORKS))
def test_rq_tf1_and_rq_onnx_write_the_same_int8_model(tmp_path, request, network, preset):
    # equalization off: the recorded bytes are without it (equalized below)
    result, from_onnx = both_quantize(tmp_path, network, recorded_preset(preset), False, False)
    assert_same_layers(onnx.load(str(result.path)), from_onnx.model, preset)
    written = {f"tf1/{p.name}": p for p in sorted((tmp_path / "out").iterdir())}
    assert_recorded_bytes(request, {**written, "onnx": tmp_path / "onnx.onnx"})


@pytest.mark.parametrize("preset", ["npu_cnn", "npu_transformer"])
@pytest.mark.parametrize("network", ["conv_bn_relu", "concat_branch"])
def test_rq_tf1_and_rq_onnx_equalize_the_same(tmp_path, network, preset):
    """Both equalize per-tensor presets by default, rq_common's math on the same folded weights:
    the same pairs, the same int8 model. rq-onnx's high-bias absorption (the dense head's ReLU into
    its logits) is its alone: off here."""
    result, from_onnx = both_quantize(tmp_path, network, preset, None, Equalization(absorb_high_bias=False))
    equalized = [[n for n in notes if "equaliz" in n] for notes in (result.notes, from_onnx.notes)]
    assert equalized[0] == equalized[1] and "pair(s) of layers equalized" in equalized[0][-1], equalized
    assert_same_layers(onnx.load(str(result.path)), from_onnx.model, preset)
