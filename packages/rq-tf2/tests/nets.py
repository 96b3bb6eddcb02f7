"""Keras versions of rq's reference networks (Functional API, channels_last)."""

from __future__ import annotations

import keras
import numpy as np

import rq_tf2

L = keras.layers


def randomize_batchnorm(model: keras.Model, seed: int = 0) -> keras.Model:
    """Give BatchNormalization layers non-trivial statistics, as a trained network has."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, L.BatchNormalization):
            n = layer.moving_mean.shape[0]
            layer.moving_mean.assign(rng.random(n, np.float32) * 0.4 - 0.2)
            layer.moving_variance.assign(rng.random(n, np.float32) + 0.5)
            layer.gamma.assign(rng.random(n, np.float32) + 0.5)
            layer.beta.assign(rng.random(n, np.float32) * 0.2 - 0.1)
    return model


def _conv_bn(x, filters, kernel, name, strides=1, relu=True):
    x = L.Conv2D(filters, kernel, strides=strides, padding="same", use_bias=False, name=f"{name}_conv")(x)
    x = L.BatchNormalization(name=f"{name}_bn")(x)
    return L.ReLU(name=f"{name}_relu")(x) if relu else x


def resnet_style(classes: int = 10, size: int = 16) -> keras.Model:
    inputs = keras.Input((size, size, 3), name="x")
    x = _conv_bn(inputs, 16, 3, "stem")
    for b in range(2):
        y = _conv_bn(x, 16, 3, f"block{b}_a")
        y = _conv_bn(y, 16, 3, f"block{b}_b", relu=False)
        x = L.ReLU(name=f"block{b}_out")(L.Add(name=f"block{b}_add")([x, y]))
    x = L.MaxPooling2D(2, name="pool")(x)
    x = L.Conv2D(32, 3, strides=2, padding="same", activation="relu", name="head_conv")(x)
    x = L.GlobalAveragePooling2D(name="gap")(x)
    return keras.Model(inputs, L.Dense(classes, name="fc")(x), name="resnet_style")


def mobilenet_v2_style(classes: int = 10, size: int = 32) -> keras.Model:
    inputs = keras.Input((size, size, 3), name="x")
    x = L.Conv2D(16, 3, strides=2, padding="same", use_bias=False, name="stem_conv")(inputs)
    x = L.ReLU(6.0, name="stem_relu6")(L.BatchNormalization(name="stem_bn")(x))
    for b, expand in enumerate((4, 6)):
        y = L.Conv2D(16 * expand, 1, use_bias=False, name=f"block{b}_expand")(x)
        y = L.ReLU(6.0, name=f"block{b}_expand_relu6")(L.BatchNormalization(name=f"block{b}_expand_bn")(y))
        y = L.DepthwiseConv2D(3, padding="same", use_bias=False, name=f"block{b}_dw")(y)
        y = L.ReLU(6.0, name=f"block{b}_dw_relu6")(L.BatchNormalization(name=f"block{b}_dw_bn")(y))
        y = L.Conv2D(16, 1, use_bias=False, name=f"block{b}_project")(y)
        y = L.BatchNormalization(name=f"block{b}_project_bn")(y)
        x = L.Add(name=f"block{b}_add")([x, y])
    left = L.Conv2D(8, 1, activation="relu6", name="left")(x)
    right = L.Conv2D(8, 3, padding="same", activation="relu6", name="right")(x)
    x = L.AveragePooling2D(2, name="pool")(L.Concatenate(name="cat")([left, right]))
    x = L.GlobalAveragePooling2D(name="gap")(x)
    return keras.Model(inputs, L.Dense(classes, name="fc")(x), name="mobilenet_v2_style")


def transformer_encoder(dim: int = 32, heads: int = 4, tokens: int = 8) -> keras.Model:
    """Pre-norm encoder block from Keras layers; 1/sqrt(head_dim) is folded into the query weights."""
    head_dim = dim // heads
    inputs = keras.Input((tokens, dim), name="x")
    h = L.LayerNormalization(name="norm1")(inputs)

    def split(t, name):
        t = L.Reshape((tokens, heads, head_dim), name=f"{name}_split")(t)
        return L.Permute((2, 1, 3), name=f"{name}_heads")(t)

    q = split(L.Dense(dim, name="q")(h), "q")
    k = split(L.Dense(dim, name="k")(h), "k")
    v = split(L.Dense(dim, name="v")(h), "v")
    scores = rq_tf2.MatMul(transpose_b=True, name="scores")([q, k])
    attended = rq_tf2.MatMul(name="attend")([L.Softmax(name="softmax")(scores), v])
    attended = L.Reshape((tokens, dim), name="merge")(L.Permute((2, 1, 3), name="unheads")(attended))
    x = L.Add(name="residual1")([inputs, L.Dense(dim, name="out")(attended)])
    h = L.LayerNormalization(name="norm2")(x)
    h = L.Dense(dim, name="ff2")(L.Dense(2 * dim, activation="relu", name="ff1")(h))
    model = keras.Model(inputs, L.Add(name="residual2")([x, h]), name="transformer_encoder")
    q_layer = model.get_layer("q")
    q_layer.kernel.assign(q_layer.kernel * (1.0 / np.sqrt(head_dim)))
    return model


def attention_encoder(dim: int = 32, heads: int = 4, tokens: int = 8) -> keras.Model:
    """The same pre-norm encoder block with keras.layers.MultiHeadAttention, as Keras users write it."""
    inputs = keras.Input((tokens, dim), name="x")
    h = L.LayerNormalization(name="norm1")(inputs)
    x = L.Add(name="residual1")([inputs, L.MultiHeadAttention(heads, dim // heads, name="attention")(h, h)])
    h = L.LayerNormalization(name="norm2")(x)
    h = L.Dense(dim, name="ff2")(L.Dense(2 * dim, activation="relu", name="ff1")(h))
    return keras.Model(inputs, L.Add(name="residual2")([x, h]), name="attention_encoder")


def digits_cnn() -> keras.Model:
    inputs = keras.Input((8, 8, 1), name="x")
    x = _conv_bn(inputs, 16, 3, "c1")
    x = _conv_bn(x, 32, 3, "c2")
    x = L.MaxPooling2D(2, name="pool")(x)
    x = L.Flatten(name="flat")(x)
    return keras.Model(inputs, L.Dense(10, name="fc")(x), name="digits_cnn")
