"""When rq-onnx declines to quantize a node that rq_common.optable covers.

What an op's quantized slots, weight, bias and role are is the op table's (rq_common.optable).
This registry holds what only an ONNX graph can show: a Gemm with alpha != 1, a Conv with run-time
weights, a Gather from an embedding table. A declined node stays in float and the report says why.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx

from rq_common.optable import OpFacts

FloatReason = Callable[[onnx.NodeProto, "RuleContext"], "str | None"]


@dataclass(frozen=True)
class RuleContext:
    """What a rule may look at: constants of the graph."""

    constants: dict[str, np.ndarray]

    def is_constant(self, name: str) -> bool:
        return name in self.constants


FLOAT_REASONS: dict[str, FloatReason] = {}


def declines(*op_types: str) -> Callable[[FloatReason], FloatReason]:
    """Register a check that returns why a node of these op types stays in float (or None)."""

    def register(reason: FloatReason) -> FloatReason:
        for op_type in op_types:
            FLOAT_REASONS[op_type] = reason
        return reason

    return register


def float_reason(node: onnx.NodeProto, facts: OpFacts, ctx: RuleContext) -> str | None:
    """The op's own check first, then the table's slots that must hold constants."""
    own = FLOAT_REASONS.get(node.op_type)
    reason = own(node, ctx) if own is not None else None
    if reason:
        return reason
    for slot in facts.constants:
        if slot < len(node.input) and node.input[slot] and not ctx.is_constant(node.input[slot]):
            return f"{node.op_type} input {slot} is computed at run time"
    return None
