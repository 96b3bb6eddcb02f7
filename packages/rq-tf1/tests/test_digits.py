"""A CNN trained here on scikit-learn's load_digits in a tf.compat.v1 Session, frozen, then quantized
with npu_cnn: at most 1.5 points of test accuracy lost, in the eval model and in ONNX Runtime."""

import nets
import numpy as np
import tensorflow as tf
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import rq_tf1

from conftest import run_ort

v1 = tf.compat.v1


def train_and_freeze(x_train, y_train, path):
    with tf.Graph().as_default() as graph:
        v1.set_random_seed(0)
        b = nets.Builder(0)
        x = v1.placeholder(tf.float32, (None, 8, 8, 1), name="x")
        h = tf.nn.relu(b.conv(x, 16, 3, "c1"), name="c1_relu")
        h = tf.nn.relu(b.conv(h, 32, 3, "c2"), name="c2_relu")
        h = tf.reshape(tf.nn.max_pool2d(h, 2, 2, "VALID", name="pool"), (-1, 4 * 4 * 32), name="flat")
        logits = tf.identity(b.dense(h, 10, "fc"), name="logits")
        labels = v1.placeholder(tf.int64, (None,))
        loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits))
        step = v1.train.AdamOptimizer(2e-3).minimize(loss)
        with v1.Session(graph=graph) as session:
            session.run(v1.global_variables_initializer())
            rng = np.random.default_rng(0)
            for _ in range(12):
                order = rng.permutation(len(x_train))
                for i in range(0, len(order), 32):
                    batch = order[i : i + 32]
                    session.run(step, {x: x_train[batch], labels: y_train[batch]})
            frozen = v1.graph_util.convert_variables_to_constants(session, graph.as_graph_def(), ["logits"])
    path.write_bytes(frozen.SerializeToString(deterministic=True))
    return path


def test_digits_cnn_loses_at_most_one_and_a_half_points(tmp_path):
    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[..., None]
    x_train, x_test, y_train, y_test = train_test_split(x, digits.target, test_size=0.3, random_state=0)
    graph = train_and_freeze(x_train, y_train, tmp_path / "digits.pb")
    accuracy = lambda logits: float(np.mean(np.argmax(logits, axis=1) == y_test))  # noqa: E731
    (float_logits,) = rq_tf1.run_eval_model(graph, {"x": x_test}, ["logits"])
    float_acc = accuracy(float_logits)
    assert float_acc > 0.95
    result = rq_tf1.quantize_frozen_graph(
        graph,
        ["x"],
        ["logits"],
        lambda i: {"x": x_train[32 * i : 32 * (i + 1)]},
        max_calibration_batches=8,
        output_dir=tmp_path / "out",
        input_shapes="?,8,8,1",
        preset="npu_cnn",
        quiet=True,
    )
    assert result.violations == []
    (eval_logits,) = rq_tf1.run_eval_model(result.files["eval_model"], {"x": x_test}, ["logits"])
    assert float_acc - accuracy(eval_logits) <= 0.015
    assert accuracy(run_ort(result.path, {"x:0": x_test})) == accuracy(eval_logits)
