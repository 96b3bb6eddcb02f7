"""The int8 ONNX of a quantized frozen graph: tf2onnx's from_graph_def, then the exact Q/DQ
parameters and the int8 weights (found by the markers quantized_graph put in the names), then
rq_common's canonicalizer and validator."""

from __future__ import annotations

import logging
import re

import onnx

from rq_common.format import DEFAULT_OPSET, Violation, fuse_written_out_activations
from rq_common.format.marked_export import finish_marked_export, unconverted_ops
from rq_common.format.markers import LayerParams
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
    opset: int = DEFAULT_OPSET,
) -> tuple[onnx.ModelProto, list[Violation], list[str]]:
    import tf2onnx

    logging.getLogger("tf2onnx").setLevel(logging.ERROR)
    model, _ = tf2onnx.convert.from_graph_def(
        graph_def, input_names=[tensor_name(n) for n in inputs], output_names=[tensor_name(n) for n in outputs], opset=opset
    )
    unknown = unconverted_ops(model)
    if unknown:
        raise GraphError(f"tf2onnx cannot convert the TensorFlow op(s) {unknown}; the graph cannot be written as ONNX")
    result, violations = finish_marked_export(
        model,
        preset,
        activation_markers,
        {
            m: LayerParams(scales.weights[op], scales.biases.get(op), constant_operand=op in scales.constant_operands)
            for m, op in weight_markers.items()
        },
        doc_string="rq_tf1 export",
        not_a_layer=_NOT_A_LAYER.match,
        is_float_node=lambda name: any(name == f or name.startswith(f"{f}_") for f in float_nodes),
        has_float_ops=bool(float_nodes),
        rewrite=fuse_written_out_activations,  # a PReLU's five ops -> one PRelu
    )
    return result.model, violations, result.log
