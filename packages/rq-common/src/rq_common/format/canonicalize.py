"""Bring what any exporter wrote into the rq int8 format, without changing the numbers.

Rewrites run in order, each a small function registered in REWRITES:
00. fuse_matmul_bias: MatMul(2-d input, constant weight) + Add(constant bias) becomes one Gemm
   (rq_common.format.gemm).
0. bypass_constant_identities: Identity nodes on constants (the TorchScript exporter shares
   equal constants that way) are bypassed, so every Q/DQ reads its parameters directly.
1. fold_runtime_weight_quantize: float constant -> QuantizeLinear becomes an integer initializer
   (quantized with the reference that matches ONNX Runtime bit for bit).
1b. transpose_quantized_weights: Transpose(DequantizeLinear(constant)) (how the TorchScript exporter
   writes a Linear on 3-d inputs) becomes DequantizeLinear(transposed constant), axis permuted.
1c. hoist_layout_ops_out_of_qdq: QuantizeLinear -> Transpose/Reshape/... -> DequantizeLinear (tf2onnx
   pushes layout Transposes through Q/DQ pairs) becomes the layout op, then the pair: a layout op
   commutes with per-tensor quantization, so the numbers stay.
2. quantize_known_float_weights: float weights that an exporter constant-folded (tf2onnx does this
   with fake-quantized weights) are quantized again with the QParams the framework used; the
   values are already on the grid, so they come back exactly.
3. align_qdq_dtypes: 8-bit Q/DQ in the other signedness (uint8 zero point 128 standing for a
   symmetric int8 range, or the reverse) shift by 128 to the preset's dtype: q - z is unchanged.
3b. quantize_around_pass_through: a pass-through op (Transpose, Reshape, Squeeze, MaxPool, ...)
   between a DequantizeLinear and a reader that is not a QuantizeLinear gets the same Q/DQ after
   it, and one between a float producer and a QuantizeLinear gets the same Q/DQ before it (how
   tf2onnx leaves its layout Transposes and Squeezes). Such an op only moves or selects values on
   the grid, so the numbers do not change, and every quantized op then reads a DequantizeLinear.
4. merge_duplicate_qdq: Q(DQ(q)) with the same parameters is q again; twin Q or DQ nodes on the
   same tensor with the same parameters are one.
5. quantize_float_bias: a float bias beside quantized input and weight becomes int32 at
   s_in x s_w (or the preset's own-scale int8). This one changes the numbers, by at most half a
   bias step, which is what any integer kernel does with a float bias.
6. remove_unused: initializers and Q/DQ nodes that nothing reads any more.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper

from rq_common.errors import FormatError
from rq_common.format.builder import make_quantized_constant, replace_initializer_with_quantized
from rq_common.format.gemm import fuse_matmul_bias
from rq_common.format.graph import (
    DEQUANTIZE,
    QUANTIZE,
    GraphIndex,
    QdqParams,
    attribute,
    constant_role,
    node_label,
    qdq_params,
    remove_unused_initializers,
)
from rq_common.optable import Role, facts_for
from rq_common.qmath.bias import bias_qparams
from rq_common.qmath.qparams import QParams
from rq_common.qmath.reference import quantize
from rq_common.spec.dtypes import QuantDType
from rq_common.spec.presets import Preset, get_preset

MIN_OPSET = 13
DEFAULT_OPSET = 17  # what every rq exporter writes and rq-onnx upgrades to (LayerNormalization exists)
SIXTEEN_BIT_OPSET = 21  # QuantizeLinear / DequantizeLinear take int16 / uint16 from opset 21


def stores_sixteen_bits(preset: Preset) -> bool:
    """Whether the preset stores a quantized tensor in 16 bits: its model needs SIXTEEN_BIT_OPSET."""
    return any(spec.dtype.bits == 16 for spec in (preset.activation, preset.weight))


@dataclass
class CanonicalizeContext:
    model: onnx.ModelProto
    preset: Preset
    weight_qparams: Mapping[str, QParams]
    log: list[str] = field(default_factory=list)
    claim_weights: Callable[[onnx.ModelProto], Mapping[str, QParams]] | None = None

    def index(self) -> GraphIndex:
        return GraphIndex(self.model)


Rewrite = Callable[[CanonicalizeContext], None]
REWRITES: list[Rewrite] = []


def rewrite(fn: Rewrite) -> Rewrite:
    REWRITES.append(fn)
    return fn


@dataclass
class CanonicalizeResult:
    model: onnx.ModelProto
    log: list[str]


def canonicalize(
    model: onnx.ModelProto,
    preset: Preset | str,
    weight_qparams: Mapping[str, QParams] | Callable[[onnx.ModelProto], Mapping[str, QParams]] | None = None,
) -> CanonicalizeResult:
    """A copy of ``model`` in the int8 format of ``preset``, and a log of what was rewritten.

    ``weight_qparams`` maps float initializer names to the QParams a framework quantized them
    with, for exporters that fold fake-quantized weights into float constants; or it is a function
    that finds them in the model once its MatMul + bias pairs are Gemms (the fusion's first rewrite;
    exporters that claim bias constants by their Gemm slot need it, and it runs only here).
    """
    preset = get_preset(preset)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    claim = weight_qparams if callable(weight_qparams) else None
    ctx = CanonicalizeContext(out, preset, {} if claim else dict(weight_qparams or {}), claim_weights=claim)
    opset = ctx.index().opset
    if opset < MIN_OPSET:
        raise FormatError(
            f"model has opset {opset}; the int8 format needs opset >= {MIN_OPSET} (per-channel "
            "DequantizeLinear): convert it first with onnx.version_converter.convert_version(model, 17)"
        )
    for step in REWRITES:
        step(ctx)
    return CanonicalizeResult(out, ctx.log)


@rewrite
def fuse_matmul_bias_into_gemm(ctx: CanonicalizeContext) -> None:
    ctx.log.extend(fuse_matmul_bias(ctx.model))
    if ctx.claim_weights is not None:
        ctx.weight_qparams = dict(ctx.claim_weights(ctx.model))


@rewrite
def bypass_constant_identities(ctx: CanonicalizeContext) -> None:
    index = ctx.index()
    for node in list(ctx.model.graph.node):
        if node.op_type != "Identity" or not index.is_constant(node.input[0]) or node.output[0] in index.graph_outputs:
            continue
        _rename_input(index, node.output[0], node.input[0])
        ctx.model.graph.node.remove(node)


@rewrite
def fold_runtime_weight_quantize(ctx: CanonicalizeContext) -> None:
    index = ctx.index()
    for node in list(ctx.model.graph.node):
        if node.op_type != QUANTIZE or not index.is_constant(node.input[0]):
            continue
        values = index.constant(node.input[0])
        params = qdq_params(index, node)
        if params is None or not np.issubdtype(values.dtype, np.floating):
            continue
        q = quantize(values, params.to_qparams())
        ctx.model.graph.initializer.append(numpy_helper.from_array(q, node.output[0]))
        ctx.model.graph.node.remove(node)
        ctx.log.append(f"{node_label(node)}: float constant '{node.input[0]}' quantized at export, not at run time")
    _remove_unused(ctx)


@rewrite
def transpose_quantized_weights(ctx: CanonicalizeContext) -> None:
    index = ctx.index()
    graph = ctx.model.graph
    for node in list(graph.node):
        dq = index.producers.get(node.input[0]) if node.op_type == "Transpose" else None
        if (
            dq is None
            or dq.op_type != DEQUANTIZE
            or dq.input[0] not in index.initializers
            or len(index.consumers_of(dq.output[0])) != 1
        ):
            continue
        params = qdq_params(index, dq)
        if params is None:
            continue
        q = index.constant(dq.input[0])
        perm = list(attribute(node, "perm", list(range(q.ndim))[::-1]))
        name = f"{dq.input[0]}_transposed"
        graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(np.transpose(q, perm)), name))
        dq.input[0] = name
        if params.axis is not None:
            axis_attr = next(a for a in dq.attribute if a.name == "axis") if any(a.name == "axis" for a in dq.attribute) else None
            new_axis = perm.index(params.axis % q.ndim)
            if axis_attr is None:
                dq.attribute.append(onnx.helper.make_attribute("axis", new_axis))
            else:
                axis_attr.i = new_axis
        _rename_input(index, node.output[0], dq.output[0])
        graph.node.remove(node)
        ctx.log.append(f"{node_label(node)}: transpose of quantized weight '{dq.input[0]}' stored transposed")
        index = ctx.index()
    _remove_unused(ctx)


def _is_layout(op_type: str) -> bool:
    facts = facts_for(op_type)
    return facts is not None and facts.layout


@rewrite
def hoist_layout_ops_out_of_qdq(ctx: CanonicalizeContext) -> None:
    while _hoist_one_layout_op(ctx):
        pass


def _hoist_one_layout_op(ctx: CanonicalizeContext) -> bool:
    index = ctx.index()
    graph = ctx.model.graph
    for q in graph.node:
        if q.op_type != QUANTIZE or index.is_constant(q.input[0]):
            continue
        readers = index.consumers_of(q.output[0])
        if len(readers) != 1 or readers[0][1] != 0 or not _is_layout(readers[0][0].op_type):
            continue
        layout = readers[0][0]
        after = index.consumers_of(layout.output[0])
        params = qdq_params(index, q)
        if not after or any(r.op_type != DEQUANTIZE for r, _ in after) or params is None or params.axis is not None:
            continue
        if layout.output[0] in index.graph_outputs:
            continue
        layout.input[0], q.input[0] = q.input[0], layout.output[0]
        for reader, slot in after:
            reader.input[slot] = q.output[0]
        graph.node.remove(q)
        graph.node.insert(list(graph.node).index(layout) + 1, q)
        stale = {layout.output[0], q.output[0]}
        kept = [v for v in graph.value_info if v.name not in stale]
        del graph.value_info[:]
        graph.value_info.extend(kept)
        ctx.log.append(f"{node_label(layout)}: moved before {node_label(q)} (a layout op between Q and DQ)")
        return True
    return False


@rewrite
def quantize_known_float_weights(ctx: CanonicalizeContext) -> None:
    index = ctx.index()
    for name, qparams in sorted(ctx.weight_qparams.items()):
        if name not in index.initializers:
            raise FormatError(f"weight_qparams names '{name}', which is not an initializer of the model")
        if not np.issubdtype(numpy_helper.to_array(index.initializers[name]).dtype, np.floating):
            continue
        replace_initializer_with_quantized(ctx.model, name, qparams)
        ctx.log.append(f"'{name}': folded float weight stored as {qparams.spec.dtype.value} with its export-time scale")
    _remove_unused(ctx)


def _shift_dtype(values: np.ndarray, target: QuantDType) -> np.ndarray:
    offset = 128 if target is QuantDType.UINT8 else -128
    return (values.astype(np.int64) + offset).astype(target.np_dtype)


_SHIFTABLE = {QuantDType.INT8, QuantDType.UINT8}


@rewrite
def align_qdq_dtypes(ctx: CanonicalizeContext) -> None:
    index = ctx.index()
    graph = ctx.model.graph
    new_tensors: dict[str, onnx.TensorProto] = {}

    def shifted(name: str, target: QuantDType) -> str:
        new_name = f"{name}_as_{target.value}"
        if new_name not in new_tensors and new_name not in index.initializers:
            new_tensors[new_name] = numpy_helper.from_array(_shift_dtype(index.constant(name), target), new_name)
        return new_name

    for node in graph.node:
        if node.op_type == DEQUANTIZE and node.input[0] in index.initializers:
            params = qdq_params(index, node)
            role = constant_role(index, node)
            target = (ctx.preset.bias if role == "bias" else ctx.preset.weight).dtype
            if params is None or params.dtype == target or {params.dtype, target} - _SHIFTABLE or len(node.input) < 3:
                continue
            node.input[0] = shifted(node.input[0], target)
            node.input[2] = shifted(node.input[2], target)
            ctx.log.append(f"{node_label(node)}: {role} {params.dtype.value} -> {target.value} (q and zero point shifted by 128)")
        elif node.op_type == QUANTIZE and not index.is_constant(node.input[0]):
            params = qdq_params(index, node)
            target = ctx.preset.activation.dtype
            readers = index.consumers_of(node.output[0])
            if params is None or params.dtype == target or {params.dtype, target} - _SHIFTABLE or len(node.input) < 3:
                continue
            if not readers or any(r.op_type != DEQUANTIZE or len(r.input) < 3 for r, _ in readers):
                continue
            new_zp = shifted(node.input[2], target)
            node.input[2] = new_zp
            for reader, _ in readers:
                reader.input[2] = new_zp
            ctx.log.append(f"{node_label(node)}: activation {params.dtype.value} -> {target.value} (zero point shifted by 128)")
    graph.initializer.extend(new_tensors[k] for k in sorted(new_tensors))
    _remove_unused(ctx)


@rewrite
def quantize_around_pass_through(ctx: CanonicalizeContext) -> None:
    while _quantize_one_pass_through(ctx):
        pass
    _remove_unused(ctx)


def _quantize_one_pass_through(ctx: CanonicalizeContext) -> bool:
    index = ctx.index()
    for node in ctx.model.graph.node:
        facts = facts_for(node.op_type)
        if facts is None or facts.role is not Role.PASS_THROUGH or not node.input or index.is_constant(node.input[0]):
            continue
        before = index.producers.get(node.input[0])
        readers = [r for out in node.output for r, _ in index.consumers_of(out)]
        if before is not None and before.op_type == DEQUANTIZE:
            params = qdq_params(index, before)
            if params is None or params.axis is not None or any(out in index.graph_outputs for out in node.output):
                continue
            if readers and all(r.op_type == QUANTIZE and _same_params(index, r, before) for r in readers):
                continue
            for out in node.output:
                _insert_qdq_after(ctx, index, node, out, before)
            ctx.log.append(f"{node_label(node)}: the Q/DQ before this pass-through op repeated after it")
            return True
        if readers and all(r.op_type == QUANTIZE for r in readers) and (before is None or before.op_type != DEQUANTIZE):
            params = [qdq_params(index, r) for r in readers]
            if any(p is None or p.axis is not None or not p.same_as(params[0]) for p in params):
                continue
            _insert_qdq_before(ctx, index, node, readers[0])
            ctx.log.append(f"{node_label(node)}: the Q/DQ after this pass-through op repeated before it")
            return True
    return False


def _qdq_nodes(source: str, like: onnx.NodeProto, name: str) -> tuple[onnx.NodeProto, onnx.NodeProto, str]:
    """Q and DQ of ``source`` that read ``like``'s scale and zero point."""
    params = list(like.input[1:3])
    q = onnx.helper.make_node(QUANTIZE, [source, *params], [f"{name}_q"], name=f"{name}_QuantizeLinear")
    dq = onnx.helper.make_node(DEQUANTIZE, [q.output[0], *params], [f"{name}_dq"], name=f"{name}_DequantizeLinear")
    return q, dq, dq.output[0]


def _insert_qdq_after(ctx: CanonicalizeContext, index: GraphIndex, node: onnx.NodeProto, out: str, like: onnx.NodeProto) -> None:
    consumers = index.consumers_of(out)
    q, dq, new = _qdq_nodes(out, like, f"{node.name or out}_{out}_requantized")
    for consumer, slot in consumers:
        consumer.input[slot] = new
    position = index.position(node) + 1
    ctx.model.graph.node.insert(position, dq)
    ctx.model.graph.node.insert(position, q)


def _insert_qdq_before(ctx: CanonicalizeContext, index: GraphIndex, node: onnx.NodeProto, like: onnx.NodeProto) -> None:
    q, dq, new = _qdq_nodes(node.input[0], like, f"{node.name or node.output[0]}_input_requantized")
    node.input[0] = new
    position = index.position(node)
    ctx.model.graph.node.insert(position, dq)
    ctx.model.graph.node.insert(position, q)


def _same_params(index: GraphIndex, a: onnx.NodeProto, b: onnx.NodeProto) -> bool:
    pa, pb = qdq_params(index, a), qdq_params(index, b)
    return pa is not None and pb is not None and pa.same_as(pb)


def _rename_input(index: GraphIndex, old: str, new: str) -> None:
    for consumer, slot in index.consumers_of(old):
        consumer.input[slot] = new


@rewrite
def merge_duplicate_qdq(ctx: CanonicalizeContext) -> None:
    changed = True
    while changed:
        changed = False
        index = ctx.index()
        for node in ctx.model.graph.node:
            if node.op_type not in (QUANTIZE, DEQUANTIZE):
                continue
            twin = _twin(index, node)
            if twin is not None:
                if node.output[0] in index.graph_outputs:
                    continue
                _rename_input(index, node.output[0], twin.output[0])
                ctx.model.graph.node.remove(node)
                ctx.log.append(f"{node_label(node)}: duplicate of {node_label(twin)} removed")
                changed = True
                break
    _remove_unused(ctx)


def _twin(index: GraphIndex, node: onnx.NodeProto) -> onnx.NodeProto | None:
    """An earlier node that computes exactly what ``node`` computes."""
    source = node.input[0]
    if node.op_type == QUANTIZE:
        dq = index.producers.get(source)
        if dq is not None and dq.op_type == DEQUANTIZE:
            q = index.producers.get(dq.input[0])
            if q is not None and q.op_type == QUANTIZE and _same_params(index, q, node):
                return q  # Q(DQ(q)) == q
    here = index.position(node)
    for sibling, _ in index.consumers_of(source):
        if index.position(sibling) >= here:
            continue  # only nodes before this one count, so the first of the twins stays
        if sibling.op_type == node.op_type and _same_params(index, sibling, node):
            return sibling
    return None


@rewrite
def quantize_float_bias(ctx: CanonicalizeContext) -> None:
    index = ctx.index()
    graph = ctx.model.graph
    for node in list(graph.node):
        rule = facts_for(node.op_type)
        if rule is None or rule.bias is None or len(node.input) <= rule.bias:
            continue
        bias_name = node.input[rule.bias]
        bias = index.constant(bias_name) if bias_name else None
        if bias is None or not np.issubdtype(bias.dtype, np.floating):
            continue
        producers = [index.producers.get(node.input[i]) for i in (0, rule.weight)]
        if any(p is None or p.op_type != DEQUANTIZE for p in producers):
            continue
        params = [qdq_params(index, p) for p in producers]
        if any(p is None for p in params):
            continue
        input_qp, weight_qp = (p.to_qparams() for p in params)
        if input_qp.per_channel:
            continue
        qparams = bias_qparams(bias, input_qp, weight_qp, ctx.preset.bias, ctx.preset.bias_rule)
        pieces = make_quantized_constant(f"{node.name or node.output[0]}_bias", bias, qparams)
        pieces.add_to(graph, 0)
        node.input[rule.bias] = pieces.output
        ctx.log.append(f"{node_label(node)}: float bias '{bias_name}' stored as {qparams.spec.dtype.value}")
    _remove_unused(ctx)


def _remove_unused(ctx: CanonicalizeContext) -> None:
    """Drop Q/DQ nodes whose outputs nothing reads, then initializers nothing reads."""
    graph = ctx.model.graph
    while True:
        index = ctx.index()
        dead = [
            n
            for n in graph.node
            if n.op_type in (QUANTIZE, DEQUANTIZE)
            and not any(index.consumers_of(o) or o in index.graph_outputs for o in n.output)
        ]
        if not dead:
            break
        for n in dead:
            graph.node.remove(n)
    remove_unused_initializers(graph)


__all__ = ["REWRITES", "CanonicalizeResult", "QdqParams", "canonicalize"]
