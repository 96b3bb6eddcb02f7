"""rq-common: the one home of rq's quantization math and of its int8 ONNX format.

numpy + onnx only: no torch, tensorflow or onnxruntime is imported here.
"""

from rq_common.calibration import Calibrator, make_chooser
from rq_common.errors import CalibrationDataError, FormatError, RqError, SpecError
from rq_common.observers import HistogramObserver, MinMaxObserver, MovingAverageMinMaxObserver, NonFinitePolicy
from rq_common.qmath import QParams, bias_qparams, compute_qparams, dequantize, fake_quantize, quantize
from rq_common.spec import (
    BiasScaleRule,
    CalibrationMethod,
    Granularity,
    Preset,
    QuantDType,
    QuantSpec,
    RoundMode,
    ScaleType,
    get_preset,
)

__version__ = "0.1.0"

__all__ = [
    "BiasScaleRule",
    "CalibrationDataError",
    "CalibrationMethod",
    "Calibrator",
    "FormatError",
    "Granularity",
    "HistogramObserver",
    "MinMaxObserver",
    "MovingAverageMinMaxObserver",
    "NonFinitePolicy",
    "Preset",
    "QParams",
    "QuantDType",
    "QuantSpec",
    "RoundMode",
    "RqError",
    "ScaleType",
    "SpecError",
    "bias_qparams",
    "compute_qparams",
    "dequantize",
    "fake_quantize",
    "get_preset",
    "make_chooser",
    "quantize",
]
