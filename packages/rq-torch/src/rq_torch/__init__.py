"""rq-torch: quantize nn.Modules (PTQ and QAT in your own loop) and export rq's int8 ONNX format.

qmodel = rq_torch.quantize_model(model, example_inputs, preset="npu_cnn")
rq_torch.calibrate(qmodel, loader)
rq_torch.export_onnx(qmodel, example_inputs, "model_int8.onnx")
"""

from rq_common.pipeline import QuantizeResult
from rq_torch.auto import quantize_to_target
from rq_torch.calibrate import calibrate, finalize
from rq_torch.export import export_onnx
from rq_torch.modules import (
    Add,
    Cat,
    ConvBn2d,
    MatMul,
    Mul,
    QuantConv1d,
    QuantConv2d,
    QuantConvBn2d,
    QuantConvTranspose2d,
    QuantLinear,
)
from rq_torch.quantizer import Mode, TensorQuantizer
from rq_torch.training import pre_activation
from rq_torch.transform import quantize_model, quantizer_parameters, weight_parameters

__version__ = "0.1.0"

__all__ = [
    "QuantizeResult",
    "Add",
    "Cat",
    "ConvBn2d",
    "MatMul",
    "Mode",
    "Mul",
    "QuantConv1d",
    "QuantConv2d",
    "QuantConvBn2d",
    "QuantConvTranspose2d",
    "QuantLinear",
    "pre_activation",
    "TensorQuantizer",
    "calibrate",
    "export_onnx",
    "finalize",
    "quantize_model",
    "quantize_to_target",
    "quantizer_parameters",
    "weight_parameters",
]
