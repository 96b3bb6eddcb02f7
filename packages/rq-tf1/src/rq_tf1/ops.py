"""The ONNX op tf2onnx writes for each TF op: rq-tf1's key into rq_common.optable.

Most TF ops always write one ONNX op; a few depend on the node (an Add with a constant operand
stays float, a Mean is a ReduceMean only over the spatial axes).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from rq_common.optable import facts_for
from rq_tf1.graphdef import NodeDef, const_value

OpRule = Callable[[NodeDef, dict], "str | None"]
TF_OP_RULES: dict[str, OpRule] = {}
TF_ONNX_OPS: dict[str, str] = {}  # the TF ops that always write one ONNX op


def tf_rule(*ops: str, onnx: str | None = None):
    def register(rule: OpRule) -> OpRule:
        for op in ops:
            TF_OP_RULES[op] = rule
        return rule

    if onnx is not None:
        TF_ONNX_OPS.update(dict.fromkeys(ops, onnx))
        return register(lambda node, by_name: onnx)
    return register


tf_rule("Conv2D", "DepthwiseConv2dNative", onnx="Conv")
tf_rule("MatMul", onnx="Gemm")
tf_rule("Relu", onnx="Relu")
tf_rule("Relu6", onnx="Clip")
tf_rule("LeakyRelu", onnx="LeakyRelu")
tf_rule("Sigmoid", onnx="Sigmoid")
tf_rule("Tanh", onnx="Tanh")
tf_rule("Softmax", onnx="Softmax")
tf_rule("ConcatV2", onnx="Concat")
tf_rule("MaxPool", onnx="MaxPool")
tf_rule("AvgPool", onnx="AveragePool")
tf_rule("Reshape", onnx="Reshape")
tf_rule("Squeeze", onnx="Squeeze")
tf_rule("Identity", onnx="Identity")
tf_rule("Pad", onnx="Pad")
tf_rule("ResizeBilinear", "ResizeNearestNeighbor", onnx="Resize")


@tf_rule("Add", "AddV2", "Mul")
def binary_rule(node: NodeDef, by_name: dict) -> str | None:
    """Two run-time operands only: a constant operand would stay a float constant."""
    if any(const_value(by_name.get(ref.split(":")[0])) is not None for ref in node.input):
        return None
    return "Mul" if node.op == "Mul" else "Add"


@tf_rule("Mean")
def mean_rule(node: NodeDef, by_name: dict) -> str | None:
    axes = const_value(by_name.get(node.input[1].split(":")[0]))
    return "ReduceMean" if axes is not None and sorted(np.atleast_1d(axes).tolist()) == [1, 2] else None


# the TF ops with a constant weight (Conv2D, DepthwiseConv2dNative, MatMul): folded with their BiasAdd
WEIGHTED_OPS = frozenset(op for op, onnx_op in TF_ONNX_OPS.items() if facts_for(onnx_op).weight is not None)
