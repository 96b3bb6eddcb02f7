"""Which ops rq quantizes, by ONNX op type: the coverage every framework package follows.

OWN_SCALE_OPS: their inputs are quantized and their output gets its own calibrated scale.
PASS_THROUGH_OPS: their output is their input's values rearranged (or a max of them), so it keeps
the input's scale, and is quantized only when the input is.
Anything else runs in float, and the package's report says so.
"""

OWN_SCALE_OPS = frozenset(
    {
        "Conv",
        "ConvTranspose",
        "Gemm",
        "MatMul",
        "Add",
        "Mul",
        "Concat",
        "AveragePool",
        "GlobalAveragePool",
        "Relu",
        "Clip",
        "LeakyRelu",
        "PRelu",
        "Sigmoid",
        "HardSigmoid",
        "HardSwish",
        "Tanh",
        "Softmax",
        "Resize",
        "ReduceMean",
        "LayerNormalization",
        "Erf",
        "Gelu",
    }
)
PASS_THROUGH_OPS = frozenset(
    {"Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Slice", "Split", "Gather", "MaxPool", "Pad"}
)
