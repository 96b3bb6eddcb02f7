"""keras.layers.MultiHeadAttention in its plain form (rq_tf2.attention): the same function as the
layer, every part quantized; calls the plain form cannot express stay in float with a warning."""

import warnings

import keras
import nets
import numpy as np
import pytest

import rq_tf2
from rq_common.spec import get_preset
from rq_tf2.attention import decompose_attention, parts_of
from rq_tf2.graph import functional_graph

L = keras.layers


def test_the_plain_form_computes_what_the_layer_computes():
    keras.utils.set_random_seed(0)
    query_in, value_in = keras.Input((6, 16), name="q"), keras.Input((9, 12), name="v")
    attention = L.MultiHeadAttention(2, 8, value_dim=4, output_shape=10, name="cross")
    model = keras.Model([query_in, value_in], attention(query_in, value_in))
    for variable in attention.weights:  # biases too, not the zeros they start as
        variable.assign(np.random.default_rng(1).standard_normal(variable.shape).astype(np.float32) * 0.3)
    plain, written_out = decompose_attention(functional_graph(model), keep=set())
    assert written_out == ["cross"]
    assert not any(isinstance(layer, L.MultiHeadAttention) for layer in plain.layers)
    rng = np.random.default_rng(0)
    q, v = rng.standard_normal((3, 6, 16)).astype(np.float32), rng.standard_normal((3, 9, 12)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(plain([q, v])), np.asarray(model([q, v])), rtol=1e-5, atol=1e-5)


def test_every_part_of_the_attention_is_quantized(tmp_path):
    model = nets.attention_encoder()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing stays in float
        qmodel = rq_tf2.quantize_model(model, preset="npu_transformer")
    names = {layer.name for layer in qmodel.layers}
    assert {"attention_query", "attention_scores", "attention_attend", "attention_output"} <= names
    assert isinstance(qmodel.get_layer("attention_output"), rq_tf2.QuantDense)
    x = np.random.default_rng(0).standard_normal((32, 8, 32)).astype(np.float32)
    rq_tf2.calibrate(qmodel, x, batch_size=8, quiet=True)
    result = rq_tf2.export_onnx(qmodel, tmp_path / "attention.onnx")
    assert result.violations == []
    ops = [n.op_type for n in result.model.graph.node]
    assert ops.count("MatMul") >= 2 and "Softmax" in ops and "Einsum" not in ops


def test_exclude_and_layer_configs_name_the_attention_layer():
    model = nets.attention_encoder()
    kept = rq_tf2.quantize_model(model, preset="cpu", exclude_nodes=["attention"])
    assert isinstance(kept.get_layer("attention"), L.MultiHeadAttention)
    configured = rq_tf2.quantize_model(
        model, preset="cpu", layer_configs={"attention": rq_tf2.LayerConfig(preset=get_preset("cpu", per_channel=False))}
    )
    assert configured.get_layer("attention_query").preset.weight.per_channel is False
    assert configured.get_layer("ff1").preset.weight.per_channel is True


def test_a_masked_call_stays_in_float_with_a_warning_that_says_why():
    inputs = keras.Input((8, 16), name="x")
    mask = keras.Input((8, 8), name="mask")
    out = L.MultiHeadAttention(2, 8, name="masked")(inputs, inputs, attention_mask=mask)
    model = keras.Model([inputs, mask], out)
    with pytest.warns(UserWarning, match="'masked' stays in float: MultiHeadAttention called with a mask"):
        qmodel = rq_tf2.quantize_model(model, preset="cpu")
    assert isinstance(qmodel.get_layer("masked"), L.MultiHeadAttention)


def test_every_part_is_named_after_the_layer():
    model = nets.attention_encoder()
    plain, _ = decompose_attention(functional_graph(model), keep=set())
    written = {layer.name for layer in plain.layers} - {layer.name for layer in model.layers}
    assert written == parts_of("attention") - {"attention_dropout"}  # the layer has dropout 0
