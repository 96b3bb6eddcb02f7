"""torch.fx tracing with errors that name the line and the fix."""

from __future__ import annotations

import inspect
import re
import traceback
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import fx, nn

from rq_torch.errors import TraceError

_FIX = (
    "Fix: mark the submodule that runs this code as a leaf (quantize_model(..., leaf_modules=[ThatModule])); "
    "it then runs in float and the report lists it. Or write the op with rq_torch.modules.Add / Mul / Cat / MatMul, "
    "and move data-dependent Python control flow out of forward()."
)


class RqTracer(fx.Tracer):
    def __init__(self, leaf_modules: Sequence[type[nn.Module]] = ()):
        super().__init__()
        self.extra_leaves = tuple(leaf_modules)

    def is_leaf_module(self, m: nn.Module, qualified_name: str) -> bool:
        return isinstance(m, self.extra_leaves) or super().is_leaf_module(m, qualified_name)


def _user_frame(error: BaseException) -> str:
    """file:line and code of the innermost frame outside torch (the user's line)."""
    frames = [
        f for f in traceback.extract_tb(error.__traceback__) if "/torch/" not in f.filename and "/rq_torch/" not in f.filename
    ]
    if not frames:
        return "an unknown line"
    frame = frames[-1]
    return f"{frame.filename}:{frame.lineno} ({(frame.line or '').strip()})"


def _root_branch(model: nn.Module, error: BaseException) -> list[tuple[str, Any]]:
    """The arguments with a default (name, default) that the root forward() branches on where fx
    failed: leaf_modules cannot help there (the root is no submodule), concrete_args can. Empty when
    the failure is elsewhere or not a Python branch on a traced value."""
    if not (isinstance(error, fx.proxy.TraceError) and "control flow" in str(error)):
        return []
    forward = type(model).forward
    try:
        lines, start = inspect.getsourcelines(forward)
        source = inspect.getsourcefile(forward)
    except (OSError, TypeError):
        return []
    frames = [f for f in traceback.extract_tb(error.__traceback__) if f.filename == source and f.name == "forward"]
    frame = next((f for f in reversed(frames) if start <= (f.lineno or 0) < start + len(lines)), None)
    if frame is None:
        return []
    defaults = [(p.name, p.default) for p in inspect.signature(forward).parameters.values() if p.default is not p.empty]
    named = [(name, default) for name, default in defaults if re.search(rf"\b{re.escape(name)}\b", frame.line or "")]
    return named or defaults


def _drop_specialized(graph: fx.Graph, concrete_args: Mapping[str, Any]) -> None:
    """fx keeps a concrete argument as a placeholder with an assert on its value: the quantized
    model is made for that value, so both go (the export's inputs are then the tensors only)."""
    for node in list(graph.nodes):
        if node.op == "call_function" and node.target is torch._assert:
            condition = node.args[0]
            graph.erase_node(node)
            if isinstance(condition, fx.Node) and not condition.users:
                graph.erase_node(condition)
    names = [re.compile(rf"{re.escape(name)}(_\d+)?") for name in concrete_args]
    for node in list(graph.nodes):
        if node.op == "placeholder" and not node.users and any(n.fullmatch(str(node.target)) for n in names):
            graph.erase_node(node)


def trace(
    model: nn.Module, leaf_modules: Sequence[type[nn.Module]] = (), concrete_args: Mapping[str, Any] | None = None
) -> fx.GraphModule:
    tracer = RqTracer(leaf_modules)
    try:
        graph = tracer.trace(model, concrete_args=dict(concrete_args) if concrete_args else None)
    except Exception as error:  # fx raises TraceError, TypeError, AttributeError, ... from user code
        where = f"torch.fx cannot trace {type(model).__name__} at {_user_frame(error)}"
        branches = _root_branch(model, error)
        if branches:
            given = ", ".join(f"'{name}': {default!r}" for name, default in branches)
            raise TraceError(
                f"{where}: forward() branches in Python on its argument {' / '.join(repr(n) for n, _ in branches)}, "
                f"which fx cannot trace. Fix: quantize_model(..., concrete_args={{{given}}}) traces the model for that "
                "value (quantize once per value you need)"
            ) from None
        raise TraceError(f"{where}: {type(error).__name__}: {error}. {_FIX}") from None
    if concrete_args:
        _drop_specialized(graph, concrete_args)
    return fx.GraphModule(tracer.root, graph, type(model).__name__)


# in-place tensor methods and their out-of-place forms
INPLACE_METHODS = {
    "relu_": "relu", "sigmoid_": "sigmoid", "tanh_": "tanh", "clamp_": "clamp", "clamp_min_": "clamp_min",
    "add_": "add", "sub_": "sub", "mul_": "mul", "div_": "div", "hardtanh_": "hardtanh",
}  # fmt: skip


def functionalize_inplace(gm: fx.GraphModule) -> None:
    """An in-place op (a module with ``inplace=True``, ``F.relu(x, inplace=True)``, ``x.relu_()``)
    changes its input for every later reader, which fx's graph does not show: CRAFT's VGG slices
    start with the previous slice's ReLU(inplace=True), so the skip connection reads the ReLU'd
    tensor while the graph says it reads the BatchNorm's output, and quantizers would go to the
    wrong tensor. Later readers of the input are pointed at the op's output and the op is made
    out of place: the graph then says what runs, with the same values."""
    order = {node: i for i, node in enumerate(gm.graph.nodes)}
    for node in list(gm.graph.nodes):
        if node.op == "call_module" and getattr(gm.get_submodule(node.target), "inplace", None) is True:
            gm.get_submodule(node.target).inplace = False
        elif node.op == "call_function" and node.kwargs.get("inplace") is True:
            node.kwargs = {**node.kwargs, "inplace": False}
        elif node.op == "call_method" and node.target in INPLACE_METHODS:
            node.target = INPLACE_METHODS[node.target]
        else:
            continue
        source = node.args[0] if node.args else None
        if isinstance(source, fx.Node):
            for reader in list(source.users):
                if reader is not node and order[reader] > order[node]:
                    reader.replace_input_with(source, node)
    gm.recompile()


def shape_propagate(gm: fx.GraphModule, example_inputs: tuple) -> None:
    """Run the example inputs through, recording each node's tensor metadata (node.meta)."""
    from torch.fx.passes.shape_prop import ShapeProp

    try:
        with torch.no_grad():
            ShapeProp(gm).propagate(*example_inputs)
    except Exception as error:
        shapes = [tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__ for t in example_inputs]
        raise TraceError(
            f"the model does not run on the example inputs {shapes}: {type(error).__name__}: {str(error).splitlines()[0]}. "
            "Pass example_inputs as a tuple of tensors with the shapes the model takes (batch included)"
        ) from None
