"""rq-onnx's reasons to keep covered nodes in float (see registry.py); importing this package
registers every check in ops.py."""

from rq_onnx.rules import ops  # noqa: F401
from rq_onnx.rules.registry import FLOAT_REASONS, RuleContext, declines, float_reason

__all__ = ["FLOAT_REASONS", "RuleContext", "declines", "float_reason"]
