"""The steps every rq package runs, in framework-neutral terms (docs/pipeline.md): where quantizers
go (placement), how calibrated ranges become the model's numbers (finalize) and what every
package returns (QuantizeResult)."""

from rq_common.pipeline.finalize import ConstantOperand, Finalized, Layer, ModelView, Weight, finalize, weight_qparams
from rq_common.pipeline.mode import Mode
from rq_common.pipeline.placement import FloatOp, OpNode, Placement, follows_from_others, place_quantizers
from rq_common.pipeline.result import QuantizeResult

__all__ = [
    "ConstantOperand",
    "FloatOp",
    "Finalized",
    "Layer",
    "Mode",
    "ModelView",
    "OpNode",
    "Placement",
    "QuantizeResult",
    "Weight",
    "finalize",
    "follows_from_others",
    "place_quantizers",
    "weight_qparams",
]
