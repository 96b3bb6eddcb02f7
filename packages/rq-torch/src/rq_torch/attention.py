"""torch's attention modules as the modules they compute with, so that each part quantizes.

nn.MultiheadAttention, nn.TransformerEncoderLayer and nn.TransformerEncoder are leaves for
torch.fx (their forward runs fused functions and fast paths), so they would run in float as a
whole. Their plain forms compute the same with modules rq-torch has rules for, the form an NPU
compiler maps, and the one rq-tf2 writes for Keras's MultiHeadAttention:

    q = Linear(query) -> heads (1/sqrt(head_dim) folded into q's weights); k, v likewise
    probs = Softmax(MatMul(q, k^T)) [-> Dropout];  out = Linear(MatMul(probs, v) -> tokens)

and the encoder layer's residual, LayerNorm and feed-forward around it, over its own submodules.
quantize_model swaps each such module for its plain form before tracing (unless its type is in
``leaf_modules``). Folding 1/sqrt(head_dim) moves one float rounding; the weights are otherwise the
module's own. Masks (attn_mask, key_padding_mask, is_causal) are not part of the plain forms: such
a call stops tracing with an error that says to keep the module in float.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from rq_common.errors import SpecError
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
        _refuse_masks("MultiheadAttention", key_padding_mask, attn_mask, is_causal)
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


class PlainTransformerEncoderLayer(nn.Module):
    """nn.TransformerEncoderLayer's forward (its general path) over the same submodules, with the
    attention in its plain form."""

    def __init__(self, layer: nn.TransformerEncoderLayer):
        super().__init__()
        self.self_attn = PlainMultiheadAttention(layer.self_attn)
        self.linear1, self.dropout, self.linear2 = layer.linear1, layer.dropout, layer.linear2
        self.norm1, self.norm2, self.dropout1, self.dropout2 = layer.norm1, layer.norm2, layer.dropout1, layer.dropout2
        self.activation = layer.activation  # F.relu / F.gelu, or a module
        self.norm_first = layer.norm_first

    @staticmethod
    def supports(layer: nn.TransformerEncoderLayer) -> bool:
        return PlainMultiheadAttention.supports(layer.self_attn)

    def forward(self, src, src_mask=None, src_key_padding_mask=None, is_causal=False):
        _refuse_masks("TransformerEncoderLayer", src_key_padding_mask, src_mask, is_causal)
        x = src
        if self.norm_first:
            x = x + self._attention_block(self.norm1(x))
            return x + self._feed_forward_block(self.norm2(x))
        x = self.norm1(x + self._attention_block(x))
        return self.norm2(x + self._feed_forward_block(x))

    def _attention_block(self, x):
        return self.dropout1(self.self_attn(x, x, x, need_weights=False)[0])

    def _feed_forward_block(self, x):
        return self.dropout2(self.linear2(self.dropout(self.activation(self.linear1(x)))))


class PlainTransformerEncoder(nn.Module):
    """nn.TransformerEncoder: its layers in plain form, one after the other, then its norm."""

    def __init__(self, encoder: nn.TransformerEncoder):
        super().__init__()
        self.layers = nn.ModuleList(PlainTransformerEncoderLayer(layer) for layer in encoder.layers)
        self.norm = encoder.norm

    @staticmethod
    def supports(encoder: nn.TransformerEncoder) -> bool:
        return all(
            type(layer) is nn.TransformerEncoderLayer and PlainTransformerEncoderLayer.supports(layer) for layer in encoder.layers
        )

    def forward(self, src, mask=None, src_key_padding_mask=None, is_causal=None):
        _refuse_masks("TransformerEncoder", src_key_padding_mask, mask, is_causal)
        for layer in self.layers:
            src = layer(src)
        return self.norm(src) if self.norm is not None else src


def _refuse_masks(kind: str, key_padding_mask, attn_mask, is_causal) -> None:
    if key_padding_mask is not None or attn_mask is not None or is_causal:
        raise SpecError(
            "mask",
            f"rq-torch quantizes nn.{kind} without masks only (attention masks, key padding masks and is_causal "
            f"are not supported); keep it in float with quantize_model(..., leaf_modules=[nn.{kind}])",
        )


# torch module type -> its plain form (exact types: a subclass may change forward)
PLAIN_FORMS: dict[type[nn.Module], type[nn.Module]] = {
    nn.MultiheadAttention: PlainMultiheadAttention,
    nn.TransformerEncoderLayer: PlainTransformerEncoderLayer,
    nn.TransformerEncoder: PlainTransformerEncoder,
}


class _InputOnly(nn.Module):
    """An encoder that is the whole model, called with its input alone: fx makes every argument of
    the root's forward an input, and the optional masks must stay None."""

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder

    def forward(self, src):
        return self.encoder(src)


def _plain_form(module: nn.Module, leaf_modules: tuple[type[nn.Module], ...]) -> nn.Module | None:
    plain = PLAIN_FORMS.get(type(module))
    if plain is None or isinstance(module, leaf_modules) or not plain.supports(module):
        return None
    return plain(module).train(module.training)  # new modules start in training mode: dropout would be on


def to_plain_forms(model: nn.Module, leaf_modules: tuple[type[nn.Module], ...]) -> nn.Module:
    """``model`` with every submodule of a type in PLAIN_FORMS replaced (in place) by its plain
    form, but for the requested leaves and what is inside them; or the plain form of ``model``
    itself when it is of such a type."""
    if type(model) in (nn.TransformerEncoder, nn.TransformerEncoderLayer):
        whole = _plain_form(model, leaf_modules)
        if whole is not None:
            return _InputOnly(whole).train(model.training)

    def visit(module: nn.Module) -> None:
        for name, child in module.named_children():
            if isinstance(child, leaf_modules):
                continue
            plain = _plain_form(child, leaf_modules)
            if plain is not None:
                setattr(module, name, plain)
            else:
                visit(child)

    visit(model)
    return model
