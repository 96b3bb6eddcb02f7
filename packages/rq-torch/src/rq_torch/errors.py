"""rq-torch's errors (all rq_common.RqError)."""

from rq_common.errors import NotCalibratedError, RqError


class TraceError(RqError, RuntimeError):
    """The model cannot be traced by torch.fx; the message names the line and the fix."""


__all__ = ["NotCalibratedError", "RqError", "TraceError"]
