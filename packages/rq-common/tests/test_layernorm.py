"""fuse_layer_norms: a LayerNormalization written out as elementwise ops -> one LayerNormalization,
checked against a numpy layer norm and against ONNX Runtime on the graph before the fusion."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from rq_common.format import fuse_layer_norms

from conftest import make_model, run_ort

C = 8
EPS = 1e-3


def numpy_layer_norm(x, gamma, beta, eps=EPS):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * gamma + beta


def mean_node(src, out, opset, axes=(-1,)):
    if opset >= 18:  # axes became an input
        return helper.make_node("ReduceMean", [src, "axes"], [out], keepdims=1)
    return helper.make_node("ReduceMean", [src], [out], axes=list(axes), keepdims=1)


def textbook(gamma, beta, opset=17, axes=(-1,)):
    """(x - mean) / sqrt(var + eps) * gamma + beta, as older exporters write it."""
    nodes = [
        mean_node("x", "mean", opset, axes),
        helper.make_node("Sub", ["x", "mean"], ["d"]),
        helper.make_node("Pow", ["d", "two"], ["d2"]),
        mean_node("d2", "var", opset, axes),
        helper.make_node("Add", ["var", "eps"], ["ve"]),
        helper.make_node("Sqrt", ["ve"], ["std"]),
        helper.make_node("Div", ["d", "std"], ["n"]),
        helper.make_node("Mul", ["n", "gamma"], ["g"]),
        helper.make_node("Add", ["g", "beta"], ["y"]),
    ]
    inits = [
        numpy_helper.from_array(np.float32(2), "two"),
        numpy_helper.from_array(np.float32(EPS), "eps"),
        numpy_helper.from_array(gamma, "gamma"),
        numpy_helper.from_array(beta, "beta"),
        numpy_helper.from_array(np.array(axes, np.int64), "axes"),
    ]
    return make_model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 5, C])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 5, C])],
        inits[:4] + inits[4:] * (opset >= 18),
        opset=opset,
    )


def scale_shift(gamma, beta):
    """tf2onnx's form of a Keras LayerNormalization: x * (rsqrt(var + eps) * gamma) + (beta - mean * that)."""
    nodes = [
        helper.make_node("GlobalAveragePool", ["x"], ["mean"]),
        helper.make_node("Sub", ["x", "mean"], ["d"]),
        helper.make_node("Mul", ["d", "d"], ["d2"]),
        helper.make_node("GlobalAveragePool", ["d2"], ["var"]),
        helper.make_node("Add", ["var", "eps"], ["ve"]),
        helper.make_node("Sqrt", ["ve"], ["std"]),
        helper.make_node("Reciprocal", ["std"], ["rstd"]),
        helper.make_node("Mul", ["rstd", "gamma"], ["scale"]),
        helper.make_node("Mul", ["x", "scale"], ["xs"]),
        helper.make_node("Neg", ["mean"], ["neg"]),
        helper.make_node("Mul", ["neg", "scale"], ["shift"]),
        helper.make_node("Add", ["shift", "beta"], ["shift_b"]),
        helper.make_node("Add", ["xs", "shift_b"], ["y"]),
    ]
    return make_model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 5, C])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 5, C])],
        [
            numpy_helper.from_array(np.float32(EPS), "eps"),
            numpy_helper.from_array(gamma.reshape(1, 1, C), "gamma"),
            numpy_helper.from_array(beta.reshape(1, 1, C), "beta"),
        ],
    )


def fused_copy(model):
    fused = onnx.ModelProto()
    fused.CopyFrom(model)
    return fused, fuse_layer_norms(fused)


@pytest.mark.parametrize("form", ["textbook", "textbook_opset18", "scale_shift"])
def test_a_written_out_layer_norm_becomes_one_op_with_the_same_outputs(rng, form):
    gamma = rng.uniform(0.5, 1.5, C).astype(np.float32)
    beta = rng.standard_normal(C).astype(np.float32)
    model = {
        "textbook": lambda: textbook(gamma, beta),
        "textbook_opset18": lambda: textbook(gamma, beta, opset=18),
        "scale_shift": lambda: scale_shift(gamma, beta),
    }[form]()
    fused, log = fused_copy(model)
    onnx.checker.check_model(fused, full_check=True)
    assert len(log) == 1
    (node,) = fused.graph.node
    assert node.op_type == "LayerNormalization" and list(node.input)[0] == "x" and list(node.output) == ["y"]
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    assert attrs["axis"] == -1 and attrs["epsilon"] == pytest.approx(EPS)
    inits = {t.name: numpy_helper.to_array(t) for t in fused.graph.initializer}
    np.testing.assert_array_equal(inits[node.input[1]], gamma)
    np.testing.assert_array_equal(inits[node.input[2]], beta)
    assert set(inits) == set(node.input[1:])  # epsilon, the old gamma and beta (and axes) are gone
    x = (rng.standard_normal((3, 5, C)) * 4 + 1).astype(np.float32)
    expected = numpy_layer_norm(x.astype(np.float64), gamma, beta)
    np.testing.assert_allclose(run_ort(fused, {"x": x})[0], expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(run_ort(fused, {"x": x})[0], run_ort(model, {"x": x})[0], rtol=1e-5, atol=1e-5)


def test_without_gamma_and_beta_the_op_gets_ones_and_zeros(rng):
    model = scale_shift(np.ones(C, np.float32), np.zeros(C, np.float32))
    # drop the gamma Mul and the beta Add: the form tf2onnx writes for scale=False, center=False
    graph = model.graph
    by_output = {n.output[0]: n for n in graph.node}
    graph.node.remove(by_output["scale"])
    graph.node.remove(by_output["shift_b"])
    for node in graph.node:
        node.input[:] = ["rstd" if i == "scale" else "shift" if i == "shift_b" else i for i in node.input]
    fused, log = fused_copy(model)
    assert len(log) == 1 and [n.op_type for n in fused.graph.node] == ["LayerNormalization"]
    inits = {t.name: numpy_helper.to_array(t) for t in fused.graph.initializer}
    np.testing.assert_array_equal(inits[fused.graph.node[0].input[1]], np.ones(C, np.float32))
    np.testing.assert_array_equal(inits[fused.graph.node[0].input[2]], np.zeros(C, np.float32))
    x = rng.standard_normal((2, 5, C)).astype(np.float32)
    np.testing.assert_allclose(run_ort(fused, {"x": x})[0], run_ort(model, {"x": x})[0], rtol=1e-5, atol=1e-5)


def test_what_is_not_a_last_axis_layer_norm_stays_as_it_is(rng):
    gamma, beta = np.ones(C, np.float32), np.zeros(C, np.float32)
    over_tokens = textbook(gamma, beta, axes=(1,))  # normalizes over axis 1, not the channels
    assert fused_copy(over_tokens)[1] == []

    variance_read_outside = textbook(gamma, beta)  # the variance is also a graph output: it must stay
    variance_read_outside.graph.output.append(helper.make_tensor_value_info("var", TensorProto.FLOAT, None))
    fused, log = fused_copy(variance_read_outside)
    assert log == [] and fused == variance_read_outside

    gamma_per_token = textbook(gamma, beta)  # a Mul by a constant that varies over tokens is not gamma
    for t in gamma_per_token.graph.initializer:
        if t.name == "gamma":
            t.CopyFrom(numpy_helper.from_array(np.ones((5, 1), np.float32), "gamma"))
    fused, log = fused_copy(gamma_per_token)
    assert len(log) == 1
    assert [n.op_type for n in fused.graph.node] == ["LayerNormalization", "Mul", "Add"]  # the Mul stays outside
    x = rng.standard_normal((2, 5, C)).astype(np.float32)
    np.testing.assert_allclose(run_ort(fused, {"x": x})[0], run_ort(gamma_per_token, {"x": x})[0], rtol=1e-5, atol=1e-5)
