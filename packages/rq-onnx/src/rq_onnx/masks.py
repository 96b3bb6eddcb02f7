"""Attention masks: tensors no int8 range can hold, kept in float with the ops that carry them.

A Hugging Face encoder turns its integer ``attention_mask`` into an additive mask: 0 where a token
counts, and -inf (``Where(mask == 0, -inf, 0)``) or float32's lowest value (``(1 - mask) * finfo.min``)
where it does not. The mask is added to the attention scores, and Softmax makes the masked positions
exactly 0. Quantized, the mask's range would be [-3.4e38, 0] (or infinite): every score would round
to one step. So the ops from such a source to the Softmax (the Where / Mul that make the mask, the
shape ops that broadcast it, the Add that applies it) and the Softmax itself run in float; the
scores before and the probabilities after stay quantized.

A *mask source* is an op with a constant operand that is infinite or beyond +-1e30 (no activation
of a trained network is that large). Its path counts when it reaches a Softmax's input through
elementwise and shape ops only.
"""

from __future__ import annotations

import numpy as np
import onnx

from rq_common.format.graph import GraphIndex

EXTREME = 1e30
MASK_REASON = "carries an attention mask (infinite or float's extreme values): no int8 range holds it"
# the ops a mask passes through on its way to the Softmax (elementwise, broadcasting, reshaping)
_MASK_PATH_OPS = frozenset(
    {"Add", "Sub", "Mul", "Where", "Cast", "Reshape", "Unsqueeze", "Squeeze", "Expand", "Transpose", "Min", "Max", "Slice", "Neg"}
)


def _is_extreme(value: np.ndarray | None) -> bool:
    if value is None or not np.issubdtype(value.dtype, np.floating) or value.size == 0:
        return False
    finite = np.isfinite(value)
    return bool(not finite.all() or np.abs(value[finite]).max(initial=0.0) >= EXTREME)


def masked_nodes(model: onnx.ModelProto) -> dict[str, str]:
    """Node name -> the reason it stays in float, for every node on a mask's path to a Softmax."""
    index = GraphIndex(model)
    carrying: set[str] = set()  # tensors that hold a mask, or a mask added to something
    producer_of: dict[str, onnx.NodeProto] = {}
    for node in model.graph.node:
        if node.op_type not in _MASK_PATH_OPS:
            continue
        source = any(_is_extreme(index.constant(name)) for name in node.input if name)
        if source or any(name in carrying for name in node.input):
            for out in node.output:
                carrying.add(out)
                producer_of[out] = node
    keep: dict[str, str] = {}
    stack = []
    for node in model.graph.node:
        if node.op_type == "Softmax" and node.input[0] in carrying:
            keep[node.name] = MASK_REASON
            stack.append(node.input[0])
    while stack:  # back from each Softmax, over the carrying tensors only
        name = stack.pop()
        node = producer_of.get(name)
        if node is None or node.name in keep:
            continue
        keep[node.name] = MASK_REASON
        stack.extend(x for x in node.input if x in carrying)
    return keep
