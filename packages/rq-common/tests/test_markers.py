"""Name helpers for exports that went through tf2onnx-like exporters (rq_common.format.markers)."""

import re

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from rq_common.format.markers import name_constants_by_first_reader, shorten_names

from conftest import make_model, run_ort


def scoped_model():
    """Names as tf2onnx leaves them: the model's scope, a marker segment, TF's op names."""
    nodes = [
        helper.make_node("Relu", ["x"], ["net_1/block_1/rqexport0x/Relu:0"], name="net_1/block_1/rqexport0x/Relu"),
        helper.make_node(
            "Mul", ["net_1/block_1/rqexport0x/Relu:0", "net_1/block_1/mul/y:0"], ["net_1/block_1/mul:0"], name="net_1/block_1/mul"
        ),
        helper.make_node("Relu", ["net_1/block_1/mul:0"], ["Transpose__7:0"], name="Transpose__7"),  # no scope at all
        helper.make_node("Neg", ["Transpose__7:0"], ["y"], name="net_1/head_1/rqexport1x/Neg"),
    ]
    return make_model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])],
        [numpy_helper.from_array(np.full((2, 3), 0.5, np.float32), "net_1/block_1/mul/y:0")],
    )


def test_names_become_layer_and_op_type_and_the_outputs_stay(rng):
    model = scoped_model()
    short = onnx.ModelProto()
    short.CopyFrom(model)
    not_a_layer = re.compile(r"^(net(_\d+)?|rqexport\d+x)$")
    renamed = shorten_names(short, drop=not_a_layer.match)
    name_constants_by_first_reader(short)
    onnx.checker.check_model(short, full_check=True)
    assert [n.name for n in short.graph.node] == ["block_1/Relu", "block_1/Mul", "Relu", "head_1/Neg"]
    assert renamed["net_1/block_1/mul"] == "block_1/Mul"
    assert short.graph.node[0].input[0] == "x" and short.graph.node[-1].output[0] == "y"  # graph inputs / outputs kept
    assert short.graph.node[1].input[0] == "block_1/Relu"  # a tensor is named after its producer
    assert [t.name for t in short.graph.initializer] == ["block_1/Mul:in1"]
    assert short.ByteSize() < model.ByteSize()
    x = rng.standard_normal((2, 3)).astype(np.float32)
    np.testing.assert_array_equal(run_ort(short, {"x": x})[0], run_ort(model, {"x": x})[0])


def test_repeated_names_are_numbered():
    nodes = [
        helper.make_node("Relu", ["x"], ["a"], name="m/conv/Relu"),
        helper.make_node("Relu", ["a"], ["b"], name="m/conv/Relu_1"),
        helper.make_node("Relu", ["b"], ["y"], name="m/conv/relu_again"),
    ]
    model = make_model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    shorten_names(model, drop=lambda part: part == "m")
    assert [n.name for n in model.graph.node] == ["conv/Relu", "conv/Relu_2", "conv/Relu_3"]
    assert [n.output[0] for n in model.graph.node] == ["conv/Relu", "conv/Relu_2", "y"]
