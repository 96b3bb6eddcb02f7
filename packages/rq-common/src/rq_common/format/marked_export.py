"""From a marked tf2onnx export to the int8 format: the steps rq-tf2 and rq-tf1 share.

Both packages export with tf2onnx after putting markers in the names of what their quantizers and
weighted ops emit (rq_common.format.markers). What follows the conversion is the same for both:
stable names, the exact Q/DQ parameters, the canonicalizer (MatMul + bias as Gemm, then the exact
weight QParams), short names, and the validator.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import onnx

from rq_common.format.canonicalize import CanonicalizeResult, canonicalize
from rq_common.format.graph import order_nodes_from_outputs, record_float_nodes
from rq_common.format.markers import (
    LayerParams,
    marked_constant_qparams,
    name_constants_by_first_reader,
    renumber_generated_names,
    set_exact_qdq_params,
    shorten_names,
)
from rq_common.format.validate import Violation, validate
from rq_common.qmath import QParams
from rq_common.spec import Preset


def unconverted_ops(model: onnx.ModelProto) -> list[str]:
    """Op types an exporter left as the framework's own (not ONNX ops): it had no converter."""
    return sorted({n.op_type for n in model.graph.node if not onnx.defs.has(n.op_type, n.domain or "")})


def finish_marked_export(
    model: onnx.ModelProto,
    preset: Preset,
    activation_qparams: Mapping[str, QParams],
    layers: Mapping[str, LayerParams],
    *,
    doc_string: str,
    not_a_layer: Callable[[str], bool],
    is_float_node: Callable[[str], bool],
    has_float_ops: bool,
    rewrite: Callable[[onnx.ModelProto], None] = lambda model: None,
) -> tuple[CanonicalizeResult, list[Violation]]:
    """The int8 format of a converted, marked ``model`` and its violations.

    ``activation_qparams``: marker -> the exact QParams of that quantizer's Q/DQ pair; ``layers``:
    marker -> what that weighted op used. ``rewrite`` runs once the Q/DQ pairs are exact (rq-tf2
    fuses LayerNormalization there). ``not_a_layer``: the name segments shorten_names drops;
    ``is_float_node``: which nodes (by their exported name) run in float on purpose.
    """
    order_nodes_from_outputs(model)
    renumber_generated_names(model)
    model.graph.doc_string = doc_string
    set_exact_qdq_params(model, activation_qparams)
    rewrite(model)
    del model.graph.value_info[:]  # tensor types changed (uint8 -> the preset's); inferred again
    model = onnx.shape_inference.infer_shapes(model)
    # the constants are claimed once the canonicalizer has made MatMul + bias a Gemm (bias slot)
    result = canonicalize(model, preset, weight_qparams=lambda fused: marked_constant_qparams(fused, layers))
    float_nodes = [n.name for n in result.model.graph.node if is_float_node(n.name)]
    renamed = shorten_names(result.model, drop=not_a_layer)
    name_constants_by_first_reader(result.model)
    record_float_nodes(result.model, [renamed[n] for n in float_nodes])  # for a later `rq-onnx check`
    violations = validate(result.model, preset, required_ops=() if has_float_ops else None)
    return result, violations
