"""Cross-layer equalization of frozen graphs: the equalized graph computes what the prepared one did
(TensorFlow, to 1e-5), paired channel ranges end equal, ReLU6 keeps its pair apart, and the int8
eval model of a badly scaled graph comes closer to float with it than without."""

import nets
import numpy as np
import tensorflow as tf

import rq_tf1
from rq_common.qmath.equalization import Equalization
from rq_tf1.equalize import equalize_graph
from rq_tf1.graphdef import const_value, nodes_by_name, run
from rq_tf1.transforms import prepare

from conftest import Calibration

v1 = tf.compat.v1
SHAPE = (12, 12, 3)


def badly_scaled(b: nets.Builder, x):
    """Conv 3x3 -> ReLU -> depthwise 3x3 -> ReLU -> Conv 1x1 -> ReLU -> mean, conv channels scaled by
    10**U(-2, 2) and the depthwise kernel compensating, as BN folding leaves real backbones."""
    spread = (10.0 ** b.rng.uniform(-2, 2, 8)).astype(np.float32)
    kernel = (b.rng.standard_normal((3, 3, 3, 8)) * 0.3 * spread).astype(np.float32)
    x = tf.nn.conv2d(x, v1.Variable(kernel, name="conv0/kernel"), 1, "SAME", name="conv0/Conv2D")
    x = tf.nn.relu(
        tf.nn.bias_add(x, v1.Variable(b.rng.standard_normal(8).astype(np.float32) * 0.1 * spread), name="conv0/BiasAdd")
    )
    depthwise = (b.rng.standard_normal((3, 3, 8, 1)) * 0.3 / spread[None, None, :, None]).astype(np.float32)
    x = tf.nn.depthwise_conv2d(x, v1.Variable(depthwise, name="dw/kernel"), [1, 1, 1, 1], "SAME", name="dw/depthwise")
    x = tf.nn.relu(tf.nn.bias_add(x, v1.Variable(np.full(8, 0.05, np.float32)), name="dw/BiasAdd"))
    x = tf.nn.relu(b.conv(x, 16, 1, "conv1"), name="conv1_relu")
    return tf.reduce_mean(x, axis=[1, 2], name="gap")


def prepared(path) -> tf.compat.v1.GraphDef:
    graph_def = v1.GraphDef()
    graph_def.ParseFromString(path.read_bytes())
    return prepare(graph_def, ["x"], ["logits"])


def test_the_equalized_graph_computes_the_same_with_equal_paired_ranges(tmp_path):
    graph = prepared(nets.freeze(badly_scaled, SHAPE, tmp_path / "float.pb"))
    equalized, notes = equalize_graph(graph, Equalization(max_iterations=100), set(), ["logits"])
    assert notes[-1].startswith("cross-layer equalization: 4 pair(s)")  # conv0-dw, dw-conv1, conv1-fc1 (spatial mean), fc1-logits
    x = np.random.default_rng(1).standard_normal((4, *SHAPE)).astype(np.float32)
    (expected,) = run(graph, ["logits:0"], {"x": x})
    (got,) = run(equalized, ["logits:0"], {"x": x})
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())
    kernels = {n.name.split("/")[0]: const_value(n) for n in equalized.node if n.name.endswith("kernel")}
    conv0, dw, conv1 = (np.abs(kernels[k]) for k in ("conv0", "dw", "conv1"))
    np.testing.assert_allclose(conv0.max(axis=(0, 1, 2)), dw.max(axis=(0, 1, 3)), rtol=1e-3)
    np.testing.assert_allclose(dw.max(axis=(0, 1, 3)), conv1.max(axis=(0, 1, 3)), rtol=1e-3)
    original = nodes_by_name(graph)
    assert not np.array_equal(const_value(original["conv0/kernel"]), kernels["conv0"])  # the input graph is not changed


def eval_sqnr(tmp_path, equalization, name: str) -> tuple[float, list[str]]:
    graph = nets.freeze(badly_scaled, SHAPE, tmp_path / "float.pb")
    result = rq_tf1.quantize_frozen_graph(
        graph, ["x"], ["logits"], Calibration(SHAPE), max_calibration_batches=8, output_dir=tmp_path / name,
        preset="npu_transformer", quiet=True, equalization=equalization,
    )  # fmt: skip
    assert result.violations == []
    x = np.random.default_rng(9).standard_normal((16, *SHAPE)).astype(np.float32)
    (got,) = rq_tf1.run_eval_model(result.files["eval_model"], {"x": x}, ["logits"])
    (expected,) = rq_tf1.run_eval_model(graph, {"x": x}, ["logits"])
    return float(10 * np.log10(np.sum(expected**2) / np.sum((got - expected) ** 2))), result.notes


def test_per_tensor_int8_comes_closer_to_float(tmp_path):
    plain, notes = eval_sqnr(tmp_path, False, "plain")
    assert not any("equaliz" in n for n in notes)
    equalized, notes = eval_sqnr(tmp_path, None, "equalized")  # the default for per-tensor weights
    assert equalized > plain + 6, (plain, equalized)  # 6 dB: a quarter of the error
    assert any("4 pair(s) of layers equalized" in n for n in notes)


def test_relu6_keeps_its_pair_apart(tmp_path):
    graph = prepared(nets.freeze(nets.depthwise_residual, (16, 16, 3), tmp_path / "float.pb"))
    _, notes = equalize_graph(graph, Equalization(), set(), ["logits"])
    assert notes[0] == "cross-layer equalization: 2 pair(s) joined through ReLU6 left as they are"
