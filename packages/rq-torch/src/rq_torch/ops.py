"""What ONNX op each traced torch call becomes, so that rq-torch places quantizers by the same
coverage and NPU rules as rq-onnx (rq_common.optable)."""

from __future__ import annotations

import operator

import torch
import torch.nn.functional as F
from torch import fx, nn

from rq_torch import modules as rq_modules

MODULE_OPS: dict[type[nn.Module], str] = {
    rq_modules.ConvBn2d: "Conv",
    nn.Conv1d: "Conv",
    nn.Conv2d: "Conv",
    nn.ConvTranspose2d: "ConvTranspose",
    nn.Linear: "Gemm",
    nn.ReLU: "Relu",
    nn.ReLU6: "Clip",
    nn.LeakyReLU: "LeakyRelu",
    nn.PReLU: "PRelu",
    nn.Sigmoid: "Sigmoid",
    nn.Hardsigmoid: "HardSigmoid",
    nn.Hardswish: "HardSwish",
    nn.Tanh: "Tanh",
    nn.Softmax: "Softmax",
    nn.GELU: "Gelu",
    nn.LayerNorm: "LayerNormalization",
    nn.MaxPool1d: "MaxPool",
    nn.MaxPool2d: "MaxPool",
    nn.AvgPool1d: "AveragePool",
    nn.AvgPool2d: "AveragePool",
    nn.Flatten: "Flatten",
    nn.Identity: "Identity",
    nn.Dropout: "Identity",  # every dropout is the identity in eval mode, and the exporter drops it
    nn.Dropout1d: "Identity",
    nn.Dropout2d: "Identity",
    nn.Dropout3d: "Identity",
    nn.AlphaDropout: "Identity",
    nn.FeatureAlphaDropout: "Identity",
    nn.Upsample: "Resize",
    rq_modules.Add: "Add",
    rq_modules.Mul: "Mul",
    rq_modules.MatMul: "MatMul",
    rq_modules.Cat: "Concat",
}

FUNCTION_OPS: dict[object, str] = {
    operator.add: "Add",
    torch.add: "Add",
    operator.mul: "Mul",
    torch.mul: "Mul",
    operator.matmul: "MatMul",
    torch.matmul: "MatMul",
    torch.bmm: "MatMul",
    torch.cat: "Concat",
    torch.concat: "Concat",
    F.relu: "Relu",
    torch.relu: "Relu",
    F.relu6: "Clip",
    F.leaky_relu: "LeakyRelu",
    torch.sigmoid: "Sigmoid",
    F.sigmoid: "Sigmoid",
    torch.tanh: "Tanh",
    F.hardswish: "HardSwish",
    F.hardsigmoid: "HardSigmoid",
    F.softmax: "Softmax",
    torch.softmax: "Softmax",
    F.gelu: "Gelu",
    torch.erf: "Erf",
    F.layer_norm: "LayerNormalization",
    F.max_pool2d: "MaxPool",
    F.avg_pool2d: "AveragePool",
    torch.flatten: "Flatten",
    torch.reshape: "Reshape",
    torch.transpose: "Transpose",
    torch.permute: "Transpose",
    torch.squeeze: "Squeeze",
    torch.unsqueeze: "Unsqueeze",
    F.interpolate: "Resize",
    F.pad: "Pad",
    F.dropout: "Identity",
    torch.mean: "ReduceMean",  # the exporter writes ReduceMean for any dims (Tensor.mean too)
}

METHOD_OPS: dict[str, str] = {
    "view": "Reshape",
    "reshape": "Reshape",
    "flatten": "Flatten",
    "permute": "Transpose",
    "transpose": "Transpose",
    "squeeze": "Squeeze",
    "unsqueeze": "Unsqueeze",
    "relu": "Relu",
    "sigmoid": "Sigmoid",
    "tanh": "Tanh",
    "softmax": "Softmax",
    "add": "Add",
    "mul": "Mul",
    "matmul": "MatMul",
    "mean": "ReduceMean",
    "contiguous": "Identity",
}


def onnx_op(gm: fx.GraphModule, node: fx.Node) -> str | None:
    """The ONNX op type this node exports to, or None when rq-torch has no rule for it."""
    if node.op == "call_module":
        module = gm.get_submodule(node.target)
        if isinstance(module, nn.AdaptiveAvgPool2d) and tuple(_pair(module.output_size)) == (1, 1):
            return "GlobalAveragePool"
        for cls in type(module).__mro__:
            if cls in MODULE_OPS:
                return MODULE_OPS[cls]
        return None
    if node.op == "call_function":
        if node.target is F.adaptive_avg_pool2d and tuple(
            _pair(node.args[1] if len(node.args) > 1 else node.kwargs.get("output_size"))
        ) == (1, 1):
            return "GlobalAveragePool"
        if node.target is F.hardtanh and _hardtanh_is_relu6(node):
            return "Clip"
        if node.target is operator.getitem:
            return "Slice"
        return FUNCTION_OPS.get(node.target)
    if node.op == "call_method":
        return METHOD_OPS.get(node.target)
    return None


def _pair(size) -> tuple:
    return (size, size) if isinstance(size, int) else tuple(size)


def _hardtanh_is_relu6(node: fx.Node) -> bool:
    low = node.args[1] if len(node.args) > 1 else node.kwargs.get("min_val", -1.0)
    return low == 0.0
