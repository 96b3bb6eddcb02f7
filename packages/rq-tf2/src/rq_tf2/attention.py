"""keras.layers.MultiHeadAttention as the layers it computes with, so that each part quantizes.

MultiHeadAttention is one layer whose call() runs EinsumDense projections, a scaled dot product,
a softmax and a second product. Its plain form is the same computation written with the layers
rq-tf2 has rules for, the form an NPU compiler expects:

    q = Dense(N*H)(query) -> Reshape(T, N, H) -> Permute(N, T, H)   (1/sqrt(H) folded into q's weights)
    k, v likewise from key and value
    scores = MatMul(transpose_b)(q, k); probs = Softmax(scores) [-> Dropout]; out = MatMul(probs, v)
    -> Permute(T, N, V) -> Reshape(T, N*V) -> Dense(E)

Folding 1/sqrt(H) into the query projection moves one float rounding (exactly nothing when H is a
power of 4); every weight is otherwise the layer's own, reshaped. Calls this cannot express (masks,
a causal mask, returned scores, a gate, attention over other axes, inputs not of rank 3) keep the
layer, which then runs in float with a warning.
"""

from __future__ import annotations

import keras
import numpy as np

from rq_tf2.graph import FunctionalGraph, GraphNode, rebuild
from rq_tf2.layers import MatMul

L = keras.layers

# call() arguments that, when given (not None / False), make the plain form inexact
_UNSUPPORTED_ARGUMENTS = ("query_mask", "value_mask", "key_mask", "attention_mask", "return_attention_scores", "use_causal_mask")


def plain_form_obstacle(layer: L.MultiHeadAttention, args: tuple, kwargs: dict) -> str | None:
    """Why this call of ``layer`` cannot be written as plain layers (None: it can)."""
    given = [name for name in _UNSUPPORTED_ARGUMENTS if kwargs.get(name) not in (None, False)]
    if given:
        return f"called with {', '.join(given)}"
    tensors = [*args, *(kwargs.get(k) for k in ("query", "value", "key") if kwargs.get(k) is not None)]
    if any(len(t.shape) != 3 for t in tensors):
        return "inputs are not (batch, tokens, features)"
    if getattr(layer, "_use_gate", False):
        return "use_gate=True"
    if getattr(layer, "_sliding_window", None) is not None:
        return "sliding_window is set"
    if tuple(layer._attention_axes) != (1,):
        return f"attention_axes={layer._attention_axes}"
    return None


PART_SUFFIXES = tuple(f"_{part}{suffix}" for part in ("query", "key", "value") for suffix in ("", "_split", "_heads")) + (
    "_scores",
    "_softmax",
    "_dropout",
    "_attend",
    "_merge_heads",
    "_merge",
    "_output",
)


def parts_of(name: str) -> set[str]:
    """The names of the layers a MultiHeadAttention named ``name`` is written out as."""
    return {f"{name}{suffix}" for suffix in PART_SUFFIXES}


def _projection(name: str, dense, x, tokens_heads_dim: tuple[int, int], scale: float = 1.0):
    """EinsumDense (E -> N, H) as Dense(N*H), Reshape and Permute: [B, N, T, H]."""
    heads, dim = tokens_heads_dim
    kernel = np.asarray(dense.kernel).reshape(-1, heads * dim) * np.float32(scale)
    layer = L.Dense(heads * dim, use_bias=dense.bias is not None, name=name)
    out = layer(x)
    layer.kernel.assign(kernel)
    if dense.bias is not None:
        layer.bias.assign(np.asarray(dense.bias).reshape(-1) * np.float32(scale))
    out = L.Reshape((-1, heads, dim), name=f"{name}_split")(out)
    return L.Permute((2, 1, 3), name=f"{name}_heads")(out)


def plain_attention(layer: L.MultiHeadAttention, query, value, key=None):
    """The layers that compute ``layer(query, value, key)``, applied to the tensors given."""
    key = value if key is None else key
    heads, key_dim = layer.num_heads, layer.key_dim
    value_dim = layer.value_dim or key_dim
    name = layer.name
    q = _projection(f"{name}_query", layer.query_dense, query, (heads, key_dim), scale=1.0 / np.sqrt(key_dim))
    k = _projection(f"{name}_key", layer.key_dense, key, (heads, key_dim))
    v = _projection(f"{name}_value", layer.value_dense, value, (heads, value_dim))
    probs = L.Softmax(axis=-1, name=f"{name}_softmax")(MatMul(transpose_b=True, name=f"{name}_scores")([q, k]))
    if layer.dropout:
        probs = L.Dropout(layer.dropout, name=f"{name}_dropout")(probs)
    attended = MatMul(name=f"{name}_attend")([probs, v])
    attended = L.Permute((2, 1, 3), name=f"{name}_merge_heads")(attended)
    attended = L.Reshape((-1, heads * value_dim), name=f"{name}_merge")(attended)
    output_dense = layer.output_dense
    kernel = np.asarray(output_dense.kernel)
    out_layer = L.Dense(kernel.shape[-1], use_bias=output_dense.bias is not None, name=f"{name}_output")
    out = out_layer(attended)
    out_layer.kernel.assign(kernel.reshape(heads * value_dim, -1))
    if output_dense.bias is not None:
        out_layer.bias.assign(np.asarray(output_dense.bias).reshape(-1))
    return out


def decompose_attention(graph: FunctionalGraph, keep: set[str]) -> tuple[keras.Model | None, list[str]]:
    """The model with every MultiHeadAttention call that has a plain form (and is not named in
    ``keep``) written out, or None when there is none; and the names of the layers written out
    (their parts are named "<name>_query", "<name>_scores", ..., "<name>_output")."""
    rewrite = {
        id(node.keras_node): node.name
        for node in graph.nodes
        if isinstance(node.operation, L.MultiHeadAttention)
        and node.name not in keep
        and plain_form_obstacle(node.operation, node.keras_node.arguments.args, node.keras_node.arguments.kwargs) is None
    }
    if not rewrite:
        return None, []

    def on_node(node: GraphNode, args, kwargs):
        if id(node.keras_node) not in rewrite:
            return node.operation(*args, **kwargs)
        tensors = dict(zip(("query", "value", "key"), args))
        tensors.update({k: kwargs[k] for k in ("query", "value", "key") if kwargs.get(k) is not None})
        return plain_attention(node.operation, **tensors)

    return rebuild(graph, lambda fresh: fresh, on_node), sorted(rewrite.values())
