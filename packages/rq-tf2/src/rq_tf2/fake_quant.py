"""Fake quantization in TensorFlow, bit-exact with rq_common's reference and ONNX Runtime.

ONNX QuantizeLinear divides by the scale and rounds half to even. TensorFlow's own ops do not do
exactly that: FakeQuantWithMinMaxVars rounds half up and nudges the range, and
quantize_and_dequantize_v4 multiplies by the inverse scale and has no zero point. So the forward
pass here is written out: float32 division, tf.round (half to even), clip, and back; rounding
passes the gradient straight through and clipping stops it outside the range.

Only while exporting does a quantizer emit FakeQuantWithMinMaxVars instead: tf2onnx turns that
op into QuantizeLinear / DequantizeLinear, and rq_tf2.export then writes the exact scale and zero
point into them, so the ONNX model computes what this module computes.
"""

from __future__ import annotations

import contextlib
import threading

import tensorflow as tf

_STATE = threading.local()


@contextlib.contextmanager
def exporting():
    """Quantizers emit export ops (and name scopes that let the exporter find them) inside."""
    previous = getattr(_STATE, "exporting", False)
    _STATE.exporting = True
    try:
        yield
    finally:
        _STATE.exporting = previous


def is_exporting() -> bool:
    return getattr(_STATE, "exporting", False)


def _along(value: tf.Tensor, axis: int | None, rank: int) -> tf.Tensor:
    if axis is None:
        return value
    shape = [1] * rank
    shape[axis % rank] = -1
    return tf.reshape(value, shape)


def fake_quantize(x, scale, zero_point, qmin: int, qmax: int, axis: int | None = None) -> tf.Tensor:
    """round_half_even(x / scale) + z, clipped to [qmin, qmax], minus z, times scale (per channel
    along ``axis`` when given)."""
    x = tf.convert_to_tensor(x)
    scale = _along(tf.cast(scale, x.dtype), axis, x.shape.rank)
    zero_point = _along(tf.cast(zero_point, x.dtype), axis, x.shape.rank)
    scaled = x / scale
    rounded = scaled + tf.stop_gradient(tf.round(scaled) - scaled)
    return (tf.clip_by_value(rounded + zero_point, float(qmin), float(qmax)) - zero_point) * scale


def export_fake_quantize(x, scale, zero_point, qmin: int, qmax: int) -> tf.Tensor:
    """The op tf2onnx writes as QuantizeLinear/DequantizeLinear (8-bit, per tensor). Its own
    rounding is not what ONNX does; the exporter replaces its parameters by the exact ones."""
    scale = tf.cast(scale, tf.float32)
    zero_point = tf.cast(zero_point, tf.float32)
    low = (float(qmin) - zero_point) * scale
    high = (float(qmax) - zero_point) * scale
    return tf.quantization.fake_quant_with_min_max_vars(x, low, high, num_bits=8)
