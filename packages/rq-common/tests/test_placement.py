"""place_quantizers: the placement rules on small hand-drawn graphs, each answer worked out by hand."""

import json

import pytest

from rq_common.errors import SpecError
from rq_common.pipeline.placement import OpNode, place_quantizers
from rq_common.spec import get_preset, preset_from_config, preset_to_config


def conv_relu_pool_graph():
    # x -> Conv -> t1 -> Relu -> t2 -> MaxPool -> t3 -> Reshape -> t4 -> Gemm -> y
    return [
        OpNode("conv", "Conv", ("x",), ("t1",)),
        OpNode("relu", "Relu", ("t1",), ("t2",)),
        OpNode("pool", "MaxPool", ("t2",), ("t3",)),
        OpNode("flat", "Reshape", ("t3",), ("t4",)),
        OpNode("fc", "Gemm", ("t4",), ("y",)),
    ]


def test_relu_fuses_and_pass_through_ops_share_the_scale():
    placement = place_quantizers(conv_relu_pool_graph(), ["x"], ["y"], fixed_point_rules=False)
    assert placement.quantized == ["x", "t2", "t3", "t4", "y"]  # t1 fused into the Conv
    assert placement.fused == ["t1"]
    assert placement.group_of("t3") == placement.group_of("t4") == "t2"
    assert placement.group_of("y") == "y" and placement.group_of("x") == "x"
    assert placement.float_ops == []


def test_relu_with_two_readers_does_not_fuse():
    nodes = [
        OpNode("conv", "Conv", ("x",), ("t1",)),
        OpNode("relu", "Relu", ("t1",), ("t2",)),
        OpNode("add", "Add", ("t1", "t2"), ("y",)),
    ]
    placement = place_quantizers(nodes, ["x"], ["y"], fixed_point_rules=False)
    assert placement.quantized == ["x", "t1", "t2", "y"] and placement.fused == []


def test_clip_that_does_not_start_at_zero_does_not_fuse():
    nodes = [OpNode("conv", "Conv", ("x",), ("t1",)), OpNode("clip", "Clip", ("t1",), ("y",), fusable=False)]
    assert place_quantizers(nodes, ["x"], ["y"], False).quantized == ["x", "t1", "y"]


def test_concat_shares_its_scale_only_on_fixed_point_targets():
    nodes = [
        OpNode("a", "Conv", ("x",), ("ta",)),
        OpNode("b", "Conv", ("x",), ("tb",)),
        OpNode("cat", "Concat", ("ta", "tb"), ("y",)),
    ]
    npu = place_quantizers(nodes, ["x"], ["y"], fixed_point_rules=True)
    assert npu.group_of("ta") == npu.group_of("tb") == npu.group_of("y") == "ta"
    cpu = place_quantizers(nodes, ["x"], ["y"], fixed_point_rules=False)
    assert len({cpu.group_of(t) for t in ("ta", "tb", "y")}) == 3


def test_unknown_and_excluded_ops_stay_float_and_pass_through_after_them_too():
    nodes = [
        OpNode("swish", None, ("x",), ("t1",)),
        OpNode("flat", "Reshape", ("t1",), ("t2",)),
        OpNode("fc", "Gemm", ("t2",), ("t3",)),
        OpNode("head", "Gemm", ("t3",), ("y",), float_reason="excluded (kept in float on request)"),
    ]
    placement = place_quantizers(nodes, ["x"], ["y"], fixed_point_rules=False)
    assert placement.quantized == ["t2", "t3"]  # the Gemm quantizes its input and output
    reasons = {f.node: f.reason for f in placement.float_ops}
    assert set(reasons) == {"swish", "flat", "head"}
    assert "no quantization rule" in reasons["swish"] and "pass through" in reasons["flat"]
    assert reasons["head"].startswith("excluded")


def test_preset_config_round_trips_through_json_with_overrides():
    preset = get_preset("cpu", activation_method="percentile", per_channel=False, activation_dtype="int8")
    again = preset_from_config(json.loads(json.dumps(preset_to_config(preset))))
    assert again == preset


def post_layernorm_block():
    # h -> MatMul(q) -> a -> Add(+bias) -> b -> Add(+h) -> r -> LayerNorm -> n -> MatMul -> m -> Erf -> e
    #   -> MatMul(p) -> y   (p: a MatMul with no bias, its output read by the graph only)
    return [
        OpNode("ln0", "LayerNormalization", ("x",), ("h",)),
        OpNode("dense", "MatMul", ("h",), ("a",)),
        OpNode("bias", "Add", ("a",), ("b",)),  # the bias is a constant: one run-time input
        OpNode("residual", "Add", ("b", "h"), ("r",)),
        OpNode("ln1", "LayerNormalization", ("r",), ("n",)),
        OpNode("up", "MatMul", ("n",), ("m",)),
        OpNode("erf", "Erf", ("m",), ("e",)),
        OpNode("down", "MatMul", ("e",), ("y",)),
    ]


def test_integer_kernels_keep_quantizers_only_where_an_int8_kernel_reads_or_writes():
    every_op = place_quantizers(post_layernorm_block(), ["x"], ["y"], fixed_point_rules=False)
    assert every_op.quantized == ["x", "h", "a", "b", "r", "n", "m", "e", "y"]
    placement = place_quantizers(post_layernorm_block(), ["x"], ["y"], fixed_point_rules=False, integer_kernels_only=True)
    # h, n, e: read by a MatMul; b, r: the Adds meet a float LayerNorm output / reader, so they run
    # in float; a, m, y: a MatMul's output read in float only (a's bias becomes the MatMul's)
    assert placement.quantized == ["h", "n", "e"]
    assert placement.quantized_ops == ["dense", "up", "down"]
    reasons = {f.node: f.reason for f in placement.float_ops}
    assert reasons.keys() == {"ln0", "bias", "residual", "ln1", "erf"}
    assert reasons["erf"] == reasons["ln1"] != reasons["residual"] == reasons["bias"]
    # the float residual Add reads LayerNorm's float output, not its dequantized copy (the MatMul's)
    assert placement.float_reads == [("residual", "h")]


def test_integer_kernels_leave_a_cnn_as_it_was():
    # Conv -> Relu (fused) -> MaxPool -> Reshape -> Gemm: every op has its int8 kernel
    every_op = place_quantizers(conv_relu_pool_graph(), ["x"], ["y"], fixed_point_rules=False)
    placement = place_quantizers(conv_relu_pool_graph(), ["x"], ["y"], fixed_point_rules=False, integer_kernels_only=True)
    assert placement.quantized == every_op.quantized and placement.float_ops == []
    # a Sigmoid ending the graph has no int8 reader: it runs in float on the Conv's int8 output
    nodes = [OpNode("conv", "Conv", ("x",), ("t",)), OpNode("sigmoid", "Sigmoid", ("t",), ("y",))]
    placement = place_quantizers(nodes, ["x"], ["y"], fixed_point_rules=False, integer_kernels_only=True)
    assert placement.quantized == ["x", "t"] and [f.node for f in placement.float_ops] == ["sigmoid"]


def test_only_the_cpu_target_places_quantizers_by_its_kernels():
    assert get_preset("cpu", qdq="integer_kernels").integer_kernels_only
    for name in ("cpu", "npu_cnn", "npu_transformer", "npu_a16w8"):
        assert not get_preset(name).integer_kernels_only
    with pytest.raises(SpecError, match="qdq"):
        get_preset("npu_transformer", qdq="integer_kernels")
