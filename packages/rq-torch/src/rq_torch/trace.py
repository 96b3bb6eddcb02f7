"""torch.fx tracing with errors that name the line and the fix."""

from __future__ import annotations

import traceback
from collections.abc import Sequence

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


def trace(model: nn.Module, leaf_modules: Sequence[type[nn.Module]] = ()) -> fx.GraphModule:
    tracer = RqTracer(leaf_modules)
    try:
        graph = tracer.trace(model)
    except Exception as error:  # fx raises TraceError, TypeError, AttributeError, ... from user code
        raise TraceError(
            f"torch.fx cannot trace {type(model).__name__} at {_user_frame(error)}: {type(error).__name__}: {error}. {_FIX}"
        ) from None
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
