"""Every op of rq_common.optable, in one graph: each is quantized by its rule, the result is in the
format, runs in ONNX Runtime and stays close to float."""

import numpy as np
import pytest
from nets import GraphBuilder
from onnx import TensorProto, helper

from rq_common.cpu_features import u8s8_kernels_may_saturate
from rq_common.optable import OP_TABLE
from rq_onnx import quantize_static

from conftest import ArrayReader, run, sqnr_db


def op_zoo():
    g = GraphBuilder(3)
    i64 = lambda v: g.const(np.array(v, np.int64), "i")  # noqa: E731
    a = g.conv("x", 4, 8)
    b = g.op(
        "ConvTranspose",
        [a, g.const(g.rng.standard_normal((8, 4, 2, 2)) * 0.3, "wt"), g.const(np.zeros(4), "bt")],
        strides=[2, 2],
        kernel_shape=[2, 2],
    )
    c = g.op("Resize", [b, "", g.const(np.array([1, 1, 0.5, 0.5], np.float32), "scales")], mode="nearest")
    d = g.op("Pad", [c, i64([0, 0, 1, 1, 0, 0, 1, 1])])
    e = g.op("Slice", [d, i64([1, 1]), i64([9, 9]), i64([2, 3])])
    g.nodes.append(helper.make_node("Split", [e, i64([2, 2])], ["s1", "s2"], name="split", axis=1))
    branches = [
        g.op("Sigmoid", ["s1"]),
        g.op("Tanh", ["s2"]),
        g.op("HardSigmoid", ["s1"]),
        g.op("HardSwish", ["s2"]),
        g.op("LeakyRelu", ["s1"], alpha=0.125),
        g.op("PRelu", ["s2", g.const(np.array([0.25, 0.5], np.float32).reshape(2, 1, 1), "slope")]),
        g.op("MaxPool", [g.op("Relu", ["s1"])], kernel_shape=[1, 1]),
        g.op("AveragePool", ["s2"], kernel_shape=[1, 1]),
    ]
    cat = g.op("Concat", branches, axis=1)
    mean = g.op("Add", [g.op("ReduceMean", [cat], axes=[2, 3], keepdims=1), g.op("GlobalAveragePool", [cat])])
    flat = g.op("Unsqueeze", [g.op("Squeeze", [mean, i64([2, 3])]), i64([1])])
    picked = g.op("Gather", [flat, i64([0])], axis=1)
    norm = g.op("LayerNormalization", [g.op("Flatten", [picked]), g.const(np.ones(16), "g"), g.const(np.zeros(16), "b")])
    mixed = g.op("MatMul", [norm, g.const(g.rng.standard_normal((16, 16)) * 0.25, "wm")])
    dense = g.op("Gemm", [mixed, g.const(g.rng.standard_normal((16, 16)) * 0.25, "wg"), g.const(np.zeros(16), "bg")], transB=1)
    probs = g.op("Softmax", [g.op("Transpose", [g.op("Reshape", [dense, i64([1, 16])])], perm=[0, 1])], axis=-1)
    gelu_in = g.op("Erf", [g.op("Mul", [probs, g.const(np.float32(4.0), "k")])])
    g.nodes.append(
        helper.make_node(
            "Add",
            [gelu_in, g.op("Clip", [probs, g.const(np.float32(0), "lo"), g.const(np.float32(0.5), "hi")])],
            ["y"],
            name="out",
        )
    )
    return g.model(
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16])],
    )


def test_the_zoo_covers_every_registered_op():
    # the zoo is opset 17: Gelu (20) and Swish (24) are covered where written-out chains fuse to them (test_networks)
    assert {n.op_type for n in op_zoo().graph.node} >= set(OP_TABLE) - {"Gelu", "Swish", "Identity"}


@pytest.mark.parametrize("preset", ["npu_cnn", "npu_transformer", "cpu"])
def test_every_op_is_quantized_by_its_rule(preset):
    model = op_zoo()
    rng = np.random.default_rng(0)
    result = quantize_static(
        model, None, ArrayReader("x", rng.standard_normal((32, 4, 8, 8)).astype(np.float32)), preset=preset, quiet=True
    )
    assert result.float_ops == []
    assert result.violations == []
    test = rng.standard_normal((16, 1, 4, 8, 8)).astype(np.float32)
    reference = np.concatenate([run(model, {"x": t})[0] for t in test])
    # as written where ORT's u8s8 kernels can saturate (x86 without VNNI: rq_common.cpu_features)
    quantized = np.concatenate([run(result.model, {"x": t}, u8s8_kernels_may_saturate())[0] for t in test])
    assert sqnr_db(reference, quantized) > 25  # measured 30.4 (cpu) to 31.7 dB (npu_cnn)


@pytest.mark.parametrize("preset", ["npu_cnn", "npu_transformer", "cpu"])
def test_a_reshape_to_a_computed_shape_passes_through(preset):
    """Exporters with a dynamic batch compute a flatten's shape (Shape -> Gather -> Unsqueeze ->
    Concat): the Reshape's data still passes through in int8, with its input's scale."""
    from onnx import numpy_helper

    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
        helper.make_node("Shape", ["c"], ["s"], name="shape"),
        helper.make_node("Gather", ["s", "zero"], ["n"], name="batch", axis=0),
        helper.make_node("Unsqueeze", ["n", "axes"], ["n1"], name="batch_1d"),
        helper.make_node("Concat", ["n1", "minus1"], ["shape_2d"], name="shape_2d", axis=0),
        helper.make_node("Reshape", ["c", "shape_2d"], ["r"], name="flatten"),
        helper.make_node("MatMul", ["r", "m"], ["y"], name="head"),
    ]
    constants = {
        "w": rng.standard_normal((3, 2, 1, 1)).astype(np.float32),
        "zero": np.array(0, np.int64),
        "axes": np.array([0], np.int64),
        "minus1": np.array([-1], np.int64),
        "m": rng.standard_normal((48, 5)).astype(np.float32),
    }
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(v, k) for k, v in constants.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    data = rng.standard_normal((8, 2, 4, 4)).astype(np.float32)
    result = quantize_static(model, None, ArrayReader("x", data), preset=preset, quiet=True)
    assert result.violations == [] and {"flatten", "head"} <= set(result.quantized_ops)
    assert result.float_ops == []  # the shape arithmetic computes integers: no float op
    producers = {o: n for n in result.model.graph.node for o in n.output}
    flatten = next(n for n in result.model.graph.node if n.name == "flatten")
    assert producers[flatten.input[0]].op_type == "DequantizeLinear"
    batch = 1 if preset == "npu_cnn" else 3  # the NPU's model has batch 1; else another size than calibration's
    x = rng.standard_normal((batch, 2, 4, 4)).astype(np.float32)
    (expected,) = run(model, {"x": x})
    (actual,) = run(result.model, {"x": x}, as_written=True)
    assert sqnr_db(expected, actual) > 25
