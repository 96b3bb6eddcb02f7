"""quantize_model: trace, fold BatchNorm, place quantizers by rq's op coverage and NPU rules,
and swap weighted layers for their Quant twins."""

from __future__ import annotations

import copy
import math
import operator
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn

from rq_common.calibration import ScaleGroups
from rq_common.optable import NpuRole, facts_for, has_npu_role
from rq_common.pipeline import ConstantOperand
from rq_common.pipeline.placement import EXCLUDED, FloatOp, OpNode, follows_from_others, place_quantizers
from rq_common.qmath import fold_batchnorm
from rq_common.qmath.equalization import Equalization, equalization_for
from rq_common.spec import Preset, get_preset
from rq_torch.attention import to_plain_forms
from rq_torch.equalize import equalize_layers
from rq_torch.fake_quant import check_exportable
from rq_torch.modules import QUANT_LAYERS, ConvBn2d, QuantLayerMixin, QuantLinear
from rq_torch.ops import onnx_op
from rq_torch.quantizer import TensorQuantizer
from rq_torch.trace import functionalize_inplace, shape_propagate, trace


@dataclass
class TorchPlan:
    """What quantize_model decided; kept on the model as ``rq_plan`` for calibrate and export."""

    preset: Preset
    activation_quantizers: list[str] = field(default_factory=list)
    layers: list[str] = field(default_factory=list)
    adds: list[list[str | ConstantOperand]] = field(default_factory=list)  # per Add: its inputs' quantizers or lifted constants
    constants: list[tuple[str, str]] = field(default_factory=list)  # (quantizer, buffer) of lifted scalars
    quantized_ops: list[str] = field(default_factory=list)
    float_ops: list[FloatOp] = field(default_factory=list)
    input_names: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what quantize_model changed (equalization), first of the model's notes


def _is_float_tensor(node: fx.Node) -> bool:
    meta = node.meta.get("tensor_meta")
    return meta is not None and hasattr(meta, "dtype") and meta.dtype.is_floating_point


def _tensor_args(node: fx.Node) -> list[fx.Node]:
    found: list[fx.Node] = []
    fx.node.map_arg((node.args, node.kwargs), lambda a: found.append(a) if _is_float_tensor(a) else None)
    return list(dict.fromkeys(found))


def fold_batchnorms(gm: fx.GraphModule, keep_for_qat: bool = False) -> int:
    """Conv followed by BatchNorm (the Conv's only user) -> one Conv with folded weights, or, for
    QAT with BN statistics that freeze later, one ConvBn2d."""
    folded = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or not isinstance(gm.get_submodule(node.target), nn.modules.batchnorm._BatchNorm):
            continue
        source = node.args[0]
        if not (isinstance(source, fx.Node) and source.op == "call_module" and len(source.users) == 1):
            continue
        conv, bn = gm.get_submodule(source.target), gm.get_submodule(node.target)
        if type(conv) not in (nn.Conv1d, nn.Conv2d) or not bn.track_running_stats or bn.running_mean is None:
            continue
        if keep_for_qat:
            if type(conv) is nn.Conv2d:
                _set_submodule(gm, source.target, ConvBn2d(conv, bn))
                node.replace_all_uses_with(source)
                gm.graph.erase_node(node)
                folded += 1
            continue
        bias = conv.bias.detach().numpy() if conv.bias is not None else None
        weight, new_bias = fold_batchnorm(conv.weight.detach().numpy(), bias, *_inference_statistics(bn))
        conv.weight = nn.Parameter(torch.from_numpy(weight))
        conv.bias = nn.Parameter(torch.from_numpy(new_bias))
        node.replace_all_uses_with(source)
        gm.graph.erase_node(node)
        folded += 1
    gm.graph.lint()
    gm.delete_all_unused_submodules()
    return folded


def _inference_statistics(bn: nn.modules.batchnorm._BatchNorm) -> tuple:
    """(gamma, beta, mean, var, eps) as rq_common's fold_batchnorm takes them (ones and zeros
    where the BatchNorm has no affine parameters)."""
    gamma = bn.weight.detach().numpy() if bn.affine else torch.ones_like(bn.running_mean).numpy()
    beta = bn.bias.detach().numpy() if bn.affine else torch.zeros_like(bn.running_mean).numpy()
    return gamma, beta, bn.running_mean.numpy(), bn.running_var.numpy(), bn.eps


def lone_batchnorms_to_depthwise(gm: fx.GraphModule) -> int:
    """A BatchNorm2d that follows no Conv (after a ReLU, a residual Add, the input) -> a depthwise 1x1
    Conv2d that computes it (the identity conv with the BN folded in, rq_common's fold): the NPU runs
    that conv, and rq-onnx turns the same BatchNormalization into the same Conv. Its statistics are
    then fixed, as in inference; in QAT its scale and shift train as the conv's weight and bias."""
    converted = 0
    for node in list(gm.graph.nodes):
        bn = gm.get_submodule(node.target) if node.op == "call_module" else None
        if type(bn) is not nn.BatchNorm2d or not bn.track_running_stats or bn.running_mean is None:
            continue
        channels = bn.num_features
        weight, bias = fold_batchnorm(np.ones((channels, 1, 1, 1)), None, *_inference_statistics(bn))
        conv = nn.Conv2d(channels, channels, 1, groups=channels, bias=True)
        conv.weight = nn.Parameter(torch.from_numpy(weight))
        conv.bias = nn.Parameter(torch.from_numpy(bias))
        _set_submodule(gm, node.target, conv)
        converted += 1
    return converted


def quantize_model(
    model: nn.Module,
    example_inputs: Any,
    preset: str | Preset = "npu_cnn",
    *,
    leaf_modules: Sequence[type[nn.Module]] = (),
    exclude_nodes: Sequence[str] = (),
    learn_scales: bool = False,
    freeze_bn_after: int | None = None,
    concrete_args: dict[str, Any] | None = None,
    equalization: Equalization | bool | None = None,
) -> fx.GraphModule:
    """A traced copy of ``model`` with quantizers in place (the original is left as it is).

    ``example_inputs``: a tensor or a tuple of tensors the model takes. ``leaf_modules``: module
    types fx must not trace into (they run in float). ``exclude_nodes``: node names or module paths to
    keep in float. ``freeze_bn_after``: for QAT, keep BatchNorm learning from batch statistics for
    this many training steps, then freeze its statistics (None: fold it now, as PTQ does).
    ``learn_scales``: activation scales become parameters for QAT (LSQ for float
    presets; TQT's log2 threshold, rounded, for power-of-two presets). ``preset``: a name, or a
    Preset changed as needed (``get_preset("cpu", per_channel=False)``). ``concrete_args``: Python
    arguments of forward() fixed for tracing (torch.fx's), e.g. ``{"embed": False}`` for a forward
    that branches on them; the quantized model computes that branch and takes the tensors only.
    ``equalization``: cross-layer equalization of Conv / Linear pairs joined through ReLU-like
    ops, after BatchNorm folding (rq_torch.equalize): None (the default) on where the preset's
    weights are per tensor and BatchNorm is folded (rq_common's equalization_for), True / an
    Equalization on, False off.
    """
    preset = get_preset(preset)
    equalization = equalization_for(equalization, preset, batchnorm_kept=freeze_bn_after is not None)
    for kind in ("activation", "weight"):
        check_exportable(getattr(preset, kind), kind)
    example_inputs = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
    model = copy.deepcopy(model).eval()
    model = to_plain_forms(model, tuple(leaf_modules))
    gm = trace(model, leaf_modules, concrete_args)
    functionalize_inplace(gm)
    shape_propagate(gm, example_inputs)
    fold_batchnorms(gm, keep_for_qat=freeze_bn_after is not None)
    if preset.target.fixed_point_rules:
        lone_batchnorms_to_depthwise(gm)
    decompose_gelu(gm)
    shape_propagate(gm, example_inputs)
    plan = TorchPlan(preset, input_names=[n.name for n in gm.graph.nodes if n.op == "placeholder"])
    if equalization is not None:
        plan.notes += equalize_layers(gm, equalization)
        shape_propagate(gm, example_inputs)
    _lift_scalar_operands(gm, preset, plan)
    shape_propagate(gm, example_inputs)
    quantized, groups, node_ops = _plan(gm, preset, set(exclude_nodes), plan)
    quantizer_of = _insert_quantizers(gm, quantized, groups, preset, plan, learn_scales)
    _swap_layers(gm, node_ops, quantizer_of, preset, plan, freeze_bn_after or 0)
    gm.recompile()
    gm.rq_plan = plan
    _warn_float(gm, plan.float_ops)
    return gm


FLOAT_WARNING_NAMES = 3  # ops named in the one warning; the rest are in rq_plan.float_ops


def _warn_float(gm: fx.GraphModule, float_ops: list[FloatOp]) -> None:
    """One warning for the ops that run in float (a real model can have hundreds: one line each
    buries everything else), with the first few named; those kept on request, pass-through ops and
    the lifted constants' own quantizers are not counted."""
    nodes = {node.name: node for node in gm.graph.nodes}
    shown = []
    for op in float_ops:
        node = nodes.get(op.node)
        if node is not None and node.op == "call_module" and isinstance(gm.get_submodule(node.target), TensorQuantizer):
            continue
        if op.reason == EXCLUDED or follows_from_others(op.reason):
            continue
        shown.append(op)
    if not shown:
        return
    count = "1 op stays" if len(shown) == 1 else f"{len(shown)} ops stay"
    named = "; ".join(f"'{op.op}' (node {op.node}): {op.reason}" for op in shown[:FLOAT_WARNING_NAMES])
    more = f"; and {len(shown) - FLOAT_WARNING_NAMES} more" if len(shown) > FLOAT_WARNING_NAMES else ""
    warnings.warn(
        f"rq_torch: {count} in float (every one in qmodel.rq_plan.float_ops and the export's float_ops): {named}{more}",
        stacklevel=3,
    )


INVERSE_SQRT2 = float(np.float32(1.0 / np.float64(np.float32(math.sqrt(2.0)))))


def decompose_gelu(gm: fx.GraphModule) -> None:
    """GELU as the ops the ONNX exporter writes at opset 17 (x * 0.5 * (1 + erf(x / sqrt 2))), so
    each gets its quantizer where rq-onnx puts one on the same decomposition. The division is a
    multiplication by the reciprocal, computed as rq-onnx computes it from the exported float32
    sqrt(2) (rq_common.format.divisions_to_multiplications), so both quantize the same constant."""
    for node in list(gm.graph.nodes):
        module = gm.get_submodule(node.target) if node.op == "call_module" else None
        is_gelu = isinstance(module, nn.GELU) and module.approximate == "none"
        is_gelu = is_gelu or (
            node.op == "call_function" and node.target is F.gelu and node.kwargs.get("approximate", "none") == "none"
        )
        if not is_gelu:
            continue
        x = node.args[0]
        with gm.graph.inserting_before(node):
            scaled = gm.graph.call_function(operator.mul, (x, INVERSE_SQRT2))
            shifted = gm.graph.call_function(operator.add, (gm.graph.call_function(torch.erf, (scaled,)), 1.0))
            out = gm.graph.call_function(operator.mul, (gm.graph.call_function(operator.mul, (x, shifted)), 0.5))
        node.replace_all_uses_with(out)
        gm.graph.erase_node(node)
    gm.graph.lint()
    gm.delete_all_unused_submodules()
    gm.recompile()


def _lift_scalar_operands(gm: fx.GraphModule, preset: Preset, plan: TorchPlan) -> None:
    """``x * 0.125`` becomes x times a quantized constant (weight spec), as rq-onnx stores the
    constant operand of Add / Mul: the export then holds it as an int8 initializer."""
    for node in list(gm.graph.nodes):
        facts = facts_for(onnx_op(gm, node))
        if facts is None or not facts.constant_operand or not _is_float_tensor(node):
            continue
        args = list(node.args)
        for i, arg in enumerate(args):
            if isinstance(arg, bool) or not isinstance(arg, (int, float)):
                continue
            index = len(plan.constants)
            buffer, quantizer = f"rq_constant_{index}", f"rq_constant_quantizer_{index}"
            gm.register_buffer(buffer, torch.tensor(float(arg), dtype=torch.float32))
            spec = preset.weight.replace(granularity="per_tensor", axis=None)
            gm.add_submodule(quantizer, TensorQuantizer(spec, preset.weight_method, name=buffer, persist_observer=False))
            with gm.graph.inserting_before(node):
                constant = gm.graph.get_attr(buffer)
                args[i] = gm.graph.call_module(quantizer, (constant,))
            plan.constants.append((quantizer, buffer))
        node.args = tuple(args)


def _plan(gm, preset, exclude, plan) -> tuple[list[fx.Node], ScaleGroups, dict[fx.Node, str]]:
    """rq_common's placement over the traced graph (the op types come from rq_torch.ops)."""
    op_nodes, ops, names = [], {}, {}
    for node in gm.graph.nodes:
        if node.op == "call_module" and not _is_float_tensor(node) and _tensor_args(node):
            reason = "returns several tensors and has no quantization rule: runs in float"
            plan.float_ops.append(FloatOp(node.name, _target_name(node), reason))  # e.g. a leaf nn.LSTM
        if node.op in ("placeholder", "get_attr", "output") or not _is_float_tensor(node):
            continue
        ops[node.name], names[node.name] = onnx_op(gm, node), _target_name(node)
        excluded = node.name in exclude or (node.op == "call_module" and node.target in exclude)
        reason = EXCLUDED if excluded else None
        if ops[node.name] is None and not excluded:
            reason = f"no quantization rule for {names[node.name]}: runs in float"
        op_nodes.append(OpNode(node.name, ops[node.name], tuple(_tensor_args(node)), (node,), reason))
    inputs = [n for n in gm.graph.nodes if n.op == "placeholder"]
    outputs: list[fx.Node] = []
    for node in gm.graph.nodes:
        if node.op == "output":
            fx.node.map_arg(node.args, outputs.append)
    placement = place_quantizers(op_nodes, inputs, outputs, preset.target.fixed_point_rules, preset.integer_kernels_only)
    plan.float_ops.extend(FloatOp(f.node, names[f.node], f.reason) for f in placement.float_ops)
    plan.quantized_ops = list(placement.quantized_ops)
    by_name = {n.name: n for n in gm.graph.nodes}
    node_ops = {by_name[name]: ops[name] for name in placement.quantized_ops}
    return placement.quantized, placement.groups, node_ops


def _insert_quantizers(gm, quantized, groups, preset, plan, learn_scales: bool) -> dict[fx.Node, TensorQuantizer]:
    """One TensorQuantizer per scale group, called after every tensor of the group."""
    modules: dict[fx.Node, str] = {}
    quantizer_of: dict[fx.Node, TensorQuantizer] = {}
    variable = _depends_on_inputs(gm)
    weight_spec = preset.weight.replace(granularity="per_tensor", axis=None)
    for node in quantized:
        root = groups.find(node)
        if root not in modules:
            name = f"rq_quantizer_{len(modules)}"
            if node in variable:
                quantizer = TensorQuantizer(preset.activation, preset.activation_method, name=node.name, learn_scale=learn_scales)
            else:  # computed from constants only (torch.ones(...) * 0.125): exported as a constant, stored as a weight
                quantizer = TensorQuantizer(weight_spec, preset.weight_method, name=node.name)
            gm.add_submodule(name, quantizer)
            modules[root] = name
            plan.activation_quantizers.append(name)
        with gm.graph.inserting_after(node):
            call = gm.graph.call_module(modules[root], (node,))
        call.meta["tensor_meta"] = node.meta.get("tensor_meta")  # the value's shape and dtype, for the Adds' inputs
        node.replace_all_uses_with(call, delete_user_cb=lambda user, call=call: user is not call)
        quantizer_of[node] = gm.get_submodule(modules[root])
        quantizer_of[call] = quantizer_of[node]
    return quantizer_of


def _depends_on_inputs(gm: fx.GraphModule) -> set[fx.Node]:
    """Nodes whose value depends on a graph input (the others are constants)."""
    variable: set[fx.Node] = set()
    for node in gm.graph.nodes:
        if node.op == "placeholder" or any(a in variable for a in node.all_input_nodes):
            variable.add(node)
    return variable


def _quantizer_after(node: fx.Node, gm: fx.GraphModule) -> TensorQuantizer | None:
    """The quantizer that quantizes ``node``'s output, through one fused activation."""
    users = list(node.users)
    if len(users) == 1 and users[0].op == "call_module" and isinstance(gm.get_submodule(users[0].target), TensorQuantizer):
        return gm.get_submodule(users[0].target)
    if len(users) == 1 and has_npu_role(onnx_op(gm, users[0]), NpuRole.FUSED_ACTIVATION):
        return _quantizer_after(users[0], gm)
    return None


def _swap_layers(gm, node_ops, quantizer_of, preset, plan, freeze_bn_after: int) -> None:
    """Each weighted module becomes its Quant twin. A module called more than once (one Conv
    applied twice) gets a twin per call, sharing its weight and bias parameters: each call has its
    own input scale, hence its own bias scale (input scale x weight scale)."""
    originals: dict[str, nn.Module] = {}
    for node, op in node_ops.items():
        if node.op == "call_module":
            module = originals.get(node.target) or gm.get_submodule(node.target)
            quant_type = QUANT_LAYERS.get(type(module))
            if quant_type is not None:
                if node.target in originals:
                    node.target = _unused_target(gm, node.target)
                originals[node.target] = module
                extra = {"freeze_after": freeze_bn_after} if isinstance(module, ConvBn2d) else {}
                layer = quant_type.from_float(module, preset, node.target, **extra)
                source = node.args[0]
                object.__setattr__(layer, "input_quantizer", quantizer_of.get(source))
                object.__setattr__(layer, "output_quantizer", _quantizer_after(node, gm))
                if isinstance(layer, QuantLinear) and len(node.meta["tensor_meta"].shape) > 2:  # exported as MatMul + Add
                    layer.use_matmul_form(preset)
                    object.__setattr__(layer, "output_quantizer", layer.matmul_quantizer)
                    plan.activation_quantizers.append(f"{node.target}.matmul_quantizer")
                    if layer.bias_quantizer is not None:
                        plan.constants.append((f"{node.target}.bias_quantizer", f"{node.target}.bias"))
                _set_submodule(gm, node.target, layer)
                plan.layers.append(node.target)
        if op == "Add":
            plan.adds.append([_add_key(gm, a, quantizer_of, plan) for a in _tensor_args(node) if a in quantizer_of])


def lifted_constant(gm: fx.GraphModule, node: fx.Node, plan: TorchPlan) -> str | None:
    """The buffer of the lifted scalar (_lift_scalar_operands) that ``node`` quantizes, directly or
    through the quantizer the placement puts after it; None for any other tensor."""
    buffers = dict(plan.constants)
    for _ in range(2):
        if node.op != "call_module" or not isinstance(gm.get_submodule(node.target), TensorQuantizer):
            return None
        if node.target in buffers:
            return buffers[node.target]
        node = node.args[0]
        if not isinstance(node, fx.Node):
            return None
    return None


def _add_key(gm, node: fx.Node, quantizer_of, plan: TorchPlan) -> str | ConstantOperand | None:
    """An Add input for the NPU's position repair: its quantizer's name, or its lifted constant."""
    buffer = lifted_constant(gm, node, plan)
    return ConstantOperand(buffer) if buffer is not None else _name_of(gm, quantizer_of.get(node))


def _target_name(node: fx.Node) -> str:
    """A module path, or a function / method name (torch.flatten, Tensor.view)."""
    if node.op == "call_module":
        return str(node.target)
    if node.op == "call_method":
        return f"Tensor.{node.target}"
    return f"{getattr(node.target, '__module__', None) or 'torch'}.{getattr(node.target, '__name__', str(node.target))}".replace(
        "torch._C._VariableFunctions", "torch"
    )


def _name_of(gm: fx.GraphModule, module: nn.Module | None) -> str | None:
    return next((n for n, m in gm.named_modules() if m is module), None)


def _unused_target(gm: fx.GraphModule, target: str) -> str:
    """``target`` with the first free suffix _2, _3, ... (a module path for one more twin)."""
    names = {name for name, _ in gm.named_modules()}
    count = 2
    while f"{target}_{count}" in names:
        count += 1
    return f"{target}_{count}"


def _set_submodule(gm: fx.GraphModule, target: str, module: nn.Module) -> None:
    parent_name, _, child = target.rpartition(".")
    parent = gm.get_submodule(parent_name) if parent_name else gm
    setattr(parent, child, module)


def quant_layers(model: nn.Module) -> list[QuantLayerMixin]:
    return [m for m in model.modules() if isinstance(m, QuantLayerMixin)]


def quantizer_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The learned scales (for their own learning rate in the optimizer)."""
    return [m.log2_scale for m in model.modules() if isinstance(m, TensorQuantizer) and m.log2_scale is not None]


def weight_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Every parameter that is not a learned scale."""
    scales = {id(p) for p in quantizer_parameters(model)}
    return [p for p in model.parameters() if id(p) not in scales]
