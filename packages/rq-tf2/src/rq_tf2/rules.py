"""Layer rules: what each Keras layer exports to, and what runs in its place in the quantized model.

A rule expands one layer into Steps (most layers: one; a Conv with an activation: the Conv and the
activation; a SeparableConv2D: depthwise and pointwise; a Dense on 3-d inputs: MatMul and its bias
Add), each with the ONNX op type tf2onnx writes for it. rq_common's placement then decides the
quantizers from those op types, the same way rq-onnx and rq-torch do. Rules register by layer
class; a subclass without its own rule uses its parent's.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import keras
import numpy as np

from rq_common.qmath import fold_batchnorm
from rq_common.qmath.npu_rules import round_leaky_alpha
from rq_common.spec import Preset
from rq_tf2.layers import (
    QUANT_TWINS,
    BiasAdd,
    ExportableLayerNormalization,
    MatMul,
    QuantDense,
    QuantDepthwiseConv2D,
    QuantPReLU,
    QuantWeightedMixin,
)
from rq_tf2.tf_ops import RESIZE_METHODS, TFOpLayer

L = keras.layers


@dataclass(frozen=True)
class Step:
    """One op of the quantized model. ``build`` makes the layer that runs it; ``load`` fills a
    built layer's weights (a layer builds on its first call, so weights come after)."""

    name: str
    op: str | None
    build: Callable[[], Callable]
    load: Callable[[keras.layers.Layer], None] | None = None
    float_reason: str | None = None
    fusable: bool = True
    constant_operand: bool = False  # an Add / Mul whose second operand is the layer's own quantized constant


@dataclass(frozen=True)
class RuleContext:
    preset: Preset
    input_rank: int
    batchnorm: L.BatchNormalization | None = None  # a BatchNormalization folded into this layer
    freeze_bn_after: int | None = None  # QAT: keep that BatchNorm apart for this many steps
    weights: tuple[np.ndarray, np.ndarray | None] | None = (
        None  # equalized kernel and bias, BatchNorm folded in (rq_tf2.equalize)
    )


Rule = Callable[[object, RuleContext], list[Step]]
LAYER_RULES: dict[type, Rule] = {}


def layer_rule(*types: type) -> Callable[[Rule], Rule]:
    def register(rule: Rule) -> Rule:
        for t in types:
            LAYER_RULES[t] = rule
        return rule

    return register


def steps_for(operation, ctx: RuleContext) -> list[Step]:
    for cls in type(operation).__mro__:
        if cls in LAYER_RULES:
            return LAYER_RULES[cls](operation, ctx)
    if isinstance(operation, keras.layers.Layer):
        return [Step(operation.name, None, lambda: _copy(operation), _copy_weights(operation))]
    return [_operation_step(operation)]


# -- helpers -------------------------------------------------------------------------------------
def _copy(layer: keras.layers.Layer) -> keras.layers.Layer:
    return type(layer).from_config(layer.get_config())


def _copy_weights(layer: keras.layers.Layer):
    values = [w.numpy() for w in layer.weights]
    return (lambda new: new.set_weights(values)) if values else None


ACTIVATIONS: dict[str, tuple[str | None, Callable[[str], keras.layers.Layer]]] = {
    "relu": ("Relu", lambda name: L.ReLU(name=name)),
    "relu6": ("Clip", lambda name: L.ReLU(6.0, name=name)),
    "sigmoid": ("Sigmoid", lambda name: L.Activation("sigmoid", name=name)),
    "tanh": ("Tanh", lambda name: L.Activation("tanh", name=name)),
    "softmax": ("Softmax", lambda name: L.Softmax(name=name)),
}


def activation_name(fn) -> str:
    name = keras.activations.serialize(fn)
    return name if isinstance(name, str) else str(name.get("config", name))


def _activation_step(fn, name: str) -> list[Step]:
    """The activation a layer applies inside, as a layer of its own (nothing for linear)."""
    key = activation_name(fn)
    if key == "linear":
        return []
    if key in ACTIVATIONS:
        op, make = ACTIVATIONS[key]
        return [Step(name, op, lambda: make(name))]
    reason = f"activation '{key}' has no quantization rule: runs in float"
    return [Step(name, None, lambda: L.Activation(fn, name=name), float_reason=reason)]


def _layout_reason(layer) -> str | None:
    if getattr(layer, "data_format", "channels_last") != "channels_last":
        return "data_format='channels_first' is not supported by rq-tf2 (use channels_last, as tf2onnx expects)"
    return None


def _twin_step(layer, ctx: RuleContext, op: str, config_changes=None, name=None, kernel=None, bias=None) -> Step:
    """The quantized twin of a weighted layer, with a following BatchNormalization folded in now
    (PTQ) or kept apart inside the twin (QAT with freeze_bn_after)."""
    twin_type = QUANT_TWINS[next(c for c in type(layer).__mro__ if c in QUANT_TWINS)]
    config = {**layer.get_config(), "activation": "linear", **(config_changes or {})}
    config["name"] = name or layer.name
    if ctx.weights is not None and kernel is None:  # equalized: the BatchNorm is in them already
        kernel, bias = ctx.weights
        ctx = RuleContext(ctx.preset, ctx.input_rank)
        config["use_bias"] = bias is not None
    kernel = np.asarray(layer.kernel if kernel is None else kernel)
    bias = (np.asarray(layer.bias) if layer.bias is not None else None) if bias is None else bias
    keep_bn = ctx.batchnorm is not None and ctx.freeze_bn_after is not None
    bn_values = None
    if ctx.batchnorm is not None:
        bn = ctx.batchnorm
        gamma, beta, mean, var = _batchnorm_values(bn)
        if keep_bn:
            config["batchnorm"] = {"epsilon": float(bn.epsilon), "momentum": float(bn.momentum)}
            config["freeze_bn_after"] = ctx.freeze_bn_after
            bn_values = (gamma, beta, mean, var)
        else:
            kernel, bias = _fold(twin_type, kernel, bias, gamma, beta, mean, var, bn.epsilon)
            config["use_bias"] = True

    def build():
        return twin_type.from_config({**config, "preset": ctx.preset})

    def load(twin: QuantWeightedMixin) -> None:
        twin.kernel.assign(kernel)
        if twin.bias is not None:
            twin.bias.assign(bias if bias is not None else np.zeros(twin.bias.shape, np.float32))
        if bn_values is not None:
            for variable, value in zip((twin.bn_gamma, twin.bn_beta, twin.bn_moving_mean, twin.bn_moving_variance), bn_values):
                variable.assign(value)

    return Step(config["name"], op, build, load, float_reason=_layout_reason(layer), constant_operand=True)


def _batchnorm_values(bn: L.BatchNormalization) -> tuple[np.ndarray, ...]:
    """gamma, beta, moving mean, moving variance (ones / zeros where the layer has no scale / center)."""
    gamma = np.asarray(bn.gamma) if bn.scale else np.ones(bn.moving_mean.shape, np.float32)
    beta = np.asarray(bn.beta) if bn.center else np.zeros(bn.moving_mean.shape, np.float32)
    return gamma, beta, np.asarray(bn.moving_mean), np.asarray(bn.moving_variance)


def _fold(twin_type, kernel, bias, gamma, beta, mean, var, eps):
    if twin_type is QuantDepthwiseConv2D:
        h, w, c, m = kernel.shape
        folded, bias = fold_batchnorm(kernel.reshape(h, w, c * m), bias, gamma, beta, mean, var, eps, channel_axis=2)
        return folded.reshape(kernel.shape), bias
    axis = twin_type.kernel_channel_axis % kernel.ndim
    return fold_batchnorm(kernel, bias, gamma, beta, mean, var, eps, channel_axis=axis)


# -- weighted layers -----------------------------------------------------------------------------
@layer_rule(L.Conv1D, L.Conv2D, L.DepthwiseConv2D)
def conv_rule(layer, ctx: RuleContext) -> list[Step]:
    return [_twin_step(layer, ctx, "Conv"), *_activation_step(layer.activation, f"{layer.name}_activation")]


@layer_rule(L.Conv2DTranspose)
def conv_transpose_rule(layer, ctx: RuleContext) -> list[Step]:
    return [_twin_step(layer, ctx, "ConvTranspose"), *_activation_step(layer.activation, f"{layer.name}_activation")]


@layer_rule(L.Dense)
def dense_rule(layer, ctx: RuleContext) -> list[Step]:
    """2-d input: Gemm with its bias. More dims: tf2onnx writes MatMul, then Add for the bias."""
    activation = _activation_step(layer.activation, f"{layer.name}_activation")
    if ctx.input_rank == 2:
        return [_twin_step(layer, ctx, "Gemm"), *activation]
    kernel, bias, bn = np.asarray(layer.kernel), np.asarray(layer.bias) if layer.use_bias else None, ctx.batchnorm
    if ctx.weights is not None:  # equalized, the BatchNorm folded in
        (kernel, bias), bn = ctx.weights, None
    if bn is not None:  # BN(x W + b) = x (W g) + ((b - mean) g + beta): g into the MatMul, the rest into the Add
        if ctx.freeze_bn_after is not None:
            warnings.warn(
                f"rq_tf2: BatchNormalization '{bn.name}' after Dense '{layer.name}' on {ctx.input_rank}-d inputs is "
                "folded now: freeze_bn_after keeps a BatchNormalization apart after a Conv or a 2-d Dense only",
                stacklevel=5,
            )
        kernel, bias = _fold(QuantDense, kernel, bias, *_batchnorm_values(bn), bn.epsilon)
    steps = [_twin_step(layer, RuleContext(ctx.preset, ctx.input_rank), "MatMul", {"use_bias": False}, kernel=kernel)]
    if bias is not None:
        name, preset = f"{layer.name}_bias", ctx.preset
        steps.append(
            Step(
                name,
                "Add",
                lambda: BiasAdd(units=layer.units, preset=preset, name=name),
                lambda new: new.kernel.assign(bias),
                constant_operand=True,
            )
        )
    return [*steps, *activation]


@layer_rule(L.SeparableConv2D)
def separable_conv_rule(layer, ctx: RuleContext) -> list[Step]:
    """Depthwise then pointwise, as tf2onnx writes it: two Convs with a quantized tensor between."""
    c = layer.depthwise_kernel.shape[2]
    depthwise = L.DepthwiseConv2D(
        layer.kernel_size,
        strides=layer.strides,
        padding=layer.padding,
        depth_multiplier=layer.depth_multiplier,
        dilation_rate=layer.dilation_rate,
        use_bias=False,
        name=f"{layer.name}_depthwise",
    )
    depthwise.build((None, None, None, c))
    depthwise.kernel.assign(np.asarray(layer.depthwise_kernel))
    pointwise = L.Conv2D(layer.filters, 1, use_bias=layer.use_bias, name=layer.name)
    pointwise.build((None, None, None, c * layer.depth_multiplier))
    pointwise.kernel.assign(np.asarray(layer.pointwise_kernel))
    if layer.use_bias:
        pointwise.bias.assign(np.asarray(layer.bias))
    return [
        _twin_step(depthwise, RuleContext(ctx.preset, ctx.input_rank), "Conv"),
        _twin_step(pointwise, ctx, "Conv"),
        *_activation_step(layer.activation, f"{layer.name}_activation"),
    ]


# -- activations ---------------------------------------------------------------------------------
@layer_rule(L.ReLU)
def relu_rule(layer, ctx: RuleContext) -> list[Step]:
    max_value, slope, threshold = layer.max_value, float(layer.negative_slope), float(layer.threshold)
    if threshold == 0 and slope == 0 and max_value is None:
        return [Step(layer.name, "Relu", lambda: _copy(layer))]
    if threshold == 0 and slope == 0:
        return [Step(layer.name, "Clip", lambda: _copy(layer))]
    if threshold == 0 and max_value is None:
        return _leaky_steps(layer, slope, ctx)
    return [Step(layer.name, None, lambda: _copy(layer), float_reason="ReLU with a threshold has no ONNX quantization rule")]


@layer_rule(L.LeakyReLU)
def leaky_relu_rule(layer, ctx: RuleContext) -> list[Step]:
    return _leaky_steps(layer, float(layer.negative_slope), ctx)


def _leaky_steps(layer, slope: float, ctx: RuleContext) -> list[Step]:
    """On the NPU the slope is a multiple of 1/256 (0.1 -> 26/256); the model computes that one."""
    if ctx.preset.target.fixed_point_rules:
        slope = round_leaky_alpha(slope)
    return [Step(layer.name, "LeakyRelu", lambda: L.LeakyReLU(negative_slope=slope, name=layer.name))]


@layer_rule(L.PReLU)
def prelu_rule(layer, ctx: RuleContext) -> list[Step]:
    """ONNX's PRelu, its slope an int8 constant (per tensor, as rq-onnx and rq-torch store it)."""
    slope, preset = np.asarray(layer.alpha), ctx.preset
    return [
        Step(
            layer.name,
            "PRelu",
            lambda: QuantPReLU(slope_shape=slope.shape, preset=preset, name=layer.name),
            lambda new: new.kernel.assign(slope),
            constant_operand=True,
        )
    ]


@layer_rule(L.Activation)
def activation_rule(layer, ctx: RuleContext) -> list[Step]:
    steps = _activation_step(layer.activation, layer.name)
    return steps or [Step(layer.name, "Identity", lambda: _copy(layer))]


@layer_rule(L.Softmax)
def softmax_rule(layer, ctx: RuleContext) -> list[Step]:
    axis = layer.axis if isinstance(layer.axis, int) else None
    reason = None if axis in (-1, ctx.input_rank - 1) else "Softmax over another axis than the last is not quantized"
    return [Step(layer.name, "Softmax", lambda: _copy(layer), float_reason=reason)]


# -- layers that map to one op -------------------------------------------------------------------
def _simple(op: str, reason: Callable[[object, RuleContext], str | None] = lambda layer, ctx: None) -> Rule:
    def rule(layer, ctx: RuleContext) -> list[Step]:
        return [Step(layer.name, op, lambda: _copy(layer), _copy_weights(layer), float_reason=reason(layer, ctx))]

    return rule


def _two_inputs(layer, ctx) -> str | None:
    count = len(layer.input) if isinstance(getattr(layer, "input", None), list) else 2
    return None if count == 2 else f"{type(layer).__name__} of {count} inputs has no ONNX quantization rule (two inputs only)"


layer_rule(L.Add)(_simple("Add", _two_inputs))
layer_rule(L.Multiply)(_simple("Mul", _two_inputs))
layer_rule(L.Concatenate)(_simple("Concat"))
layer_rule(L.MaxPooling2D, L.MaxPooling1D)(_simple("MaxPool"))
layer_rule(L.AveragePooling2D, L.AveragePooling1D)(_simple("AveragePool"))
layer_rule(L.GlobalAveragePooling2D, L.GlobalAveragePooling1D)(_simple("GlobalAveragePool"))
layer_rule(L.Flatten, L.Reshape)(_simple("Reshape"))
layer_rule(L.Permute)(_simple("Transpose"))
layer_rule(L.ZeroPadding2D)(_simple("Pad"))
layer_rule(L.UpSampling2D)(_simple("Resize"))


@layer_rule(TFOpLayer)
def tf_function_rule(layer: TFOpLayer, ctx: RuleContext) -> list[Step]:
    """A tf.* function from a subclassed model's call(): its ONNX op where rq knows it."""
    reason = None
    if layer.op is None:
        reason = f"tf.{layer.function} has no quantization rule: runs in float"
    elif layer.op == "Resize" and (
        str(layer.argument("method", 2, "bilinear")) not in RESIZE_METHODS or layer.argument("antialias", 4, False)
    ):
        reason = f"tf.image.resize with method={layer.argument('method', 2)!r} or antialias is not quantized (bilinear, nearest)"
    elif layer.op == "Softmax" and layer.argument("axis", 1, None) not in (None, -1, ctx.input_rank - 1):
        reason = "Softmax over another axis than the last is not quantized"
    return [Step(layer.name, layer.op, lambda: _copy(layer), float_reason=reason)]


@layer_rule(L.LayerNormalization)
def layer_norm_rule(layer, ctx: RuleContext) -> list[Step]:
    axis = layer.axis if isinstance(layer.axis, int) else (layer.axis[0] if len(layer.axis) == 1 else None)
    if axis not in (-1, ctx.input_rank - 1):
        return [
            Step(
                layer.name, None, lambda: _copy(layer), _copy_weights(layer), float_reason="LayerNormalization over several axes"
            )
        ]
    return [
        Step(
            layer.name,
            "LayerNormalization",
            lambda: ExportableLayerNormalization.from_config(layer.get_config()),
            _copy_weights(layer),
        )
    ]


@layer_rule(L.MultiHeadAttention)
def attention_rule(layer, ctx: RuleContext) -> list[Step]:
    """Reached only by calls that quantize_model could not write as plain layers (rq_tf2.attention)."""
    reason = (
        "MultiHeadAttention called with a mask, use_causal_mask or return_attention_scores, or with use_gate, "
        "sliding_window, other attention_axes or inputs not of rank 3, runs in float (rq-tf2 quantizes its plain form only)"
    )
    return [Step(layer.name, None, lambda: _copy(layer), _copy_weights(layer), float_reason=reason)]


layer_rule(L.Dropout, L.SpatialDropout2D, L.GaussianNoise, L.Identity)(_simple("Identity"))
layer_rule(MatMul)(_simple("MatMul"))


@layer_rule(L.BatchNormalization)
def batchnorm_rule(layer, ctx: RuleContext) -> list[Step]:
    return [
        Step(
            layer.name,
            None,
            lambda: _copy(layer),
            _copy_weights(layer),
            float_reason="a BatchNormalization that does not follow a Conv / Dense (its only reader) stays in float",
        )
    ]


def is_fusable_activation(layer) -> bool:
    """A ReLU / ReLU6 (a Relu or Clip from 0 in ONNX) that fuses into the op before it."""
    if isinstance(layer, L.ReLU):
        return float(layer.threshold) == 0 and float(layer.negative_slope) == 0
    if isinstance(layer, L.Activation):
        return activation_name(layer.activation) in ("relu", "relu6")
    return type(layer).__name__ == "Relu" and not isinstance(layer, keras.layers.Layer)


def is_add(operation) -> bool:
    return isinstance(operation, L.Add) or (type(operation).__name__ == "Add" and not isinstance(operation, keras.layers.Layer))


# -- keras.ops called on symbolic tensors --------------------------------------------------------
OPERATION_OPS = {
    "Matmul": "MatMul",
    "Add": "Add",
    "Multiply": "Mul",
    "Transpose": "Transpose",
    "Reshape": "Reshape",
    "Concatenate": "Concat",
    "Softmax": "Softmax",
    "Relu": "Relu",
    "Sigmoid": "Sigmoid",
    "Tanh": "Tanh",
}


def _operation_step(operation) -> Step:
    op = OPERATION_OPS.get(type(operation).__name__)
    return Step(operation.name, op, lambda: operation)
