"""Cross-layer equalization of a traced model (the math: rq_common.qmath.equalization).

The same pairs as rq-onnx's (rq_onnx.equalize), found on the fx graph by the ONNX op each call
exports to: an nn.Conv1d / Conv2d / Linear whose output reaches exactly one other such layer's
input through ops the op table says commute with a per-channel scale (ReLU6 as
``Equalization.relu6`` says). Runs after BatchNorm folding, before quantizers are placed.
High-bias absorption needs calibration data, which quantize_model does not see: rq-torch does
not absorb (rq-onnx does).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import fx, nn

from rq_common.optable import facts_for
from rq_common.qmath.equalization import Equalization, Layer, Relu6, equalize
from rq_torch.ops import onnx_op

CONVS = (nn.Conv1d, nn.Conv2d)


def _kind(gm: fx.GraphModule, node: fx.Node) -> str | None:
    """'conv' or 'linear' for a plain weight layer rq equalizes, else None."""
    if node.op != "call_module":
        return None
    module = gm.get_submodule(node.target)
    if type(module) in CONVS and module.padding_mode == "zeros":
        return "conv"
    return "linear" if type(module) is nn.Linear else None


def _is_relu6(gm: fx.GraphModule, node: fx.Node) -> bool:
    return onnx_op(gm, node) == "Clip"  # rq-torch maps only ReLU6 and hardtanh(0, 6) to Clip


def _commutes(gm: fx.GraphModule, node: fx.Node) -> bool:
    facts = facts_for(onnx_op(gm, node))
    return _is_relu6(gm, node) or (facts is not None and facts.scale_commutes)


def _drops_spatial(gm: fx.GraphModule, node: fx.Node, before: list[fx.Node]) -> bool:
    """``node`` (a flatten, view, reshape or squeeze) makes the (N, C, 1, 1) output of the global
    pooling just before it (N, C), by the shapes the trace recorded."""
    if onnx_op(gm, node) not in ("Flatten", "Reshape", "Squeeze") or not before or onnx_op(gm, before[-1]) != "GlobalAveragePool":
        return False
    pooled, out = before[-1].meta.get("tensor_meta"), node.meta.get("tensor_meta")
    return pooled is not None and out is not None and len(out.shape) == 2 and tuple(out.shape) == tuple(pooled.shape[:2])


def find_pairs(gm: fx.GraphModule) -> list[tuple[fx.Node, fx.Node, list[fx.Node]]]:
    """(producer, consumer, the nodes between them) for every pair, ReLU6 ones included."""
    calls: dict[str, int] = {}
    for node in gm.graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    pairs = []
    for producer in gm.graph.nodes:
        kind = _kind(gm, producer)
        if kind is None or calls[producer.target] > 1:  # a module called twice shares its weight between calls
            continue
        node, path, reads_as = producer, [], kind
        while len(node.users) == 1:
            (reader,) = node.users
            if _kind(gm, reader) is not None:
                if _kind(gm, reader) == reads_as and reader.args and reader.args[0] is node and calls[reader.target] == 1:
                    pairs.append((producer, reader, path))
                break
            if not (reader.args and reader.args[0] is node):
                break
            if _drops_spatial(gm, reader, path):
                reads_as = "linear"  # (N, C, 1, 1) -> (N, C): a Linear reads channel i where the conv wrote it
            elif not _commutes(gm, reader):
                break
            path.append(reader)
            node = reader
    return pairs


def _layer(module: nn.Module) -> Layer:
    weight = module.weight.detach().double().numpy()
    bias = None if module.bias is None else module.bias.detach().double().numpy()
    if isinstance(module, nn.Linear):
        return Layer.linear(weight, bias)
    return Layer.conv(weight, bias, module.groups)


def _write(module: nn.Module, layer: Layer) -> None:
    with torch.no_grad():
        module.weight.copy_(torch.from_numpy(layer.weight()))
        if module.bias is not None:
            module.bias.copy_(torch.from_numpy(layer.bias.astype("float32")))


def _to_relu(gm: fx.GraphModule, node: fx.Node) -> None:
    """A ReLU6 call becomes F.relu (Relu6.RELU); a ReLU6 module other calls share stays as it is there."""
    with gm.graph.inserting_after(node):
        relu = gm.graph.call_function(F.relu, (node.args[0],))
    node.replace_all_uses_with(relu)
    gm.graph.erase_node(node)


def equalize_layers(gm: fx.GraphModule, config: Equalization) -> list[str]:
    """Equalize ``gm``'s pairs in place; the notes for the user."""
    found = find_pairs(gm)
    kept_apart = [p for p in found if any(_is_relu6(gm, n) for n in p[2])] if config.relu6 is Relu6.KEEP else []
    pairs = [p for p in found if p not in kept_apart]
    notes = []
    if kept_apart:
        notes.append(
            f"cross-layer equalization: {len(kept_apart)} pair(s) joined through ReLU6 left as they are "
            "(its clamp at 6 does not commute with a scale; Equalization(relu6='relu') makes it ReLU and equalizes them)"
        )
    if not pairs:
        return [*notes, "cross-layer equalization: no pair of layers to equalize"]
    modules = {n.target: gm.get_submodule(n.target) for p in pairs for n in p[:2]}
    layers = {target: _layer(module) for target, module in modules.items()}
    rounds = equalize([(layers[p.target], layers[c.target]) for p, c, _ in pairs], config.max_iterations)
    for target, module in modules.items():
        _write(module, layers[target])
    relaxed = [n for _, _, path in pairs for n in path if _is_relu6(gm, n)]
    for node in relaxed:
        _to_relu(gm, node)
    gm.graph.lint()
    gm.delete_all_unused_submodules()
    gm.recompile()
    notes.append(
        f"cross-layer equalization: {len(pairs)} pair(s) of layers equalized ({rounds} round(s))"
        + (f"; {len(relaxed)} ReLU6 became ReLU" if relaxed else "")
    )
    return notes
