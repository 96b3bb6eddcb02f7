"""rq-torch's errors (all rq_common.RqError)."""

from rq_common.errors import RqError


class TraceError(RqError, RuntimeError):
    """The model cannot be traced by torch.fx; the message names the line and the fix."""


class NotCalibratedError(RqError, RuntimeError):
    """A quantized model was used for export (or QAT) before calibrate() gave it scales."""
