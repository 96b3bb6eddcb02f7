"""rq-onnx: post-training quantization of ONNX models into rq's int8 format.

from rq_onnx import quantize_static
quantize_static("model.onnx", "model_int8.onnx", reader, preset="npu_cnn")
"""

from rq_common.pipeline import QuantizeResult
from rq_onnx.api import quantize_static
from rq_onnx.calibrate import CalibrationDataReader
from rq_onnx.readers import (
    ArrayReader,
    FeedListReader,
    ImageFolderReader,
    NpyFolderReader,
    NpzReader,
    RandomDataReader,
    open_calibration_data,
)

__version__ = "0.1.0"

__all__ = [
    "ArrayReader",
    "FeedListReader",
    "CalibrationDataReader",
    "ImageFolderReader",
    "NpyFolderReader",
    "NpzReader",
    "QuantizeResult",
    "RandomDataReader",
    "open_calibration_data",
    "quantize_static",
]
