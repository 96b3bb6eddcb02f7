"""export_onnx: TorchScript exporter (fake-quant ops become Q/DQ), then rq_common's canonicalizer
and validator. The bias QParams are passed along so the int bias equals what torch computed."""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

import onnx
import torch
from torch import fx

from rq_common.format import DEFAULT_OPSET, canonicalize, validate
from rq_common.io import save_onnx
from rq_common.optable import facts_for
from rq_common.pipeline import QuantizeResult
from rq_common.qmath import QParams
from rq_torch.calibrate import activation_quantizers, require_calibrated
from rq_torch.quantizer import TensorQuantizer
from rq_torch.transform import quant_layers


def _bias_qparams(model: fx.GraphModule, exported: onnx.ModelProto) -> dict[str, QParams]:
    """The float bias initializer of each exported Conv / Gemm -> the QParams torch used for it.
    Exported node names carry the module path ("/features/0/Conv"), which finds the layer."""
    layers = {f"/{layer.layer_name.replace('.', '/')}/": layer for layer in quant_layers(model)}
    initializers = {t.name for t in exported.graph.initializer}
    out = {}
    for node in exported.graph.node:
        facts = facts_for(node.op_type)
        if facts is None or facts.bias is None or len(node.input) <= facts.bias or node.input[facts.bias] not in initializers:
            continue
        layer = next((layer for prefix, layer in layers.items() if node.name.startswith(prefix)), None)
        if layer is None or getattr(layer, "bias_quantizer", None) is not None:
            continue
        qp = layer.bias_qparams()
        if qp is not None:
            out[node.input[facts.bias]] = QParams(
                layer.bias_scale.numpy().reshape(qp.scale.shape), qp.zero_point, qp.spec, qp.axis
            )
    return out


def export_onnx(model: fx.GraphModule, example_inputs, path: str | Path, opset: int = DEFAULT_OPSET) -> QuantizeResult:
    """Write the int8 format of ``model`` (calibrated by rq_torch.calibrate) to ``path``."""
    require_calibrated(model)
    for module in model.modules():
        if isinstance(module, TensorQuantizer):
            module.sync_scale()
    example_inputs = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
    plan = model.rq_plan
    was_training = model.training
    model.eval()
    try:
        with tempfile.TemporaryDirectory() as folder, warnings.catch_warnings():
            # the TorchScript exporter is the one that maps fake-quant ops to Q/DQ: chosen on purpose
            warnings.filterwarnings("ignore", message="You are using the legacy TorchScript-based ONNX export")
            raw = Path(folder) / "exported.onnx"
            torch.onnx.export(
                model,
                example_inputs,
                str(raw),
                dynamo=False,
                opset_version=opset,
                do_constant_folding=True,
                input_names=plan.input_names,
            )
            exported = onnx.load(str(raw))
    finally:
        model.train(was_training)
    result = canonicalize(exported, plan.preset, weight_qparams=_bias_qparams(model, exported))
    violations = validate(result.model, plan.preset, required_ops=() if plan.float_ops else None)
    path = save_onnx(result.model, path)
    return QuantizeResult(
        path,
        result.model,
        plan.preset,
        quantized_ops=list(plan.quantized_ops),
        float_ops=list(plan.float_ops),
        notes=list(getattr(model, "rq_notes", [])),
        violations=violations,
        qparams={name: quantizer.qparams() for name, quantizer in activation_quantizers(model).items()},
        log=result.log,
        files={"onnx": path},
    )
