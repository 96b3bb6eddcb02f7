"""Quantized twins of Keras's weighted layers, and the small layers the quantized graph needs.

A twin is a subclass of the Keras layer (same config, same kernel and bias) that fake-quantizes its
kernel (per output channel where the preset says) and its bias (int32 at input scale x weight
scale, or the NPU's own power-of-two int8 scale) and runs the layer's op with them. Activations
are split off into their own layers by quantize_model, so a twin is only the linear op.

QAT: the kernel moves every step, so its scale is derived again from it (rq_common decides, run
through tf.numpy_function): every step for min/max methods, every HISTOGRAM_REFRESH_STEPS steps for
histogram methods. A twin made with ``batchnorm`` (a Conv + BatchNormalization kept apart for QAT)
folds the BatchNorm into the kernel it quantizes, and for its first ``freeze_bn_after`` training
steps still normalizes with batch statistics (updating the moving ones), as in Jacob et al. 2018.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from rq_common import pipeline
from rq_common.qmath import QParams, bias_qparams
from rq_common.spec import BiasScaleRule, CalibrationMethod, Preset, preset_from_config, preset_to_config
from rq_tf2.fake_quant import fake_quantize, is_exporting
from rq_tf2.quantizer import PACKAGE, Mode, state_weight

MINMAX_METHODS = (CalibrationMethod.MINMAX, CalibrationMethod.POT_NONOVERFLOW)
HISTOGRAM_REFRESH_STEPS = 16


class QuantWeightedMixin:
    """Kernel and bias quantization shared by every twin. Subclasses say where the kernel's output
    channels are (``kernel_channel_axis`` of ``kernel_view``) and which op they run (``linear``)."""

    kernel_channel_axis = -1
    constant_operand = False  # the "kernel" is an op's constant operand (no multiply-accumulate, no bias)

    def __init__(self, *args, preset: Preset | dict, batchnorm: dict | None = None, freeze_bn_after: int = 0, **kwargs):
        super().__init__(*args, **kwargs)
        self.preset = preset if isinstance(preset, Preset) else preset_from_config(preset)
        self.batchnorm = dict(batchnorm) if batchnorm else None  # {"epsilon": .., "momentum": ..}
        self.freeze_bn_after = int(freeze_bn_after)
        self.mode = Mode.OFF
        self.export_marker: str | None = None
        self.supports_jit = False  # the QAT refresh runs rq_common's numpy code

    def build(self, input_shape) -> None:
        super().build(input_shape)
        self._build_rq()

    # -- the op, per layer type -------------------------------------------------------------------
    def linear(self, x, kernel):
        raise NotImplementedError

    def kernel_view(self, kernel):
        """The kernel with its output channels on one axis (a depthwise kernel flattens c x m)."""
        return kernel

    def kernel_unview(self, view):
        return view

    @property
    def weight_spec(self):
        spec = self.preset.weight
        if spec.per_channel:
            rank = len(self.kernel_view(self.kernel).shape)
            spec = spec.replace(axis=self.kernel_channel_axis % rank)
        return spec

    # -- state ----------------------------------------------------------------------------------
    def _build_rq(self) -> None:
        channels = int(self.kernel_view(self.kernel).shape[self.kernel_channel_axis])
        per_channel = self.preset.weight.per_channel
        shape = (channels,) if per_channel else ()
        self.weight_scale = state_weight(self, "weight_scale", shape, initializer="ones")
        self.weight_zero_point = state_weight(self, "weight_zero_point", shape)
        bias_shape = (channels,) if per_channel and self.preset.bias_rule is BiasScaleRule.PRODUCT else ()
        self.bias_scale = state_weight(self, "bias_scale", bias_shape, initializer="ones")
        self.input_scale = state_weight(self, "input_scale", initializer="ones")
        self.qat_steps = state_weight(self, "qat_steps", dtype="int64")
        self.calibrated = state_weight(self, "calibrated")
        if self.batchnorm is not None:
            self.bn_gamma = self.add_weight(name="bn_gamma", shape=(channels,), initializer="ones")
            self.bn_beta = self.add_weight(name="bn_beta", shape=(channels,), initializer="zeros")
            self.bn_moving_mean = self.add_weight(
                name="bn_moving_mean", shape=(channels,), initializer="zeros", trainable=False, aggregation="mean"
            )
            self.bn_moving_variance = self.add_weight(
                name="bn_moving_variance", shape=(channels,), initializer="ones", trainable=False, aggregation="mean"
            )
            self.bn_steps = state_weight(self, "bn_steps", dtype="int64")

    @property
    def quantizing(self) -> bool:
        return self.mode is Mode.QUANTIZE

    @property
    def is_calibrated(self) -> bool:
        return float(self.calibrated.numpy()) > 0

    # Keras's Conv and Dense save only kernel and bias (their own quantization modes aside); a twin
    # saves every variable it has, in creation order, as a plain Layer does
    def save_own_variables(self, store) -> None:
        keras.layers.Layer.save_own_variables(self, store)

    def load_own_variables(self, store) -> None:
        keras.layers.Layer.load_own_variables(self, store)
        self.mode = Mode.QUANTIZE if self.is_calibrated else Mode.OFF

    # -- BatchNorm kept apart for QAT -------------------------------------------------------------
    def _bn_factor(self):
        return self.bn_gamma / ops.sqrt(self.bn_moving_variance + self.batchnorm["epsilon"])

    def float_kernel(self):
        """The kernel that gets quantized (with the BatchNorm folded in, if kept apart)."""
        if self.batchnorm is None:
            return self.kernel
        return self.kernel_unview(self.kernel_view(self.kernel) * self._bn_factor())

    def float_bias(self):
        if self.batchnorm is None:
            return self.bias
        bias = self.bias if self.bias is not None else ops.zeros_like(self.bn_moving_mean)
        return (bias - self.bn_moving_mean) * self._bn_factor() + self.bn_beta

    # -- quantization parameters (rq_common decides) ----------------------------------------------
    def float_weight_view(self) -> np.ndarray:
        """The kernel as rq quantizes it (folded batch norm, channels on the weight spec's axis)."""
        return np.asarray(self.kernel_view(self.float_kernel()))

    def set_weight_qparams(self, qparams: QParams) -> None:
        self.weight_scale.assign(np.asarray(qparams.scale, np.float32).reshape(self.weight_scale.shape))
        self.weight_zero_point.assign(np.asarray(qparams.zero_point, np.float32).reshape(self.weight_zero_point.shape))
        self.calibrated.assign(1.0)

    def weight_qparams(self) -> QParams:
        spec = self.weight_spec
        axis = spec.axis if spec.per_channel else None
        return QParams(self.weight_scale.numpy(), np.rint(self.weight_zero_point.numpy()).astype(np.int64), spec, axis=axis)

    def set_input_scale(self, input_qparams: QParams) -> None:
        """The input's scale, which QAT's in-graph int32 bias scale is computed from."""
        self.input_scale.assign(np.float32(input_qparams.scale))

    def set_bias_qparams(self, qparams: QParams) -> None:
        self.bias_scale.assign(np.asarray(qparams.scale, np.float32).reshape(self.bias_scale.shape))

    def bias_qparams(self) -> QParams | None:
        if self.float_bias() is None:
            return None
        per_channel = len(self.bias_scale.shape) == 1
        spec = self.preset.bias.replace(granularity="per_channel", axis=0) if per_channel else self.preset.bias
        scale = self.bias_scale.numpy()
        return QParams(scale, np.zeros(scale.shape, np.int64), spec, axis=0 if per_channel else None)

    def _refresh(self, kernel, bias):
        """QAT: derive the kernel's scale (and an int32 bias's) from the current kernel, in graph."""

        def derive(kernel_np, bias_np, input_scale, step, scale, zero_point, bias_scale):
            if self.preset.weight_method not in MINMAX_METHODS and int(step) % HISTOGRAM_REFRESH_STEPS:
                return scale, zero_point, bias_scale
            spec = self.weight_spec
            qp = pipeline.weight_qparams(kernel_np, spec.axis if spec.per_channel else None, self.preset, self.name)
            scale = np.asarray(qp.scale, np.float32).reshape(scale.shape)
            zero_point = np.asarray(qp.zero_point, np.float32).reshape(zero_point.shape)
            if bias_np.size and self.preset.bias_rule is BiasScaleRule.PRODUCT:
                input_qp = QParams(np.float32(input_scale), np.int64(0), self.preset.activation)  # only its scale counts
                bias_qp = bias_qparams(bias_np, input_qp, qp, self.preset.bias, self.preset.bias_rule)
                bias_scale = np.asarray(bias_qp.scale, np.float32).reshape(bias_scale.shape)
            return scale, zero_point, bias_scale

        bias_value = tf.stop_gradient(bias) if bias is not None else tf.zeros((0,))
        outputs = tf.numpy_function(
            derive,
            [
                tf.stop_gradient(self.kernel_view(kernel)),
                bias_value,
                self.input_scale,
                self.qat_steps,
                self.weight_scale,
                self.weight_zero_point,
                self.bias_scale,
            ],
            [tf.float32, tf.float32, tf.float32],
            stateful=True,
        )
        for variable, value in zip((self.weight_scale, self.weight_zero_point, self.bias_scale), outputs):
            variable.assign(tf.reshape(value, variable.shape))
        self.qat_steps.assign_add(1)

    # -- forward --------------------------------------------------------------------------------
    def quantized_kernel(self, kernel):
        spec = self.weight_spec
        view = fake_quantize(
            self.kernel_view(kernel),
            self.weight_scale,
            self.weight_zero_point,
            spec.qmin,
            spec.qmax,
            spec.axis if spec.per_channel else None,
        )
        return self.kernel_unview(view)

    def quantized_bias(self, bias):
        if bias is None:
            return None
        per_channel = len(self.bias_scale.shape) == 1
        spec = self.preset.bias
        return fake_quantize(
            bias, self.bias_scale, tf.zeros_like(self.bias_scale), spec.qmin, spec.qmax, 0 if per_channel else None
        )

    def _with_bias(self, y, bias):
        return y if bias is None else ops.add(y, bias)

    def call(self, inputs, training=None):
        if is_exporting() and self.export_marker:
            with tf.name_scope(self.export_marker):
                return self._forward(inputs, False)
        return self._forward(inputs, bool(training))

    def _forward(self, inputs, training: bool):
        kernel, bias = self.float_kernel(), self.float_bias()
        if self.quantizing:
            if training:
                self._refresh(kernel, bias)
            kernel, bias = self.quantized_kernel(kernel), self.quantized_bias(bias)
        y = self.linear(inputs, kernel)
        if self.batchnorm is not None and training:
            learning = self.bn_steps < self.freeze_bn_after
            return tf.where(learning, self._batch_norm_step(y, learning), self._with_bias(y, bias))
        return self._with_bias(y, bias)

    def _batch_norm_step(self, y, learning):
        """The conv output (with the folded kernel) unfolded again, then BatchNorm on batch
        statistics, whose moving averages move while ``learning``. No tf.cond around the updates:
        under MirroredStrategy they are a cross-replica mean, which control flow cannot hold."""
        y = y / self._bn_factor()
        if self.bias is not None:
            y = y + self.bias
        axes = list(range(len(y.shape) - 1))
        mean, variance = tf.nn.moments(y, axes)
        momentum = self.batchnorm["momentum"]
        for moving, batch in ((self.bn_moving_mean, mean), (self.bn_moving_variance, variance)):
            moving.assign(tf.where(learning, moving * momentum + batch * (1 - momentum), moving))
        self.bn_steps.assign_add(tf.cast(learning, tf.int64))
        return (y - mean) / tf.sqrt(variance + self.batchnorm["epsilon"]) * self.bn_gamma + self.bn_beta

    # -- saving ---------------------------------------------------------------------------------
    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "preset": preset_to_config(self.preset),
            "batchnorm": self.batchnorm,
            "freeze_bn_after": self.freeze_bn_after,
        }


@keras.saving.register_keras_serializable(package=PACKAGE)
class QuantConv2D(QuantWeightedMixin, keras.layers.Conv2D):
    def linear(self, x, kernel):
        return self.convolution_op(x, kernel)


@keras.saving.register_keras_serializable(package=PACKAGE)
class QuantConv1D(QuantWeightedMixin, keras.layers.Conv1D):
    def linear(self, x, kernel):
        return self.convolution_op(x, kernel)


@keras.saving.register_keras_serializable(package=PACKAGE)
class QuantDepthwiseConv2D(QuantWeightedMixin, keras.layers.DepthwiseConv2D):
    """Kernel (h, w, c, m): output channel i*m + j, as ONNX's grouped Conv numbers them."""

    def kernel_view(self, kernel):
        h, w, c, m = kernel.shape
        return ops.reshape(kernel, (h, w, c * m))

    def kernel_unview(self, view):
        return ops.reshape(view, self.kernel.shape)

    def linear(self, x, kernel):
        return ops.depthwise_conv(
            x, kernel, strides=self.strides, padding=self.padding, dilation_rate=self.dilation_rate, data_format=self.data_format
        )


@keras.saving.register_keras_serializable(package=PACKAGE)
class QuantConv2DTranspose(QuantWeightedMixin, keras.layers.Conv2DTranspose):
    """Kernel (h, w, out, in): output channels on axis 2."""

    kernel_channel_axis = 2

    def linear(self, x, kernel):
        return ops.conv_transpose(
            x,
            kernel,
            strides=list(self.strides),
            padding=self.padding,
            output_padding=self.output_padding,
            dilation_rate=self.dilation_rate,
            data_format=self.data_format,
        )


@keras.saving.register_keras_serializable(package=PACKAGE)
class QuantDense(QuantWeightedMixin, keras.layers.Dense):
    """Kernel (in, out). On 2-d inputs tf2onnx writes Gemm (the bias in its int bias slot); on more
    dims quantize_model gives the bias its own BiasAdd layer, as MatMul + Add is what gets written."""

    def linear(self, x, kernel):
        return ops.matmul(x, kernel)


@keras.saving.register_keras_serializable(package=PACKAGE)
class BiasAdd(QuantWeightedMixin, keras.layers.Layer):
    """x + bias, the bias a constant quantized with the weight spec per tensor (how rq-onnx stores
    the constant operand of an Add): the bias of a Dense on 3-d inputs."""

    constant_operand = True

    def __init__(self, units: int, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.preset = self.preset.override(per_channel=False)

    def build(self, input_shape):
        self.kernel = self.add_weight(name="bias", shape=(self.units,), initializer="zeros")
        self.bias = None
        self._build_rq()
        self.built = True

    def linear(self, x, kernel):
        return ops.add(x, kernel)

    def get_config(self):
        return {**super().get_config(), "units": self.units}


@keras.saving.register_keras_serializable(package=PACKAGE)
class QuantPReLU(QuantWeightedMixin, keras.layers.Layer):
    """PReLU with its slope fake-quantized per tensor, as rq-onnx stores PRelu's slope. Computed as
    relu(x) - slope * relu(-x), the written-out form rq_common's fusion makes one ONNX PRelu."""

    constant_operand = True

    def __init__(self, slope_shape, **kwargs):
        super().__init__(**kwargs)
        self.slope_shape = tuple(slope_shape)
        self.preset = self.preset.override(per_channel=False)

    def build(self, input_shape):
        self.kernel = self.add_weight(name="slope", shape=self.slope_shape, initializer="zeros")
        self.bias = None
        self._build_rq()
        self.built = True

    def linear(self, x, kernel):
        return ops.relu(x) - kernel * ops.relu(-x)

    def get_config(self):
        return {**super().get_config(), "slope_shape": list(self.slope_shape)}


@keras.saving.register_keras_serializable(package=PACKAGE)
class MatMul(keras.layers.Layer):
    """a @ b (b transposed on its last two axes with ``transpose_b``): the activation x activation
    product of attention, as a layer, since Keras has none."""

    def __init__(self, transpose_b: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.transpose_b = transpose_b

    def call(self, inputs):
        a, b = inputs
        if self.transpose_b:
            b = ops.swapaxes(b, -1, -2)
        return ops.matmul(a, b)

    def compute_output_shape(self, input_shapes):
        a, b = input_shapes
        return (*a[:-1], b[-2] if self.transpose_b else b[-1])

    def get_config(self):
        return {**super().get_config(), "transpose_b": self.transpose_b}


QUANT_TWINS: dict[type, type] = {
    keras.layers.Conv2D: QuantConv2D,
    keras.layers.Conv1D: QuantConv1D,
    keras.layers.DepthwiseConv2D: QuantDepthwiseConv2D,
    keras.layers.Conv2DTranspose: QuantConv2DTranspose,
    keras.layers.Dense: QuantDense,
}


@keras.saving.register_keras_serializable(package=PACKAGE)
class ExportableLayerNormalization(keras.layers.LayerNormalization):
    """keras.layers.LayerNormalization whose ops the exporter can find: tf2onnx writes a Keras
    LayerNormalization as a dozen elementwise ops, which rq_tf2.export folds back into one ONNX
    LayerNormalization (opset 17), the op the int8 format quantizes around."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.export_marker: str | None = None

    def call(self, inputs):
        if is_exporting() and self.export_marker:
            with tf.name_scope(self.export_marker):
                return super().call(inputs)
        return super().call(inputs)
