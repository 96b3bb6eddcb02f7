"""nn.MultiheadAttention in its plain form (rq_torch.attention): the same function as torch's
layer, every part quantized; a masked call stops with an error that says how to keep it in float."""

import warnings

import nets
import numpy as np
import pytest
import torch
from torch import nn

import rq_torch
from rq_torch.attention import PlainMultiheadAttention, to_plain_forms
from rq_torch.errors import TraceError

from conftest import run_ort


def randomized(attention: nn.MultiheadAttention) -> nn.MultiheadAttention:
    with torch.no_grad():
        for parameter in attention.parameters():  # biases too, not the zeros they start as
            parameter.copy_(torch.randn_like(parameter) * 0.3)
    return attention.eval()


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("average", [True, False])
def test_the_plain_form_computes_what_torchs_layer_computes(batch_first, average):
    attention = randomized(nn.MultiheadAttention(16, 4, batch_first=batch_first, kdim=12, vdim=10))
    plain = PlainMultiheadAttention(attention).eval()
    shape = lambda b, t, d: (b, t, d) if batch_first else (t, b, d)
    q, k, v = torch.randn(shape(3, 6, 16)), torch.randn(shape(3, 9, 12)), torch.randn(shape(3, 9, 10))
    with torch.no_grad():
        expected, expected_weights = attention(q, k, v, average_attn_weights=average)
        got, weights = plain(q, k, v, average_attn_weights=average)
        unweighted, none = plain(q, k, v, need_weights=False)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(weights, expected_weights, rtol=1e-5, atol=1e-5)
    assert none is None and torch.equal(unweighted, got)


def test_every_part_of_torchs_attention_is_quantized(tmp_path):
    model = nets.TorchAttentionEncoder().eval()
    example = torch.randn(1, 8, 32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing stays in float
        qmodel = rq_torch.quantize_model(model, example, preset="npu_transformer")
    assert isinstance(qmodel.get_submodule("attention.q_proj"), rq_torch.QuantLinear)
    assert isinstance(qmodel.get_submodule("attention.out_proj"), rq_torch.QuantLinear)
    rq_torch.calibrate(qmodel, [torch.randn(4, 8, 32) for _ in range(8)], quiet=True)
    result = rq_torch.export_onnx(qmodel, example, tmp_path / "attention.onnx")
    assert result.violations == []
    ops = [n.op_type for n in result.model.graph.node]
    assert ops.count("MatMul") >= 2 and "Softmax" in ops and "ReduceMean" not in ops  # the unused weights are gone


def test_a_masked_attention_call_says_how_to_keep_it_in_float():
    class Masked(nn.Module):
        def __init__(self):
            super().__init__()
            self.attention = nn.MultiheadAttention(16, 2, batch_first=True)

        def forward(self, x):
            return self.attention(x, x, x, attn_mask=torch.zeros(8, 8))[0]

    example = torch.randn(1, 8, 16)
    with pytest.raises(TraceError, match=r"leaf_modules=\[nn.MultiheadAttention\]"):
        rq_torch.quantize_model(Masked(), example, preset="cpu")
    with pytest.warns(UserWarning, match="1 op stays in float.*'attention' \\(node attention\\)"):
        qmodel = rq_torch.quantize_model(Masked(), example, preset="cpu", leaf_modules=[nn.MultiheadAttention])
    assert isinstance(qmodel.get_submodule("attention"), nn.MultiheadAttention)


@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("batch_first,activation", [(True, "gelu"), (False, "relu")])
def test_the_plain_encoder_computes_what_torchs_encoder_computes(norm_first, batch_first, activation):
    layer = nn.TransformerEncoderLayer(
        16, 4, 32, dropout=0.1, activation=activation, batch_first=batch_first, norm_first=norm_first
    )
    encoder = nn.TransformerEncoder(layer, 2, norm=nn.LayerNorm(16), enable_nested_tensor=False).eval()
    for module in encoder.modules():
        if isinstance(module, nn.MultiheadAttention):
            randomized(module)
    holder = nn.Sequential(encoder).eval()
    plain = to_plain_forms(holder, ())
    assert plain is holder and type(holder[0]).__name__ == "PlainTransformerEncoder" and not holder[0].training
    x = torch.randn((3, 7, 16) if batch_first else (7, 3, 16))
    with torch.no_grad():
        torch.testing.assert_close(holder(x), encoder(x), rtol=1e-5, atol=1e-5)


def test_torchs_encoder_quantizes_and_exports(tmp_path):
    layer = nn.TransformerEncoderLayer(32, 4, 64, activation="gelu", batch_first=True, norm_first=True)
    model = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False).eval()
    example = torch.randn(1, 8, 32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        qmodel = rq_torch.quantize_model(model, example, preset="npu_transformer")
    rq_torch.calibrate(qmodel, [torch.randn(4, 8, 32) for _ in range(8)], quiet=True)
    result = rq_torch.export_onnx(qmodel, example, tmp_path / "encoder.onnx")
    assert result.violations == []
    for _ in range(4):
        x = torch.randn(1, 8, 32)  # the export has the example's batch size
        with torch.no_grad():
            expected = qmodel(x).numpy()
        feeds = {"src": x.numpy()}  # the input is named after the encoder's forward argument
        np.testing.assert_array_equal(run_ort(tmp_path / "encoder.onnx", feeds, as_written=True), expected)
