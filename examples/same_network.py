"""One network, one set of float weights, built in PyTorch, Keras, a frozen TF1 graph and ONNX: what the
parity suite (tests/test_parity_frameworks.py) and the main demo (digits_demo.py) feed to every rq package.

The weights are drawn once in PyTorch's layout (conv OIHW, depthwise (C, 1, k, k), dense (out, in))
and each framework gets them through an explicit layout conversion:
- conv OIHW -> Keras / TF HWIO: transpose (2, 3, 1, 0);
- depthwise (C, 1, k, k) -> (k, k, C, 1): transpose (2, 3, 0, 1);
- dense (out, in) -> (in, out): transpose.
BatchNorm keeps its four vectors and epsilon 1e-5 everywhere. Inputs are NCHW for PyTorch and ONNX,
NHWC for Keras and TF1 (``to_nhwc``). Padding is 'same' with stride 1 only, where PyTorch's
symmetric padding and TensorFlow's SAME agree.

Each network is a list of layer specs that all four builders walk:
  ("conv", name, in, out, k, bias)  ("dw", name, channels)  ("bn", name, channels)
  ("relu", name) ("relu6", name)  ("save", key)  ("add", name, key)  ("branch", left, right)  ("gap",)
  ("dense", name, in, out)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

EPS = 1e-5
CLASSES = 10

NETWORKS = {
    # conv / BatchNorm / ReLU with a residual add
    "resnet": [
        ("conv", "stem", 3, 8, 3, False), ("bn", "stem_bn", 8), ("relu", "stem_relu"), ("save", "skip"),
        ("conv", "a", 8, 8, 3, False), ("bn", "a_bn", 8), ("relu", "a_relu"),
        ("conv", "b", 8, 8, 3, False), ("bn", "b_bn", 8), ("add", "residual", "skip"), ("relu", "out_relu"),
        ("gap",), ("dense", "fc", 8, CLASSES),
    ],
    # depthwise MobileNetV2-style block with ReLU6, then a concat of two branches
    "mobilenet_v2": [
        ("conv", "stem", 3, 8, 3, False), ("bn", "stem_bn", 8), ("relu6", "stem_relu6"), ("save", "skip"),
        ("conv", "expand", 8, 16, 1, False), ("bn", "expand_bn", 16), ("relu6", "expand_relu6"),
        ("dw", "dw", 16), ("bn", "dw_bn", 16), ("relu6", "dw_relu6"),
        ("conv", "project", 16, 8, 1, False), ("bn", "project_bn", 8), ("add", "residual", "skip"),
        ("branch", [("conv", "left", 8, 4, 1, True), ("relu6", "left_relu6")], [("conv", "right", 8, 4, 3, True), ("relu6", "right_relu6")]),
        ("gap",), ("dense", "fc", 8, CLASSES),
    ],
    # a dense head on pooled features
    "dense_head": [
        ("conv", "stem", 3, 8, 3, True), ("relu", "stem_relu"), ("gap",),
        ("dense", "fc1", 8, 16), ("relu", "fc1_relu"), ("dense", "fc2", 16, CLASSES),
    ],
    # the demo's classifier for scikit-learn's 8x8 digits
    "digits_cnn": [
        ("conv", "c1", 1, 16, 3, False), ("bn", "c1_bn", 16), ("relu", "c1_relu"),
        ("conv", "c2", 16, 32, 3, False), ("bn", "c2_bn", 32), ("relu", "c2_relu"),
        ("conv", "c3", 32, 32, 3, True), ("relu", "c3_relu"), ("gap",), ("dense", "fc", 32, CLASSES),
    ],
}  # fmt: skip
INPUTS = {"resnet": (3, 16, 16), "mobilenet_v2": (3, 16, 16), "dense_head": (3, 16, 16), "digits_cnn": (1, 8, 8)}  # C, H, W


def make_weights(network: str, seed: int = 0) -> dict[str, np.ndarray]:
    """Float32 weights in PyTorch's layout, BatchNorm statistics included."""
    rng = np.random.default_rng(seed)
    weights: dict[str, np.ndarray] = {}

    def walk(layers):
        for layer in layers:
            kind = layer[0]
            if kind == "conv":
                _, name, cin, cout, k, bias = layer
                weights[f"{name}.weight"] = rng.standard_normal((cout, cin, k, k)) / np.sqrt(cin * k * k)
                if bias:
                    weights[f"{name}.bias"] = rng.standard_normal(cout) * 0.1
            elif kind == "dw":
                weights[f"{layer[1]}.weight"] = rng.standard_normal((layer[2], 1, 3, 3)) / 3.0
            elif kind == "bn":
                c = layer[2]
                weights[f"{layer[1]}.weight"] = rng.uniform(0.5, 1.5, c)
                weights[f"{layer[1]}.bias"] = rng.standard_normal(c) * 0.1
                weights[f"{layer[1]}.running_mean"] = rng.standard_normal(c) * 0.1
                weights[f"{layer[1]}.running_var"] = rng.uniform(0.5, 1.5, c)
            elif kind == "dense":
                _, name, cin, cout = layer
                weights[f"{name}.weight"] = rng.standard_normal((cout, cin)) / np.sqrt(cin)
                weights[f"{name}.bias"] = rng.standard_normal(cout) * 0.1
            elif kind == "branch":
                walk(layer[1])
                walk(layer[2])

    walk(NETWORKS[network])
    return {k: v.astype(np.float32) for k, v in weights.items()}


def to_nhwc(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.transpose(x, (0, 2, 3, 1)))


def hwio(w: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.transpose(w, (2, 3, 1, 0)))


def depthwise_hwcm(w: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.transpose(w, (2, 3, 0, 1)))


# -- PyTorch ----------------------------------------------------------------------------------------
def torch_model(network: str, weights: dict):
    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self, layers):
            super().__init__()
            self.layers = layers
            self.mods = nn.ModuleDict()
            self._build(layers)

        def _build(self, layers):
            for layer in layers:
                kind = layer[0]
                if kind == "conv":
                    _, name, cin, cout, k, bias = layer
                    self.mods[name] = nn.Conv2d(cin, cout, k, padding=k // 2, bias=bias)
                elif kind == "dw":
                    self.mods[layer[1]] = nn.Conv2d(layer[2], layer[2], 3, padding=1, groups=layer[2], bias=False)
                elif kind == "bn":
                    self.mods[layer[1]] = nn.BatchNorm2d(layer[2], eps=EPS)
                elif kind in ("relu", "relu6"):
                    self.mods[layer[1]] = nn.ReLU() if kind == "relu" else nn.ReLU6()
                elif kind == "dense":
                    self.mods[layer[1]] = nn.Linear(layer[2], layer[3])
                elif kind == "branch":
                    self._build(layer[1])
                    self._build(layer[2])

        def _run(self, layers, x, saved):
            for layer in layers:
                kind = layer[0]
                if kind in ("conv", "dw", "bn", "relu", "relu6", "dense"):
                    x = self.mods[layer[1]](x)
                elif kind == "save":
                    saved[layer[1]] = x
                elif kind == "add":
                    x = x + saved[layer[2]]
                elif kind == "branch":
                    x = torch.cat([self._run(layer[1], x, saved), self._run(layer[2], x, saved)], dim=1)
                elif kind == "gap":
                    x = torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)
            return x

        def forward(self, x):
            return self._run(self.layers, x, {})

    model = Net(NETWORKS[network])
    state = {f"mods.{k}": torch.from_numpy(v) for k, v in weights.items()}
    model.load_state_dict(state, strict=False)
    return model.eval()


def float_onnx(network: str, weights: dict, path: Path) -> Path:
    """The float ONNX model: PyTorch's layout is ONNX's, so the TorchScript exporter writes it."""
    import torch

    model = torch_model(network, weights)
    torch.onnx.export(
        model,
        (torch.zeros(1, *INPUTS[network]),),
        str(path),
        dynamo=False,
        opset_version=17,
        input_names=["x"],
        do_constant_folding=False,
    )
    return path


# -- Keras ------------------------------------------------------------------------------------------
def keras_model(network: str, weights: dict):
    import keras

    L = keras.layers
    assignments = []

    def run(layers, x, saved):
        for layer in layers:
            kind = layer[0]
            if kind == "conv":
                _, name, _, cout, k, bias = layer
                conv = L.Conv2D(cout, k, padding="same", use_bias=bias, name=name)
                x = conv(x)
                assignments.append((conv, [hwio(weights[f"{name}.weight"])] + ([weights[f"{name}.bias"]] if bias else [])))
            elif kind == "dw":
                conv = L.DepthwiseConv2D(3, padding="same", use_bias=False, name=layer[1])
                x = conv(x)
                assignments.append((conv, [depthwise_hwcm(weights[f"{layer[1]}.weight"])]))
            elif kind == "bn":
                bn = L.BatchNormalization(epsilon=EPS, name=layer[1])
                x = bn(x)
                n = layer[1]
                assignments.append(
                    (
                        bn,
                        [weights[f"{n}.weight"], weights[f"{n}.bias"], weights[f"{n}.running_mean"], weights[f"{n}.running_var"]],
                    )
                )
            elif kind == "relu":
                x = L.ReLU(name=layer[1])(x)
            elif kind == "relu6":
                x = L.ReLU(6.0, name=layer[1])(x)
            elif kind == "save":
                saved[layer[1]] = x
            elif kind == "add":
                x = L.Add(name=layer[1])([x, saved[layer[2]]])
            elif kind == "branch":
                x = L.Concatenate(name="concat")([run(layer[1], x, saved), run(layer[2], x, saved)])
            elif kind == "gap":
                x = L.GlobalAveragePooling2D(name="gap")(x)
            elif kind == "dense":
                dense = L.Dense(layer[3], name=layer[1])
                x = dense(x)
                assignments.append((dense, [weights[f"{layer[1]}.weight"].T, weights[f"{layer[1]}.bias"]]))
        return x

    c, h, w = INPUTS[network]
    inputs = keras.Input((h, w, c), name="x")
    model = keras.Model(inputs, run(NETWORKS[network], inputs, {}), name=network)
    for layer, values in assignments:
        layer.set_weights(values)
    return model


# -- TF1 frozen graph -------------------------------------------------------------------------------
def tf1_graph(network: str, weights: dict, path: Path) -> Path:
    """Built with tf.compat.v1 ops on constants (the frozen form), input 'x', output 'logits'."""
    import tensorflow as tf

    v1 = tf.compat.v1

    def const(name):
        return tf.constant(weights[name], name=name.replace(".", "/"))

    def run(layers, x, saved):
        for layer in layers:
            kind, name = layer[0], layer[1] if len(layer) > 1 else None
            if kind == "conv":
                x = tf.nn.conv2d(x, tf.constant(hwio(weights[f"{name}.weight"])), 1, "SAME", name=f"{name}/Conv2D")
                if layer[5]:
                    x = tf.nn.bias_add(x, const(f"{name}.bias"), name=f"{name}/BiasAdd")
            elif kind == "dw":
                kernel = tf.constant(depthwise_hwcm(weights[f"{name}.weight"]))
                x = tf.nn.depthwise_conv2d(x, kernel, [1, 1, 1, 1], "SAME", name=f"{name}/depthwise")
            elif kind == "bn":
                params = [const(f"{name}.{p}") for p in ("weight", "bias", "running_mean", "running_var")]
                x = v1.nn.fused_batch_norm(x, *params, epsilon=EPS, is_training=False, name=name)[0]
            elif kind == "relu":
                x = tf.nn.relu(x, name=name)
            elif kind == "relu6":
                x = tf.nn.relu6(x, name=name)
            elif kind == "save":
                saved[name] = x
            elif kind == "add":
                x = tf.add(x, saved[layer[2]], name=name)
            elif kind == "branch":
                x = tf.concat([run(layer[1], x, saved), run(layer[2], x, saved)], axis=3, name="concat")
            elif kind == "gap":
                x = tf.reduce_mean(x, axis=[1, 2], name="gap")
            elif kind == "dense":
                x = tf.matmul(x, tf.constant(weights[f"{name}.weight"].T), name=f"{name}/MatMul")
                x = tf.nn.bias_add(x, const(f"{name}.bias"), name=f"{name}/BiasAdd")
        return x

    with tf.Graph().as_default() as graph:
        c, h, w = INPUTS[network]
        x = v1.placeholder(tf.float32, (None, h, w, c), name="x")
        tf.identity(run(NETWORKS[network], x, {}), name="logits")
    path.write_bytes(graph.as_graph_def().SerializeToString(deterministic=True))
    return path
