"""Transforms of a frozen GraphDef, each a small function that returns a new GraphDef and keeps what
the graph computes (each is tested against a Session run before and after):

- cut_at_inputs: an input node that is not a Placeholder becomes one (the graph starts there);
- strip_training_nodes: Identity / CheckNumerics / StopGradient / Snapshot bypassed (an inference-form
  dropout is an Identity), and nodes the outputs do not need removed;
- fold_constants: every node computed from constants only becomes a Const;
- fold_batchnorms: FusedBatchNorm(V2/V3) in inference form, and its Mul/Add form, folded into the
  Conv2D / DepthwiseConv2dNative / MatMul before it (rq_common's float64 folding);
- normalize_bias_adds: Add/AddV2 of a per-channel constant after such an op becomes a BiasAdd.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from rq_common.qmath import fold_batchnorm, fold_scale_shift
from rq_common.qmath.npu_rules import is_leaky_alpha_exact, round_leaky_alpha
from rq_tf1.graphdef import (
    GraphDef,
    NodeDef,
    const_value,
    copy,
    make_const,
    nodes_by_name,
    readers,
    replace_reads,
    run,
    tensor_name,
    weight_view,
)
from rq_tf1.ops import WEIGHTED_OPS

BYPASSED_OPS = frozenset({"Identity", "CheckNumerics", "StopGradient", "PreventGradient", "Snapshot"})
STATEFUL_OPS = frozenset({"Placeholder", "PlaceholderWithDefault", "RandomUniform", "RandomStandardNormal", "TruncatedNormal"})


def strip_training_nodes(graph_def: GraphDef, inputs: list[str], outputs: list[str]) -> GraphDef:
    out = copy(graph_def)
    keep = set(inputs) | set(outputs)
    for node in list(out.node):
        if node.op in BYPASSED_OPS and node.name not in keep and node.input:
            replace_reads(out, node.name, node.input[0])
            out.node.remove(node)
    for node in out.node:  # control edges (to removed asserts and the like) go too: inference needs none
        node.input[:] = [ref for ref in node.input if not ref.startswith("^")]
    return tf.compat.v1.graph_util.extract_sub_graph(out, outputs)


def fold_constants(graph_def: GraphDef, outputs: list[str]) -> GraphDef:
    """Nodes whose inputs are all constant become Const nodes holding their value."""
    by_name = nodes_by_name(graph_def)
    constant: dict[str, bool] = {}

    def is_constant(name: str) -> bool:
        if name not in constant:
            node = by_name[name]
            constant[name] = node.op == "Const" or (
                node.op not in STATEFUL_OPS
                and bool(node.input)
                and all(is_constant(ref.lstrip("^").split(":")[0]) for ref in node.input)
            )
        return constant[name]

    for node in graph_def.node:
        is_constant(node.name)
    read = readers(graph_def)
    frontier = [
        n.name
        for n in graph_def.node
        if constant[n.name]
        and n.op != "Const"
        and (n.name in outputs or any(not constant[r.name] for r in read.get(f"{n.name}:0", [])))
    ]
    if not frontier:
        return copy(graph_def)
    values = run(graph_def, [f"{name}:0" for name in frontier], {})
    out = copy(graph_def)
    for name, value in zip(frontier, values):
        index = next(i for i, n in enumerate(out.node) if n.name == name)
        out.node[index].CopyFrom(make_const(name, value))
    return tf.compat.v1.graph_util.extract_sub_graph(out, outputs)


def _single_reader(read, tensor: str) -> NodeDef | None:
    found = read.get(tensor_name(tensor), [])
    return found[0] if len(found) == 1 else None


def _weighted_source(by_name, read, node: NodeDef) -> tuple[NodeDef, NodeDef | None] | None:
    """The weighted op (and its BiasAdd) whose output ``node`` reads, when ``node`` is its only reader."""
    source = by_name.get(node.input[0].split(":")[0])
    bias_add = None
    if source is not None and source.op == "BiasAdd":
        bias_add, source = source, by_name.get(source.input[0].split(":")[0])
        if _single_reader(read, bias_add.name) is not node or _single_reader(read, source.name) is not bias_add:
            return None
    elif source is None or _single_reader(read, source.name) is not node:
        return None
    if source.op not in WEIGHTED_OPS or const_value(by_name.get(source.input[1].split(":")[0])) is None:
        return None
    if bias_add is not None and const_value(by_name.get(bias_add.input[1].split(":")[0])) is None:
        return None
    return source, bias_add


def _set_folded(
    out: GraphDef, op: NodeDef, bias_add: NodeDef | None, after: NodeDef, weight: np.ndarray, bias: np.ndarray
) -> None:
    """Write the folded weight and bias; ``after`` (the BN or Mul/Add) becomes that BiasAdd."""
    by_name = nodes_by_name(out)
    weight_node = by_name[op.input[1].split(":")[0]]
    weight_node.attr["value"].tensor.CopyFrom(tf.make_tensor_proto(weight.astype(np.float32)))
    bias_name = f"{after.name}/folded_bias"
    out.node.append(make_const(bias_name, bias.astype(np.float32)))
    source = bias_add.input[0] if bias_add is not None else op.name
    new = NodeDef(name=after.name, op="BiasAdd", input=[source, bias_name])
    new.attr["T"].type = tf.float32.as_datatype_enum
    index = next(i for i, n in enumerate(out.node) if n.name == after.name)
    out.node[index].CopyFrom(new)
    if bias_add is not None:
        out.node.remove(next(n for n in out.node if n.name == bias_add.name))


def _fold(op: NodeDef, weight: np.ndarray, bias: np.ndarray | None, fold) -> tuple[np.ndarray, np.ndarray]:
    view, axis = weight_view(op, weight)
    folded, new_bias = fold(view, bias, axis)
    return folded.reshape(weight.shape), new_bias


def fold_batchnorms(graph_def: GraphDef) -> GraphDef:
    out = copy(graph_def)
    changed = True
    while changed:
        changed = False
        by_name, read = nodes_by_name(out), readers(out)
        for node in out.node:
            found = _weighted_source(by_name, read, node) if node.input else None
            if found is None:
                continue
            op, bias_add = found
            weight = const_value(by_name[op.input[1].split(":")[0]])
            bias = const_value(by_name[bias_add.input[1].split(":")[0]]) if bias_add is not None else None
            folded = _fold_one(node, by_name, read, op, weight, bias)
            if folded is None:
                continue
            after, new_weight, new_bias = folded
            _set_folded(out, op, bias_add, after, new_weight, new_bias)
            if after is not node:  # Mul then Add: the Mul goes, the Add became the BiasAdd
                replace_reads(out, node.name, op.name if bias_add is None else bias_add.input[0])
                out.node.remove(next(n for n in out.node if n.name == node.name))
            changed = True
            break
    return out


def _fold_one(node, by_name, read, op, weight, bias):
    """(the node that becomes the BiasAdd, W', b') for a BN (fused, or Mul[/Add] of per-channel
    constants) reading ``op``'s output; None when ``node`` is not one."""
    if node.op in ("FusedBatchNorm", "FusedBatchNormV2", "FusedBatchNormV3") and not node.attr["is_training"].b:
        if node.attr["data_format"].s not in (b"", b"NHWC"):
            return None
        values = [const_value(by_name.get(ref.split(":")[0])) for ref in node.input[1:5]]
        if any(v is None for v in values) or _has_other_outputs_read(read, node):
            return None
        gamma, beta, mean, var = values
        eps = node.attr["epsilon"].f
        w, b = _fold(op, weight, bias, lambda v, bb, axis: fold_batchnorm(v, bb, gamma, beta, mean, var, eps, channel_axis=axis))
        return node, w, b
    view, axis = weight_view(op, weight)
    channels = view.shape[axis]
    scale = _per_channel_constant(by_name, node, channels) if node.op == "Mul" else None
    if scale is None:
        return None
    add = _single_reader(read, node.name)
    shift = _per_channel_constant(by_name, add, channels) if add is not None and add.op in ("Add", "AddV2") else None
    after = add if shift is not None else node
    w, b = _fold(
        op, weight, bias, lambda v, bb, axis: fold_scale_shift(v, bb, scale, 0.0 if shift is None else shift, channel_axis=axis)
    )
    return after, w, b


def _has_other_outputs_read(read, node: NodeDef) -> bool:
    return any(read.get(f"{node.name}:{i}") for i in range(1, 6))


def _per_channel_constant(by_name, node: NodeDef | None, channels: int) -> np.ndarray | None:
    """The constant operand of a binary ``node`` as one value per channel (NHWC: the last axis)."""
    if node is None or len(node.input) != 2:
        return None
    values = [const_value(by_name.get(ref.split(":")[0])) for ref in node.input]
    value = next((v for v in values if v is not None), None)
    if value is None or sum(v is not None for v in values) != 1 or not np.issubdtype(value.dtype, np.floating):
        return None
    if value.size == 1:
        return np.full(channels, float(value.reshape(-1)[0]))
    if value.shape[-1] == channels and value.size == channels:
        return value.reshape(channels)
    return None


def normalize_bias_adds(graph_def: GraphDef) -> GraphDef:
    """Add / AddV2 of a per-channel constant right after a weighted op becomes a BiasAdd, so that
    every weighted op's bias is one BiasAdd (what tf2onnx folds into the Conv / Gemm)."""
    out = copy(graph_def)
    by_name, read = nodes_by_name(out), readers(out)
    for node in out.node:
        if node.op not in ("Add", "AddV2") or len(node.input) != 2:
            continue
        source = by_name.get(node.input[0].split(":")[0])
        constant = const_value(by_name.get(node.input[1].split(":")[0]))
        if source is None or source.op not in WEIGHTED_OPS or _single_reader(read, source.name) is not node:
            continue
        weight = const_value(by_name.get(source.input[1].split(":")[0]))
        if weight is None or constant is None or constant.ndim < 1 or any(d != 1 for d in constant.shape[:-1]):
            continue
        view, axis = weight_view(source, weight)
        if constant.shape[-1] != view.shape[axis]:
            continue
        if constant.ndim > 1:  # Keras 3 adds a Conv's bias reshaped to (1, 1, 1, C): BiasAdd takes it 1-D
            bias_name = f"{node.name}/bias"
            out.node.append(make_const(bias_name, constant.reshape(-1).astype(np.float32)))
            node.input[1] = bias_name
        node.op = "BiasAdd"
    return out


def cut_at_inputs(graph_def: GraphDef, inputs: list[str]) -> GraphDef:
    """Each input node that is not a Placeholder becomes one of the same name, type and (statically
    inferred) shape: the graph starts there (vai_q_tensorflow's --input_nodes may name the last
    preprocessing node, and input_fn then gives that node's values); what only fed it is dropped
    with the training nodes."""
    cut = [n for n in graph_def.node if n.name in inputs and n.op != "Placeholder"]
    if not cut:
        return graph_def
    with tf.Graph().as_default() as graph:
        tf.graph_util.import_graph_def(graph_def, name="")
        tensors = {n.name: graph.get_tensor_by_name(f"{n.name}:0") for n in cut}
    out = copy(graph_def)
    for node in out.node:
        if node.name in tensors:
            placeholder = NodeDef(name=node.name, op="Placeholder")
            placeholder.attr["dtype"].type = tensors[node.name].dtype.as_datatype_enum
            placeholder.attr["shape"].shape.CopyFrom(tensors[node.name].shape.as_proto())
            node.CopyFrom(placeholder)
    return out


def round_leaky_alphas(graph_def: GraphDef) -> tuple[GraphDef, list[str]]:
    """The NPU computes LeakyRelu with alpha in steps of 1/256 (rq_common.qmath.npu_rules): the
    graph computes, and calibrates, what it will run (fixed-point targets only)."""
    out = copy(graph_def)
    notes = []
    for node in out.node:
        if node.op == "LeakyRelu":
            alpha = node.attr["alpha"].f if "alpha" in node.attr else 0.2  # TF's default
            if not is_leaky_alpha_exact(alpha):
                rounded = round_leaky_alpha(alpha)
                notes.append(
                    f"LeakyRelu '{node.name}': alpha {alpha:.6g} -> {rounded:.6g} ({round(rounded * 256)}/256), as the NPU computes it"
                )
                node.attr["alpha"].f = rounded
    return out, notes


def prepare(graph_def: GraphDef, inputs: list[str], outputs: list[str]) -> GraphDef:
    """Every transform, in order: the float graph rq-tf1 calibrates and quantizes."""
    graph_def = cut_at_inputs(graph_def, inputs)
    graph_def = strip_training_nodes(graph_def, inputs, outputs)
    graph_def = fold_constants(graph_def, outputs)
    graph_def = normalize_bias_adds(graph_def)
    return fold_batchnorms(graph_def)
