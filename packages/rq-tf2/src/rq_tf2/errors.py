"""rq-tf2's errors (all rq_common.RqError)."""

from rq_common.errors import RqError


class UnsupportedModelError(RqError, TypeError):
    """A model rq-tf2 cannot see the graph of (a subclassed model with its own call())."""


class NotCalibratedError(RqError, RuntimeError):
    """A quantized model was exported before calibrate() gave it scales."""


class ExportError(RqError, RuntimeError):
    """The model cannot be written as ONNX (tf2onnx cannot convert one of its ops)."""
