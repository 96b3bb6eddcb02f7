"""rq-tf2's errors (all rq_common.RqError)."""

from rq_common.errors import NotCalibratedError, RqError


class UnsupportedModelError(RqError, TypeError):
    """A model rq-tf2 cannot see the graph of (a subclassed model with its own call())."""


class ExportError(RqError, RuntimeError):
    """The model cannot be written as ONNX (tf2onnx cannot convert one of its ops)."""


__all__ = ["NotCalibratedError", "RqError", "UnsupportedModelError", "ExportError"]
