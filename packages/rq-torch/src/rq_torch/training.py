"""QAT on a model that ends in Softmax or Sigmoid: the loss wants the values before it.

``pre_activation(qmodel)`` is a view of the quantized model whose outputs are the inputs of its
final Softmax / Sigmoid (as quantized as they are in qmodel), sharing every module and parameter
with it: train the view with a loss on logits (cross-entropy, BCE-with-logits), export qmodel.
"""

from __future__ import annotations

import copy

from torch import fx

from rq_common.errors import SpecError
from rq_torch.ops import onnx_op
from rq_torch.quantizer import TensorQuantizer

FINAL_ACTIVATIONS = ("Softmax", "Sigmoid")


def _before_final_activation(gm: fx.GraphModule, node):
    """The node an output ``node`` is computed from before its final activation (and that
    activation's output quantizer), or None where the output ends in no such activation."""
    if not isinstance(node, fx.Node):
        return None
    if node.op == "call_module" and isinstance(gm.get_submodule(node.target), TensorQuantizer):
        node = node.args[0]
    if onnx_op(gm, node) in FINAL_ACTIVATIONS and node.args and isinstance(node.args[0], fx.Node):
        return node.args[0]
    return None


def pre_activation(qmodel: fx.GraphModule) -> fx.GraphModule:
    """A view of ``qmodel`` (made by quantize_model) that returns, for each output that ends in a
    Softmax or Sigmoid, that activation's input; the other outputs as they are. Modules and
    parameters are qmodel's own: training the view trains qmodel."""
    graph = copy.deepcopy(qmodel.graph)
    output = next(n for n in graph.nodes if n.op == "output")
    changed = []

    def swap(value):
        before = _before_final_activation(qmodel, value)
        if before is None:
            return value
        changed.append(value)
        return before

    output.args = (fx.node.map_arg(output.args[0], swap),)
    if not changed:
        raise SpecError("pre_activation", "the model's outputs end in no Softmax or Sigmoid: train on its outputs as they are")
    view = fx.GraphModule(qmodel, graph)
    view.graph.eliminate_dead_code()  # the final activations (and their quantizers) go
    view.recompile()
    view.rq_plan = qmodel.rq_plan
    return view
