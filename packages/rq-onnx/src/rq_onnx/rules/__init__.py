"""The op-rule registry (see registry.py); importing this package registers every rule in ops.py."""

from rq_onnx.rules import ops  # noqa: F401
from rq_onnx.rules.registry import RULES, QuantizeRule, RuleContext, register, rule_for

__all__ = ["RULES", "QuantizeRule", "RuleContext", "register", "rule_for"]
