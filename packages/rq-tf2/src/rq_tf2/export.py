"""export_onnx: tf2onnx (from_function; its from_keras does not take Keras 3), then the exact
parameters, rq_common's canonicalizer and validator.

tf2onnx writes each quantizer's FakeQuantWithMinMaxVars as a uint8 QuantizeLinear/DequantizeLinear
pair with parameters it derives from the op's range, and grappler folds fake-quantized kernels into
float constants. Every quantizer and twin runs inside a name scope that marks it while exporting,
so here each Q/DQ pair gets the quantizer's exact scale and zero point, and each folded kernel and
bias (found through the ONNX node that reads it) gets the QParams the layer used: the canonicalizer
then stores them as int8 / int32 exactly, with the values the Keras model computes with.

Written means valid: the file is saved only when the validator finds nothing (or the caller allows
violations), so a file at ``path`` is always one the target accepts.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import keras
import onnx
import tensorflow as tf

from rq_common.format import DEFAULT_OPSET, fuse_layer_norms, fuse_written_out_activations, require_valid
from rq_common.format.marked_export import finish_marked_export, unconverted_ops
from rq_common.format.markers import LayerParams
from rq_common.io import save_onnx
from rq_common.pipeline import QuantizeResult
from rq_tf2.calibrate import Links, require_calibrated
from rq_tf2.errors import ExportError
from rq_tf2.fake_quant import exporting
from rq_tf2.layers import ExportableLayerNormalization, QuantPReLU, QuantWeightedMixin
from rq_tf2.quantizer import ActivationQuantizer

MARKER = "rqexport{}x"


def export_onnx(
    model: keras.Model, path: str | Path, opset: int = DEFAULT_OPSET, *, allow_violations: bool = False
) -> QuantizeResult:
    """Write the int8 format of ``model`` (calibrated by rq_tf2.calibrate) to ``path``.

    A model that breaks a rule of its preset's format is a FormatError and nothing is written,
    unless ``allow_violations`` (then ``result.violations`` lists them), as in every rq writer."""
    import tf2onnx

    wiring = require_calibrated(model)
    preset = wiring.quantizers[0].preset
    markers = _mark(wiring)
    spec = [tf.TensorSpec(t.shape, t.dtype, name=t.name) for t in model.inputs]

    @tf.function(input_signature=spec)
    def forward(*inputs):
        return model(list(inputs) if len(inputs) > 1 else inputs[0], training=False)

    logging.getLogger("tf2onnx").setLevel(logging.ERROR)
    try:
        with exporting():
            exported, _ = tf2onnx.convert.from_function(forward, input_signature=spec, opset=opset)
    finally:
        for layer in markers.values():
            layer.export_marker = None
    _check_converted(exported)
    float_layers = _float_layers(model)
    not_a_layer = re.compile("^({}(_\\d+)?|{})$".format(re.escape(model.name), MARKER.format(r"\d+")))  # model scope, markers
    result, violations = finish_marked_export(
        exported,
        preset,
        {m: q.qparams() for m, q in markers.items() if isinstance(q, ActivationQuantizer)},
        {
            m: LayerParams(t.weight_qparams(), t.bias_qparams(), constant_operand=t.constant_operand)
            for m, t in markers.items()
            if isinstance(t, QuantWeightedMixin)
        },
        doc_string=f"rq_tf2 export of Keras model '{model.name}'",  # not TF's numbered function name
        not_a_layer=not_a_layer.match,
        is_float_node=lambda name: _in_layers(name, float_layers),
        has_float_ops=bool(float_layers),
        rewrite=lambda exported: _fuse_written_out_ops(exported, markers),
    )
    require_valid(violations, preset, allow=allow_violations)
    path = save_onnx(result.model, path)
    return QuantizeResult(
        path,
        result.model,
        preset,
        quantized_ops=[
            layer.name
            for layer in model.layers
            if layer.name not in float_layers and not isinstance(layer, (ActivationQuantizer, keras.layers.InputLayer))
        ],
        float_ops=list(getattr(model, "rq_float_ops", [])),
        notes=list(getattr(model, "rq_notes", [])),
        violations=violations,
        qparams={quantizer.name: quantizer.qparams() for quantizer in wiring.quantizers},
        log=result.log,
        files={"onnx": path},
    )


def _check_converted(model: onnx.ModelProto) -> None:
    """tf2onnx leaves a TF op it cannot convert in the graph under its TF name; say which, before
    anything is written."""
    unknown = unconverted_ops(model)
    if unknown:
        raise ExportError(
            f"tf2onnx cannot convert the TensorFlow op(s) {unknown} (for example Erfc, which Keras's exact "
            "'gelu' uses): use an activation it converts (gelu(approximate=True), relu, silu) or exclude nothing else"
        )


def _float_layers(model: keras.Model) -> set[str]:
    """Names of the layers that run in float: what quantize_model and calibrate recorded, or, for a
    loaded model, every weighted Keras layer that is not a quantized twin; and the twins calibration
    kept in float (no NPU position serves them), which are not quantizing."""
    kept = {layer.name for layer in model.layers if isinstance(layer, QuantWeightedMixin) and not layer.quantizing}
    recorded = getattr(model, "rq_float_ops", None)
    if recorded is not None:
        return kept | {op.node for op in recorded}
    return kept | {layer.name for layer in model.layers if hasattr(layer, "kernel") and not isinstance(layer, QuantWeightedMixin)}


def _in_layers(node_name: str, layers: set[str]) -> bool:
    """Whether an ONNX node came from one of ``layers`` (TF scopes them "<layer>" or "<layer>_<n>")."""
    return any(re.sub(r"_\d+$", "", part) in layers or part in layers for part in node_name.split("/"))


def _mark(wiring: Links) -> dict[str, keras.layers.Layer]:
    markers: dict[str, keras.layers.Layer] = {}
    twins = [twin for twin in wiring.twins if twin.quantizing]  # a twin kept in float exports as its float op
    for layer in [*wiring.quantizers, *twins, *wiring.layer_norms]:
        marker = MARKER.format(len(markers))
        layer.export_marker = marker
        markers[marker] = layer
    return markers


FUSED_OPS = {ExportableLayerNormalization: "LayerNormalization", QuantPReLU: "PRelu"}


def _fuse_written_out_ops(model: onnx.ModelProto, markers) -> None:
    """tf2onnx writes a LayerNormalization as a dozen ops and a PReLU as five: each becomes its one
    ONNX op (rq_common's fusions); every marked one must have been found."""
    fuse_layer_norms(model)
    fuse_written_out_activations(model)
    for marker, layer in markers.items():
        op_type = next((op for cls, op in FUSED_OPS.items() if isinstance(layer, cls)), None)
        if op_type is not None and not any(n.op_type == op_type and marker in n.name.split("/") for n in model.graph.node):
            raise ExportError(f"tf2onnx wrote {op_type} '{layer.name}' in an unexpected form; please report it")
