"""Errors that rq raises on bad input: each names the problem and the fix."""


class RqError(Exception):
    """Base class of every error rq raises on purpose."""


class SpecError(RqError, ValueError):
    """An impossible quantization spec or preset override; names the offending field."""

    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(f"{field}: {message}")


class CalibrationDataError(RqError, ValueError):
    """Calibration data that cannot give a range: empty, NaN, or infinite values."""


class FormatError(RqError, ValueError):
    """An ONNX model that cannot be brought into the rq int8 format."""
