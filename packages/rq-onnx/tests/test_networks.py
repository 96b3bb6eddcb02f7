"""The three reference networks through every preset: in the format, runnable, close to float.

SQNR bounds (dB) are the values measured on these seeds minus a margin of about 5 dB.
"""

import nets
import numpy as np
import onnx
import pytest

from rq_common.cpu_features import u8s8_kernels_may_saturate
from rq_common.format import GraphIndex, ViolationKind, validate
from rq_onnx import quantize_static

from conftest import ArrayReader, run, sqnr_db

NETWORKS = {
    "resnet": (nets.resnet_block_net, "input", (3, 16, 16)),
    "mobilenet_v2": (nets.mobilenet_v2_net, "input", (3, 32, 32)),
    "transformer": (nets.transformer_encoder_net, "tokens", (8, 32)),
}
# measured: resnet 32.5 / 40.0 / 41.1, mobilenet 29.8 / 30.0 / 36.0, transformer 28.5 / 31.3 / 31.8
SQNR_BOUND = {
    ("resnet", "npu_cnn"): 27,
    ("resnet", "npu_transformer"): 34,
    ("resnet", "cpu"): 35,
    ("mobilenet_v2", "npu_cnn"): 24,
    ("mobilenet_v2", "npu_transformer"): 24,
    ("mobilenet_v2", "cpu"): 30,
    ("transformer", "npu_cnn"): 23,
    ("transformer", "npu_transformer"): 25,
    ("transformer", "cpu"): 26,
}


@pytest.mark.parametrize("preset", ["npu_cnn", "npu_transformer", "cpu"])
@pytest.mark.parametrize("network", list(NETWORKS))
def test_network_quantizes_into_the_format(tmp_path, network, preset):
    build, input_name, shape = NETWORKS[network]
    model = build()
    rng = np.random.default_rng(0)
    calibration = rng.standard_normal((64, *shape)).astype(np.float32)
    batch = 1 if preset == "npu_cnn" or network == "mobilenet_v2" else 8
    out = tmp_path / "int8.onnx"
    result = quantize_static(model, out, ArrayReader(input_name, calibration, batch), preset=preset, quiet=True)

    assert result.violations == []
    assert validate(out, preset, float_nodes=[f.node for f in result.float_ops]) == []
    test = rng.standard_normal((16, *shape)).astype(np.float32)
    float_out = np.concatenate([run(model, {input_name: test[i : i + 1]})[0] for i in range(16)])
    exact_kernels = not u8s8_kernels_may_saturate()  # else as written: x86 without VNNI, rq_common.cpu_features
    int8_out = np.concatenate([run(str(out), {input_name: test[i : i + 1]}, not exact_kernels)[0] for i in range(16)])
    assert sqnr_db(float_out, int8_out) >= SQNR_BOUND[(network, preset)]
    if preset == "npu_cnn":
        dims = onnx.load(out).graph.input[0].type.tensor_type.shape.dim
        assert dims[0].dim_value == 1
    ops = [n.op_type for n in onnx.load(out).graph.node]
    assert "BatchNormalization" not in ops


def test_every_op_of_the_encoder_is_quantized_its_gelu_division_as_a_mul():
    model = nets.transformer_encoder_net()
    data = np.random.default_rng(0).standard_normal((8, 8, 32)).astype(np.float32)
    result = quantize_static(model, None, ArrayReader("tokens", data, 4), preset="cpu", quiet=True)
    assert result.float_ops == [] and result.violations == []  # GELU's x / sqrt(2) stayed float before
    assert "1 Div node(s) by a constant became Mul by its reciprocal" in result.notes
    assert "Div" not in {n.op_type for n in result.model.graph.node}


@pytest.mark.parametrize("preset", ["npu_cnn", "npu_transformer", "cpu"])
def test_a_written_out_gelu_quantizes_as_one_gelu_at_opset_20(preset):
    """The encoder's GELU at opset 20 is one Gelu with one output quantizer; at opset 17 (no Gelu op)
    it stays op by op. Both stay close to float, the fused one at least as close."""
    data = np.random.default_rng(0).standard_normal((8, 8, 32)).astype(np.float32)
    x = np.random.default_rng(1).standard_normal((4, 8, 32)).astype(np.float32)
    sqnr = {}
    for opset in (17, 20):
        model = nets.transformer_encoder_net(opset=opset)
        (float_out,) = run(model, {"tokens": x})
        result = quantize_static(model, None, ArrayReader("tokens", data, 4), preset=preset, quiet=True)
        assert result.float_ops == [] and result.violations == [] and validate(result.model, preset) == []
        ops = [n.op_type for n in result.model.graph.node]
        fused = "1 written-out GELU / SiLU chain(s) fused into one Gelu / Swish" in result.notes
        assert fused == (opset == 20) and ("Gelu" in ops) == (opset == 20) and ("Erf" in ops) == (opset == 17)
        if opset == 20:
            gelu = next(n for n in result.model.graph.node if n.op_type == "Gelu")
            index = GraphIndex(result.model)
            assert index.producers[gelu.input[0]].op_type == "DequantizeLinear"
            assert [c.op_type for c, _ in index.consumers_of(gelu.output[0])] == ["QuantizeLinear"]
        got = np.concatenate([run(result.model, {"tokens": x[i : i + 1]})[0] for i in range(len(x))])  # npu_cnn: batch 1
        sqnr[opset] = sqnr_db(float_out, got)
    assert sqnr[20] > 20 and sqnr[20] >= sqnr[17] - 0.5


@pytest.mark.parametrize("preset", ["npu_cnn", "npu_transformer", "cpu"])
def test_a_written_out_silu_quantizes_as_one_swish_at_opset_24(preset):
    """Conv -> x * sigmoid(x) -> Conv at opset 24: one Swish between a DequantizeLinear and a
    QuantizeLinear, close to float."""
    from onnx import TensorProto, helper

    g = nets.GraphBuilder(0)
    h = g.conv("input", 3, 8)
    g.conv(g.op("Mul", [h, g.op("Sigmoid", [h])]), 8, 4)
    g.nodes[-1].output[0] = "y"
    model = g.model(
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])],
        opset=24,
    )
    data = np.random.default_rng(0).standard_normal((8, 3, 8, 8)).astype(np.float32)
    result = quantize_static(model, None, ArrayReader("input", data, 1), preset=preset, quiet=True)
    assert result.float_ops == [] and result.violations == [] and validate(result.model, preset) == []
    assert "1 written-out GELU / SiLU chain(s) fused into one Gelu / Swish" in result.notes
    index = GraphIndex(result.model)
    (swish,) = [n for n in result.model.graph.node if n.op_type == "Swish"]
    assert "Sigmoid" not in {n.op_type for n in result.model.graph.node}
    assert index.producers[swish.input[0]].op_type == "DequantizeLinear"
    assert [c.op_type for c, _ in index.consumers_of(swish.output[0])] == ["QuantizeLinear"]
    x = data[:1]  # as written where ORT's u8s8 kernels can saturate (x86 without VNNI: rq_common.cpu_features)
    assert sqnr_db(run(model, {"input": x})[0], run(result.model, {"input": x}, u8s8_kernels_may_saturate())[0]) > 25


def test_npu_cnn_calibrates_in_batches_and_reports_per_sample():
    data = np.random.default_rng(0).standard_normal((16, 3, 16, 16)).astype(np.float32)
    result = quantize_static(nets.resnet_block_net(), None, ArrayReader("input", data, 8), preset="npu_cnn", quiet=True)
    assert result.violations == []
    assert any("batch dimension 'N' fixed to 1" in n for n in result.notes)
    assert result.report.tensors["logits"].count == 16 * 10  # every sample reported, one at a time


def test_npu_batch_fix_leaves_an_output_whose_first_dimension_is_not_the_batch():
    """A CTC recognizer's output is (time steps, batch, classes): only the batch becomes 1."""
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype(np.float32), "w")
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1], name="conv"),
            helper.make_node("Relu", ["y"], ["r"], name="relu"),
            helper.make_node("Transpose", ["r"], ["steps_first"], perm=[3, 0, 1, 2], name="to_steps"),
        ],
        "ctc_like",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, "W"])],
        [helper.make_tensor_value_info("steps_first", TensorProto.FLOAT, ["W", "N", 4, 8])],
        [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    data = np.random.default_rng(1).standard_normal((4, 3, 8, 16)).astype(np.float32)
    result = quantize_static(model, None, ArrayReader("x", data, 1), preset="npu_cnn", quiet=True)
    dims = result.model.graph.output[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in dims] == ["W", 1, 4, 8]
    assert run(result.model, {"x": data[:1]})[0].shape == (16, 1, 4, 8)


@pytest.mark.parametrize("form", ["where_inf", "finfo_min"])
@pytest.mark.parametrize("preset", ["npu_cnn", "npu_transformer", "cpu"])
def test_masked_attention_quantizes_as_well_as_the_unmasked_block(form, preset):
    """Hugging Face's additive mask (-inf or float's lowest value where a token is padding): the mask
    path and its Softmax stay float, everything else is quantized, and the SQNR is the unmasked
    block's within 1 dB."""
    from rq_onnx import ArrayReader as Reader
    from rq_onnx.masks import MASK_REASON

    rng = np.random.default_rng(0)
    tokens = rng.standard_normal((24, 8, 32)).astype(np.float32)
    attention_mask = np.ones((24, 8), np.int64)
    attention_mask[::2, 5:] = 0  # every other sequence is 5 tokens long, padded to 8
    plain, masked = nets.transformer_encoder_net(), nets.transformer_encoder_net(mask=form)

    def sqnr(model, feeds):
        result = quantize_static(model, None, Reader(feeds, 4), preset=preset, quiet=True)
        assert result.violations == []
        one = {k: v[:1] for k, v in feeds.items()}
        reference = np.concatenate([run(model, {k: v[i : i + 1] for k, v in feeds.items()})[0] for i in range(16, 24)])
        quantized = np.concatenate([run(result.model, {k: v[i : i + 1] for k, v in feeds.items()})[0] for i in range(16, 24)])
        assert np.isfinite(run(result.model, one)[0]).all()
        return sqnr_db(reference, quantized), result

    unmasked_db, _ = sqnr(plain, {"tokens": tokens})
    masked_db, result = sqnr(masked, {"tokens": tokens, "attention_mask": attention_mask})
    kept = {(f.op, f.reason) for f in result.float_ops if f.reason == MASK_REASON}
    assert {op for op, _ in kept} >= {"Add", "Softmax"} and not [f for f in result.float_ops if f.op == "MatMul"]
    assert masked_db >= unmasked_db - 1.0, (masked_db, unmasked_db)


def test_rq_onnx_check_knows_the_ops_the_quantizer_kept_in_float(tmp_path, capsys):
    """The masked encoder keeps its mask path in float: the written file records those nodes, so a
    standalone `rq-onnx check` passes where it would otherwise report the float Add as missing-qdq."""
    from rq_common.format.graph import recorded_float_nodes
    from rq_onnx import ArrayReader as Reader
    from rq_onnx.cli import main

    rng = np.random.default_rng(0)
    feeds = {"tokens": rng.standard_normal((8, 8, 32)).astype(np.float32), "attention_mask": np.ones((8, 8), np.int64)}
    result = quantize_static(
        nets.transformer_encoder_net(mask="where_inf"), tmp_path / "q.onnx", Reader(feeds, 4), preset="cpu", quiet=True
    )
    written = onnx.load(str(tmp_path / "q.onnx"))
    assert recorded_float_nodes(written) == [f.node for f in result.float_ops]
    assert main(["check", str(tmp_path / "q.onnx"), "--preset", "cpu"]) == 0
    del written.metadata_props[:]  # without the record the float Add reads a float mask: a violation
    assert ViolationKind.MISSING_QDQ in {v.kind for v in validate(written, "cpu")}
