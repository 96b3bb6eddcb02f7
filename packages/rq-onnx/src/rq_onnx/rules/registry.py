"""What rq-onnx does with each op type: one small rule per op, registered by op type.

A rule names the input slots whose tensors get quantized (run-time tensors get Q/DQ, constants
are stored as int8 weights), the bias slot, and whether the output is a pass-through that keeps
its input's scale (shape ops, MaxPool, Pad). ``float_reason`` lets a rule decline a node it
cannot quantize soundly; the node then stays float and the report says why.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx

from rq_common.format.oprules import OP_RULES as FORMAT_RULES

FloatReason = Callable[[onnx.NodeProto, "RuleContext"], "str | None"]


@dataclass(frozen=True)
class RuleContext:
    """What a rule may look at: constants of the graph."""

    constants: dict[str, np.ndarray]

    def is_constant(self, name: str) -> bool:
        return name in self.constants


@dataclass(frozen=True)
class QuantizeRule:
    op_type: str
    inputs: tuple[int, ...] | None = (0,)  # slots to quantize; None: every input (Concat)
    bias_input: int | None = None
    pass_through: bool = False  # output keeps input 0's scale; quantized only when input 0 is
    float_reason: FloatReason | None = None

    def slots(self, node: onnx.NodeProto) -> list[int]:
        indices = range(len(node.input)) if self.inputs is None else self.inputs
        return [i for i in indices if i < len(node.input) and node.input[i]]

    @classmethod
    def like_format(cls, op_type: str, **extra) -> QuantizeRule:
        """The rule whose quantized inputs and bias slot are those the int8 format checks
        (rq_common.format.OP_RULES), so that the two can never disagree."""
        fmt = FORMAT_RULES[op_type]
        return cls(op_type, fmt.quantized_inputs, bias_input=fmt.bias_input, **extra)


RULES: dict[str, QuantizeRule] = {}


def register(rule: QuantizeRule) -> QuantizeRule:
    RULES[rule.op_type] = rule
    return rule


def rule_for(op_type: str) -> QuantizeRule | None:
    return RULES.get(op_type)
