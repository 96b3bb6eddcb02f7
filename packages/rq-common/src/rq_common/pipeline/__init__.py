"""The steps every rq package runs, in framework-neutral terms (docs/pipeline.md): where quantizers
go (placement) and how calibrated ranges become the model's numbers (finalize)."""

from rq_common.pipeline.finalize import Finalized, Layer, ModelView, Weight, finalize, weight_qparams
from rq_common.pipeline.placement import FloatOp, OpNode, Placement, follows_from_others, place_quantizers

__all__ = [
    "FloatOp",
    "Finalized",
    "Layer",
    "ModelView",
    "OpNode",
    "Placement",
    "Weight",
    "finalize",
    "follows_from_others",
    "place_quantizers",
    "weight_qparams",
]
