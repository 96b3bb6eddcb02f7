"""Each graph transform keeps what the graph computes (a Session run before and after)."""

import nets
import numpy as np
import tensorflow as tf

from rq_tf1 import fold_batchnorms, fold_constants, normalize_bias_adds, strip_training_nodes
from rq_tf1.graphdef import GraphDef, run


def frozen(tmp_path, network="conv_bn_relu") -> GraphDef:
    build, shape = nets.NETWORKS[network]
    graph_def = GraphDef()
    graph_def.ParseFromString(nets.freeze(build, shape, tmp_path / "g.pb").read_bytes())
    return graph_def


def outputs_agree(before, after, rtol=1e-5):
    x = np.random.default_rng(0).standard_normal((2, 16, 16, 3)).astype(np.float32)
    np.testing.assert_allclose(
        run(after, ["logits:0"], {"x": x})[0], run(before, ["logits:0"], {"x": x})[0], rtol=rtol, atol=1e-5
    )


def ops(graph_def):
    return [n.op for n in graph_def.node]


def test_strip_training_nodes(tmp_path):
    graph_def = frozen(tmp_path)
    assert "CheckNumerics" in ops(graph_def) and ops(graph_def).count("Identity") > 2
    stripped = strip_training_nodes(graph_def, ["x"], ["logits"])
    assert "CheckNumerics" not in ops(stripped)
    assert [n.name for n in stripped.node if n.op == "Identity"] == ["logits"]  # the output keeps its node
    outputs_agree(graph_def, stripped)


def test_fold_constants(tmp_path):
    graph_def = strip_training_nodes(frozen(tmp_path), ["x"], ["logits"])
    assert "Rsqrt" in ops(graph_def)  # the Mul/Add BatchNorm's scale, computed from constants
    folded = fold_constants(graph_def, ["logits"])
    assert "Rsqrt" not in ops(folded)
    outputs_agree(graph_def, folded)


def test_fold_fused_and_mul_add_batchnorms(tmp_path):
    graph_def = fold_constants(strip_training_nodes(frozen(tmp_path), ["x"], ["logits"]), ["logits"])
    assert ops(graph_def).count("FusedBatchNormV3") == 2 and "Mul" in ops(graph_def)
    folded = fold_batchnorms(graph_def)
    assert "FusedBatchNormV3" not in ops(folded) and "Mul" not in ops(folded)
    assert ops(folded).count("BiasAdd") == 5  # three convs and two dense layers, each with one bias
    outputs_agree(graph_def, folded, rtol=1e-4)


def test_add_of_a_per_channel_constant_becomes_bias_add():
    with tf.Graph().as_default() as graph:
        x = tf.compat.v1.placeholder(tf.float32, (None, 4), name="x")
        y = tf.add(tf.matmul(x, tf.constant(np.ones((4, 3), np.float32))), tf.constant(np.arange(3, dtype=np.float32)), name="y")
        tf.identity(y, name="logits")
    graph_def = graph.as_graph_def()
    normalized = normalize_bias_adds(graph_def)
    assert next(n.op for n in normalized.node if n.name == "y") == "BiasAdd"
    x = np.random.default_rng(0).standard_normal((2, 4)).astype(np.float32)
    np.testing.assert_array_equal(run(normalized, ["logits:0"], {"x": x})[0], run(graph_def, ["logits:0"], {"x": x})[0])


def test_keras3_conv_bias_reshaped_to_four_dims_becomes_bias_add():
    """Keras 3 adds a Conv2D's bias as Add(conv, reshape(bias, (1, 1, 1, C))); after constant folding
    that is a (1, 1, 1, C) constant, HED's one-channel side outputs among them."""
    rng = np.random.default_rng(0)
    with tf.Graph().as_default() as graph:
        x = tf.compat.v1.placeholder(tf.float32, (None, 6, 6, 3), name="x")
        conv = tf.nn.conv2d(x, tf.constant(rng.standard_normal((1, 1, 3, 1)).astype(np.float32)), 1, "SAME")
        y = tf.add(conv, tf.constant(np.float32([[[[0.7]]]])), name="y")
        tf.identity(y, name="logits")
    graph_def = graph.as_graph_def()
    normalized = normalize_bias_adds(graph_def)
    bias_add = next(n for n in normalized.node if n.name == "y")
    assert bias_add.op == "BiasAdd"
    bias = next(n for n in normalized.node if n.name == bias_add.input[1].split(":")[0])
    assert [d.size for d in bias.attr["value"].tensor.tensor_shape.dim] == [1]
    x = rng.standard_normal((2, 6, 6, 3)).astype(np.float32)
    np.testing.assert_array_equal(run(normalized, ["logits:0"], {"x": x})[0], run(graph_def, ["logits:0"], {"x": x})[0])
