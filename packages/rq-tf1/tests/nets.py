"""TF1 test graphs, built with tf.compat.v1 (variables, then frozen), as vai_q_tensorflow users have them."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import tensorflow as tf

v1 = tf.compat.v1


class Builder:
    """Variables drawn from one seeded generator; every layer a few tf.compat.v1 ops."""

    def __init__(self, seed: int = 0):
        self.rng = np.random.default_rng(seed)

    def var(self, name, shape, scale):
        return v1.Variable((self.rng.standard_normal(shape) * scale).astype(np.float32), name=name)

    def conv(self, x, filters, k, name, stride=1, bias=True):
        c = x.shape[-1]
        y = tf.nn.conv2d(
            x, self.var(f"{name}/kernel", (k, k, c, filters), 1.0 / np.sqrt(k * k * c)), stride, "SAME", name=f"{name}/Conv2D"
        )
        return tf.nn.bias_add(y, self.var(f"{name}/bias", (filters,), 0.1), name=f"{name}/BiasAdd") if bias else y

    def depthwise(self, x, name):
        c = x.shape[-1]
        w = self.var(f"{name}/depthwise_kernel", (3, 3, c, 1), 1.0 / 3)
        return tf.nn.depthwise_conv2d(x, w, [1, 1, 1, 1], "SAME", name=f"{name}/depthwise")

    def batchnorm(self, x, name, fused=True):
        c = x.shape[-1]
        gamma = self.var(f"{name}/gamma", (c,), 0.2) + 1.0
        beta, mean = self.var(f"{name}/beta", (c,), 0.1), self.var(f"{name}/mean", (c,), 0.1)
        var = v1.Variable(self.rng.uniform(0.5, 1.5, c).astype(np.float32), name=f"{name}/variance")
        if fused:
            return v1.nn.fused_batch_norm(x, gamma, beta, mean, var, epsilon=1e-3, is_training=False, name=name)[0]
        scale = gamma * tf.math.rsqrt(var + 1e-3)  # the Mul/Add form: constants once frozen and folded
        return tf.add(tf.multiply(x, scale, name=f"{name}/mul"), beta - mean * scale, name=f"{name}/add")

    def dense(self, x, units, name):
        w = self.var(f"{name}/kernel", (x.shape[-1], units), 1.0 / np.sqrt(x.shape[-1]))
        return tf.nn.bias_add(
            tf.matmul(x, w, name=f"{name}/MatMul"), self.var(f"{name}/bias", (units,), 0.1), name=f"{name}/BiasAdd"
        )


def conv_bn_relu_stack(b: Builder, x):
    for i in range(3):
        x = tf.nn.relu(b.batchnorm(b.conv(x, 16, 3, f"conv{i}", bias=i == 0), f"bn{i}", fused=i != 1), name=f"relu{i}")
    x = tf.nn.max_pool2d(x, 2, 2, "VALID", name="pool")
    return tf.reduce_mean(x, axis=[1, 2], name="gap")


def depthwise_residual(b: Builder, x):
    x = tf.nn.relu6(b.batchnorm(b.conv(x, 16, 3, "stem", bias=False), "stem_bn"), name="stem_relu6")
    y = tf.nn.relu6(b.batchnorm(b.conv(x, 32, 1, "expand", bias=False), "expand_bn"), name="expand_relu6")
    y = tf.nn.relu6(b.batchnorm(b.depthwise(y, "dw"), "dw_bn", fused=False), name="dw_relu6")
    y = b.batchnorm(b.conv(y, 16, 1, "project", bias=False), "project_bn")
    x = tf.add(x, y, name="residual")
    return tf.reduce_mean(x, axis=[1, 2], name="gap")


def concat_branch(b: Builder, x):
    x = tf.nn.relu(b.conv(x, 16, 3, "stem"), name="stem_relu")
    left = tf.nn.relu(b.conv(x, 8, 1, "left"), name="left_relu")
    right = tf.nn.relu(b.conv(x, 8, 3, "right"), name="right_relu")
    x = tf.concat([left, right], axis=3, name="cat")
    x = tf.nn.avg_pool2d(x, 2, 2, "VALID", name="avg")
    return tf.reduce_mean(x, axis=[1, 2], name="gap")


def prelu_stack(b: Builder, x):
    """Keras's PReLU as MTCNN's frozen graphs hold it: relu(x) + (-alpha) * relu(-x), one alpha per
    channel (shared over the spatial axes); then a LeakyRelu whose alpha the NPU rounds."""
    for i in range(2):
        x = b.conv(x, 8, 3, f"conv{i}")
        alpha = v1.Variable(b.rng.uniform(0.05, 0.4, (1, 1, 8)).astype(np.float32), name=f"prelu{i}/alpha")
        negative = tf.multiply(tf.nn.relu(tf.negative(x, name=f"prelu{i}/Neg_1"), name=f"prelu{i}/Relu_1"), -alpha)
        x = tf.add(tf.nn.relu(x, name=f"prelu{i}/Relu"), negative, name=f"prelu{i}/add")
    x = tf.nn.leaky_relu(b.conv(x, 8, 1, "conv_leaky"), alpha=0.1, name="leaky")  # the NPU computes 26/256
    return tf.reduce_mean(x, axis=[1, 2], name="gap")


def resize_side_output(b: Builder, x):
    """HED's side outputs: a strided conv's map resized back to the input's size, the size computed
    from tf.shape at run time (Shape -> StridedSlice -> Pack -> ResizeBilinear), then joined."""
    x = tf.nn.relu(b.conv(x, 8, 3, "stem"), name="stem_relu")
    size = tf.shape(x)[1:3]
    side = tf.nn.relu(b.conv(x, 8, 3, "side", stride=2), name="side_relu")
    up = tf.compat.v1.image.resize_bilinear(side, size, name="side_up")
    x = tf.concat([x, up], axis=3, name="join")
    return tf.reduce_mean(x, axis=[1, 2], name="gap")


def dense_head(b: Builder, features):
    h = tf.nn.relu(b.dense(features, 32, "fc1"), name="fc1_relu")
    h = tf.identity(h, name="dropout/Identity")  # dropout in inference form (tf.layers.dropout(training=False))
    return b.dense(h, 10, "logits")


def freeze(build: Callable, input_shape, path: Path, seed: int = 0, head=True) -> Path:
    """Build, initialize and freeze a graph with input 'x' and output 'logits'; write it to ``path``."""
    with tf.Graph().as_default() as graph:
        b = Builder(seed)
        x = v1.placeholder(tf.float32, (None, *input_shape), name="x")
        features = tf.identity(tf.identity(build(b, x)), name="features")  # an Identity chain to strip
        features = tf.debugging.check_numerics(features, "features are finite")
        out = dense_head(b, features) if head else features
        tf.identity(out, name="logits")
        with v1.Session(graph=graph) as session:
            session.run(v1.global_variables_initializer())
            frozen = v1.graph_util.convert_variables_to_constants(session, graph.as_graph_def(), ["logits"])
    path.write_bytes(frozen.SerializeToString(deterministic=True))
    return path


# networks with an op whose exact result often lies on a rounding tie: bilinear Resize by 2 puts half
# its outputs halfway between two input codes; with float scales float32 arithmetic lands each tie a
# little above or below, and TensorFlow's kernel and ORT's land them differently (docs/tf1.md)
ROUNDING_TIES = {"resize_side_output"}

NETWORKS = {
    "conv_bn_relu": (conv_bn_relu_stack, (16, 16, 3)),
    "depthwise_residual": (depthwise_residual, (16, 16, 3)),
    "concat_branch": (concat_branch, (16, 16, 3)),
    "prelu_stack": (prelu_stack, (16, 16, 3)),
    "resize_side_output": (resize_side_output, (16, 16, 3)),
}
