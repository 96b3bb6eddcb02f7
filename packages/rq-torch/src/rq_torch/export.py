"""export_onnx: TorchScript exporter (fake-quant ops become Q/DQ), then rq_common's canonicalizer
and validator. The bias QParams are passed along so the int bias equals what torch computed.

Written means valid: the file is saved only when the validator finds nothing (or the caller allows
violations). The ops the plan keeps in float are recorded in the model (rq.float_nodes) first, by
their exported node names, so a later ``rq-onnx check`` judges the file as the exporter did."""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

import onnx
import torch
from torch import fx, nn

from rq_common.format import DEFAULT_OPSET, canonicalize, require_valid, validate
from rq_common.format.graph import record_float_nodes
from rq_common.io import save_onnx
from rq_common.optable import facts_for
from rq_common.pipeline import QuantizeResult
from rq_common.pipeline.placement import FloatOp
from rq_common.qmath import QParams
from rq_torch.calibrate import activation_quantizers, require_calibrated
from rq_torch.modules import QuantLayerMixin
from rq_torch.quantizer import TensorQuantizer
from rq_torch.transform import quant_layers


def _bias_qparams(model: fx.GraphModule, exported: onnx.ModelProto) -> dict[str, QParams]:
    """The float bias initializer of each exported Conv / Gemm -> the QParams torch used for it.
    Exported node names carry the module path ("/features/0/Conv"), which finds the layer. The
    twins of a module called twice share its bias parameter, which the exporter writes once; each
    call's node gets a copy of its own, for its own bias scale."""
    layers = {f"/{layer.layer_name.replace('.', '/')}/": layer for layer in quant_layers(model)}
    initializers = {t.name: t for t in exported.graph.initializer}
    owners: dict[str, QuantLayerMixin] = {}
    out = {}
    for node in exported.graph.node:
        facts = facts_for(node.op_type)
        if facts is None or facts.bias is None or len(node.input) <= facts.bias or node.input[facts.bias] not in initializers:
            continue
        layer = next((layer for prefix, layer in layers.items() if node.name.startswith(prefix)), None)
        if layer is None or getattr(layer, "bias_quantizer", None) is not None:
            continue
        qp = layer.bias_qparams()
        if qp is None:
            continue
        if owners.setdefault(node.input[facts.bias], layer) is not layer:
            node.input[facts.bias] = _copy_initializer(exported, initializers[node.input[facts.bias]], layer.layer_name)
            owners[node.input[facts.bias]] = layer
        out[node.input[facts.bias]] = QParams(layer.bias_scale.numpy().reshape(qp.scale.shape), qp.zero_point, qp.spec, qp.axis)
    return out


def _copy_initializer(model: onnx.ModelProto, tensor: onnx.TensorProto, owner: str) -> str:
    copy = onnx.TensorProto()
    copy.CopyFrom(tensor)
    copy.name = f"{owner}.{tensor.name.rpartition('.')[2]}"
    model.graph.initializer.append(copy)
    return copy.name


def float_ops(model: fx.GraphModule) -> list[FloatOp]:
    """The plan's float ops, and a layer calibration kept in float (no NPU position served it) in a
    model whose state was loaded: its weight quantizer is off while the model quantizes."""
    ops = list(model.rq_plan.float_ops)
    known = {op.node for op in ops}
    for node in model.graph.nodes:
        module = model.get_submodule(node.target) if node.op == "call_module" else None
        if isinstance(module, QuantLayerMixin) and not module.quantizing and node.name not in known:
            ops.append(FloatOp(node.name, str(node.target), "kept in float when calibrated (no NPU position serves it)"))
    return ops


FLOAT_SCOPE = "rq_float_"  # the module scope each float op is exported under, then renamed


class _FloatOp(nn.Module):
    """One op the plan keeps in float, called as a module of its own: the TorchScript exporter
    names the ONNX nodes it emits ``/rq_float_<fx node>/...``, which tells them apart from the rest
    (a function's nodes are otherwise ``/Exp_3``, numbered by the exporter, not by fx)."""

    def __init__(self, node: fx.Node, gm: fx.GraphModule):
        super().__init__()
        self.kind, self.target = node.op, node.target
        if node.op == "call_module":  # not a child: its scope stays the module path the user knows
            object.__setattr__(self, "module", gm.get_submodule(node.target))

    def forward(self, *args, **kwargs):
        if self.kind == "call_module":
            return self.module(*args, **kwargs)
        if self.kind == "call_method":
            return getattr(args[0], self.target)(*args[1:], **kwargs)
        return self.target(*args, **kwargs)


def _float_ops_scoped(model: fx.GraphModule) -> tuple[nn.Module, dict[str, str]]:
    """The model to export, with every op the plan keeps in float under its own scope, and
    scope prefix -> the fx node's name. The model itself is left as it is (modules are shared)."""
    nodes = {node.name: node for node in model.graph.nodes if node.op in ("call_module", "call_function", "call_method")}
    names = [
        op.node
        for op in float_ops(model)
        if op.node in nodes
        and not (nodes[op.node].op == "call_module" and isinstance(model.get_submodule(nodes[op.node].target), TensorQuantizer))
    ]
    if not names:
        return model, {}
    graph = fx.Graph()
    graph.output(graph.graph_copy(model.graph, {}))
    scoped = fx.GraphModule(model, graph, type(model).__name__)
    copies = {node.name: node for node in scoped.graph.nodes}
    prefixes = {}
    for name in dict.fromkeys(names):
        node = copies[name]
        scope = f"{FLOAT_SCOPE}{name}"
        scoped.add_submodule(scope, _FloatOp(node, scoped))
        node.op, node.target = "call_module", scope
        prefixes[f"/{scope}/"] = name
    scoped.recompile()
    return scoped, prefixes


def _name_float_nodes(exported: onnx.ModelProto, prefixes: dict[str, str]) -> list[str]:
    """Rename ``/rq_float_<node>/X`` to ``/<node>/X`` (unless taken) and return the float nodes' names."""
    taken = {node.name for node in exported.graph.node}
    found = []
    for node in exported.graph.node:
        prefix = next((p for p in prefixes if node.name.startswith(p)), None)
        if prefix is None:
            continue
        plain = f"/{prefixes[prefix]}/{node.name[len(prefix) :]}"
        if plain not in taken:
            taken.discard(node.name)
            node.name = plain
            taken.add(plain)
        found.append(node.name)
    return found


def export_onnx(
    model: fx.GraphModule,
    example_inputs,
    path: str | Path,
    opset: int = DEFAULT_OPSET,
    *,
    allow_violations: bool = False,
) -> QuantizeResult:
    """Write the int8 format of ``model`` (calibrated by rq_torch.calibrate) to ``path``.

    Nothing is written when the model breaks a rule of its preset's format (a FormatError names the
    first) unless ``allow_violations``; the result lists the violations either way."""
    require_calibrated(model)
    for module in model.modules():
        if isinstance(module, TensorQuantizer):
            module.sync_scale()
    example_inputs = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
    plan = model.rq_plan
    was_training = model.training
    model.eval()
    exportable, float_scopes = _float_ops_scoped(model)
    exportable.eval()
    try:
        with tempfile.TemporaryDirectory() as folder, warnings.catch_warnings():
            # the TorchScript exporter is the one that maps fake-quant ops to Q/DQ: chosen on purpose
            warnings.filterwarnings("ignore", message="You are using the legacy TorchScript-based ONNX export")
            raw = Path(folder) / "exported.onnx"
            torch.onnx.export(
                exportable,
                example_inputs,
                str(raw),
                dynamo=False,
                opset_version=opset,
                do_constant_folding=True,
                input_names=plan.input_names,
            )
            exported = onnx.load(str(raw))  # a temporary file: the user's path is written only once valid
    finally:
        model.train(was_training)
    float_nodes = _name_float_nodes(exported, float_scopes)
    result = canonicalize(exported, plan.preset, weight_qparams=_bias_qparams(model, exported))
    kept = set(float_nodes)  # the canonicalizer may rename or fuse: record what is still there
    record_float_nodes(result.model, [node.name for node in result.model.graph.node if node.name in kept])
    violations = validate(result.model, plan.preset)
    require_valid(violations, plan.preset, allow=allow_violations)
    path = save_onnx(result.model, path)
    return QuantizeResult(
        path,
        result.model,
        plan.preset,
        quantized_ops=list(plan.quantized_ops),
        float_ops=float_ops(model),
        notes=list(getattr(model, "rq_notes", [])),
        violations=violations,
        qparams={name: quantizer.qparams() for name, quantizer in activation_quantizers(model).items()},
        log=result.log,
        files={"onnx": path},
    )
