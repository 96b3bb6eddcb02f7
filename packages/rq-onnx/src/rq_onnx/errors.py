"""rq-onnx's errors; all are rq_common.RqError, so callers can catch one type."""

from rq_common.errors import RqError


class ModelLoadError(RqError, ValueError):
    """The model file cannot be read as ONNX, or its opset cannot be brought to 17."""


class CalibrationReaderError(RqError, ValueError):
    """The calibration data does not fit the model (names, shapes, types) or is missing."""
