"""torch.nn.MultiheadAttention as the modules it computes with, so that each part quantizes.

nn.MultiheadAttention is a leaf for torch.fx (its forward is one fused function), so it would run
in float as a whole. Its plain form is the same computation with modules rq-torch has rules for,
the form an NPU compiler maps, and the one rq-tf2 writes for Keras's MultiHeadAttention:

    q = Linear(query) -> heads (1/sqrt(head_dim) folded into q's weights); k, v likewise
    probs = Softmax(MatMul(q, k^T)) [-> Dropout];  out = Linear(MatMul(probs, v) -> tokens)

quantize_model swaps each nn.MultiheadAttention for it before tracing (unless the type is in
``leaf_modules``). Folding 1/sqrt(head_dim) moves one float rounding; the weights are otherwise the
layer's own. Masks (attn_mask, key_padding_mask, is_causal) are not part of the plain form: such a
call stops tracing with an error that says to keep the layer in float.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from rq_torch.modules import MatMul


def _linear(weight: torch.Tensor, bias: torch.Tensor | None, scale: float = 1.0) -> nn.Linear:
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    with torch.no_grad():
        layer.weight.copy_(weight * scale)
        if bias is not None:
            layer.bias.copy_(bias * scale)
    return layer


class PlainMultiheadAttention(nn.Module):
    """nn.MultiheadAttention's forward, written with Linear, MatMul, Softmax and Dropout."""

    def __init__(self, attention: nn.MultiheadAttention):
        super().__init__()
        self.heads, self.head_dim, self.batch_first = attention.num_heads, attention.head_dim, attention.batch_first
        if attention._qkv_same_embed_dim:
            weights = attention.in_proj_weight.detach().chunk(3)
        else:
            weights = (attention.q_proj_weight.detach(), attention.k_proj_weight.detach(), attention.v_proj_weight.detach())
        biases = attention.in_proj_bias.detach().chunk(3) if attention.in_proj_bias is not None else (None,) * 3
        self.q_proj = _linear(weights[0], biases[0], scale=1.0 / math.sqrt(self.head_dim))
        self.k_proj = _linear(weights[1], biases[1])
        self.v_proj = _linear(weights[2], biases[2])
        self.scores, self.attend = MatMul(), MatMul()
        self.softmax = nn.Softmax(dim=-1)
        self.dropout = nn.Dropout(attention.dropout)
        out = attention.out_proj
        self.out_proj = _linear(out.weight.detach(), out.bias.detach() if out.bias is not None else None)

    @staticmethod
    def supports(attention: nn.MultiheadAttention) -> bool:
        """Extra key/value biases and a zero attention row have no plain form here."""
        return attention.bias_k is None and attention.bias_v is None and not attention.add_zero_attn

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, _ = x.shape
        return x.reshape(batch, tokens, self.heads, self.head_dim).permute(0, 2, 1, 3)

    def forward(
        self,
        query,
        key,
        value,
        key_padding_mask=None,
        need_weights=True,
        attn_mask=None,
        average_attn_weights=True,
        is_causal=False,
    ):
        if key_padding_mask is not None or attn_mask is not None or is_causal:
            raise ValueError(
                "rq-torch quantizes nn.MultiheadAttention without masks only (attn_mask, key_padding_mask and "
                "is_causal are not supported); keep it in float with quantize_model(..., leaf_modules=[nn.MultiheadAttention])"
            )
        if not self.batch_first:  # (tokens, batch, features) -> (batch, tokens, features)
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        q, k, v = (
            self._split_heads(self.q_proj(query)),
            self._split_heads(self.k_proj(key)),
            self._split_heads(self.v_proj(value)),
        )
        probs = self.dropout(self.softmax(self.scores(q, k.transpose(-1, -2))))
        attended = self.attend(probs, v).permute(0, 2, 1, 3)
        batch, tokens = attended.shape[0], attended.shape[1]
        out = self.out_proj(attended.reshape(batch, tokens, self.heads * self.head_dim))
        if not self.batch_first:
            out = out.transpose(0, 1)
        if not need_weights:
            return out, None
        return out, probs.mean(dim=1) if average_attn_weights else probs


def swap_attention(model: nn.Module, leaf_modules: tuple[type[nn.Module], ...]) -> list[str]:
    """Replace every nn.MultiheadAttention in ``model`` (in place) by its plain form, unless its
    type is a requested leaf; returns the module paths replaced."""
    if any(issubclass(nn.MultiheadAttention, leaf) for leaf in leaf_modules):
        return []
    swapped = []
    for path, module in list(model.named_modules()):
        if path and isinstance(module, nn.MultiheadAttention) and PlainMultiheadAttention.supports(module):
            parent_path, _, name = path.rpartition(".")
            setattr(model.get_submodule(parent_path) if parent_path else model, name, PlainMultiheadAttention(module))
            swapped.append(path)
    return swapped
