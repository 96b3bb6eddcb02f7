"""rq-tf2: quantize Keras 3 models (PTQ, and QAT with compile()/fit()) and export rq's int8 ONNX.

qmodel = rq_tf2.quantize_model(model, preset="npu_cnn")
rq_tf2.calibrate(qmodel, calib_dataset)
rq_tf2.export_onnx(qmodel, "model_int8.onnx")
"""

from rq_common.pipeline import QuantizeResult
from rq_tf2.auto import quantize_to_target
from rq_tf2.calibrate import calibrate, finalize
from rq_tf2.errors import ExportError, NotCalibratedError, UnsupportedModelError
from rq_tf2.export import export_onnx
from rq_tf2.layers import (
    BiasAdd,
    MatMul,
    QuantConv1D,
    QuantConv2D,
    QuantConv2DTranspose,
    QuantDense,
    QuantDepthwiseConv2D,
    QuantPReLU,
)
from rq_tf2.quantizer import ActivationQuantizer, Mode
from rq_tf2.serialization import custom_objects, load_model
from rq_tf2.training import pre_activation
from rq_tf2.transform import LayerConfig, quantize_model

__version__ = "0.1.0"

__all__ = [
    "QuantizeResult",
    "ActivationQuantizer",
    "BiasAdd",
    "ExportError",
    "LayerConfig",
    "MatMul",
    "Mode",
    "NotCalibratedError",
    "QuantConv1D",
    "QuantConv2D",
    "QuantConv2DTranspose",
    "QuantDense",
    "QuantDepthwiseConv2D",
    "QuantPReLU",
    "UnsupportedModelError",
    "calibrate",
    "custom_objects",
    "export_onnx",
    "finalize",
    "load_model",
    "pre_activation",
    "quantize_model",
    "quantize_to_target",
]
