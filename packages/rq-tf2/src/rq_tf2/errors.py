"""rq-tf2's errors (all rq_common.RqError)."""

from rq_common.errors import NotCalibratedError, RqError


class UnsupportedModelError(RqError, TypeError):
    """A model rq-tf2 cannot see the graph of (a subclassed model with its own call())."""


class ExportError(RqError, RuntimeError):
    """The model cannot be written as ONNX (tf2onnx cannot convert one of its ops)."""


def unwrapped(error: BaseException) -> BaseException:
    """The rq error inside Keras's wrapping, else ``error``. Keras 3 re-raises an error from a
    layer's call() as a new exception (of its class, or a RuntimeError) whose text adds the call's
    arguments over several lines; the original is its __context__."""
    inner = error
    while getattr(inner, "_keras_call_info_injected", False) and inner.__context__ is not None:
        inner = inner.__context__
    return inner if isinstance(inner, RqError) else error


__all__ = ["NotCalibratedError", "RqError", "UnsupportedModelError", "ExportError", "unwrapped"]
