"""Which inputs of which ops carry quantized tensors: the registry every package reads.

An op with a rule is a *quantized op* once any of its quantized inputs comes from a
DequantizeLinear; then all of them must. ``bias_input`` names the slot whose quantized form
follows the bias rule; ``weight_axis`` gives the output-channel axis of the weight input for
per-channel scales.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import onnx

from rq_common.format.graph import GraphIndex, attribute


@dataclass(frozen=True)
class OpRule:
    op_type: str
    quantized_inputs: tuple[int, ...] | None  # None: every input (variadic ops such as Concat)
    bias_input: int | None = None
    weight_input: int | None = None
    weight_axis: Callable[[onnx.NodeProto], int] | None = None

    def quantized_slots(self, node: onnx.NodeProto) -> list[int]:
        indices = range(len(node.input)) if self.quantized_inputs is None else self.quantized_inputs
        return [i for i in indices if i < len(node.input) and node.input[i]]


OP_RULES: dict[str, OpRule] = {}


def register_op_rule(rule: OpRule) -> OpRule:
    OP_RULES[rule.op_type] = rule
    return rule


for _rule in (
    OpRule("Conv", (0, 1), bias_input=2, weight_input=1, weight_axis=lambda node: 0),
    OpRule("ConvTranspose", (0, 1), bias_input=2, weight_input=1, weight_axis=lambda node: 1),
    OpRule("Gemm", (0, 1), bias_input=2, weight_input=1, weight_axis=lambda node: 0 if attribute(node, "transB", 0) else 1),
    OpRule("MatMul", (0, 1), weight_input=1, weight_axis=lambda node: -1),
    OpRule("Add", (0, 1)),
    OpRule("Mul", (0, 1)),
    OpRule("Concat", None),
    OpRule("AveragePool", (0,)),
    OpRule("GlobalAveragePool", (0,)),
):
    register_op_rule(_rule)


def constant_role(index: GraphIndex, dq: onnx.NodeProto) -> str:
    """'bias' when a constant DequantizeLinear feeds some op's bias slot, else 'weight'."""
    for consumer, slot in index.consumers_of(dq.output[0]):
        rule = OP_RULES.get(consumer.op_type)
        if rule is not None and rule.bias_input == slot:
            return "bias"
    return "weight"
