"""The int8 ONNX of a quantized frozen graph: tf2onnx's from_graph_def, then the exact Q/DQ
parameters and the int8 weights (found by the markers quantized_graph put in the names), then
rq_common's canonicalizer and validator."""

from __future__ import annotations

import logging
import re

import onnx

from rq_common.format import Violation, canonicalize, fuse_matmul_bias, validate
from rq_common.format.markers import (
    LayerParams,
    marked_constant_qparams,
    name_constants_by_first_reader,
    renumber_generated_names,
    set_exact_qdq_params,
    shorten_names,
)
from rq_common.qmath import QParams
from rq_common.spec import Preset
from rq_tf1.calibrate import Scales
from rq_tf1.errors import GraphError
from rq_tf1.graphdef import GraphDef, tensor_name
from rq_tf1.quantized_graph import QUANT_MARKER, WEIGHT_MARKER

# name segments that are not the graph's own: the markers, and the scope of a quantizer on a float tensor
_NOT_A_LAYER = re.compile("^({}|{}|float)$".format(QUANT_MARKER.format(r"\d+"), WEIGHT_MARKER.format(r"\d+")))


def to_onnx(
    graph_def: GraphDef,
    inputs: list[str],
    outputs: list[str],
    activation_markers: dict[str, QParams],
    weight_markers: dict[str, str],
    scales: Scales,
    preset: Preset,
    float_nodes: list[str],
    opset: int = 17,
) -> tuple[onnx.ModelProto, list[Violation], list[str]]:
    import tf2onnx

    logging.getLogger("tf2onnx").setLevel(logging.ERROR)
    model, _ = tf2onnx.convert.from_graph_def(
        graph_def, input_names=[tensor_name(n) for n in inputs], output_names=[tensor_name(n) for n in outputs], opset=opset
    )
    unknown = sorted({n.op_type for n in model.graph.node if not onnx.defs.has(n.op_type, n.domain or "")})
    if unknown:
        raise GraphError(f"tf2onnx cannot convert the TensorFlow op(s) {unknown}; the graph cannot be written as ONNX")
    renumber_generated_names(model)
    model.graph.doc_string = "rq_tf1 export"
    set_exact_qdq_params(model, activation_markers)
    del model.graph.value_info[:]
    model = onnx.shape_inference.infer_shapes(model)
    fuse_matmul_bias(model)
    layers = {m: LayerParams(scales.weights[op], scales.biases.get(op)) for m, op in weight_markers.items()}
    result = canonicalize(model, preset, weight_qparams=marked_constant_qparams(model, layers))
    onnx_float = [n.name for n in result.model.graph.node if any(n.name == f or n.name.startswith(f"{f}_") for f in float_nodes)]
    renamed = shorten_names(result.model, drop=_NOT_A_LAYER.match)
    onnx_float = [renamed[n] for n in onnx_float]
    name_constants_by_first_reader(result.model)
    violations = validate(result.model, preset, float_nodes=onnx_float, required_ops=() if float_nodes else None)
    return result.model, violations, result.log
