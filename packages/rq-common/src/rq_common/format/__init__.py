"""The rq int8 ONNX format (docs/format.md): builders, canonicalizer and validator."""

from rq_common.format import npu_checks  # noqa: F401  (registers the NPU checks)
from rq_common.format.builder import (
    QdqPieces,
    insert_qdq,
    insert_qdq_many,
    make_qdq,
    make_quantized_constant,
    qparams_initializers,
    replace_initializer_with_quantized,
    replace_initializers_with_quantized,
)
from rq_common.format.canonicalize import DEFAULT_OPSET, MIN_OPSET, REWRITES, CanonicalizeResult, canonicalize
from rq_common.format.gemm import fuse_matmul_bias
from rq_common.format.graph import GraphIndex, QdqParams, output_qdq_params, qdq_params
from rq_common.format.hard_activations import divisions_to_multiplications, fuse_written_out_activations
from rq_common.format.layernorm import fuse_layer_norms
from rq_common.format.smooth_activations import find_smooth_activations, fuse_smooth_activations
from rq_common.format.validate import CHECKS, Violation, ViolationKind, require_valid, validate

__all__ = [
    "CHECKS",
    "DEFAULT_OPSET",
    "MIN_OPSET",
    "REWRITES",
    "CanonicalizeResult",
    "GraphIndex",
    "QdqParams",
    "QdqPieces",
    "Violation",
    "ViolationKind",
    "canonicalize",
    "divisions_to_multiplications",
    "find_smooth_activations",
    "fuse_written_out_activations",
    "fuse_layer_norms",
    "fuse_matmul_bias",
    "fuse_smooth_activations",
    "insert_qdq",
    "insert_qdq_many",
    "make_qdq",
    "make_quantized_constant",
    "output_qdq_params",
    "qdq_params",
    "qparams_initializers",
    "replace_initializer_with_quantized",
    "replace_initializers_with_quantized",
    "require_valid",
    "validate",
]
