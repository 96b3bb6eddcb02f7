"""Written-out GELU and SiLU, recognized by what they compute in whatever order an exporter writes
them, fused to Gelu (opset 20) / Swish (opset 24): ONNX Runtime's outputs do not change (against the
unfused graph and a float64 reference of each function); look-alikes and shared parts are left."""

import math

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from rq_common.format import find_smooth_activations, fuse_smooth_activations

from conftest import make_model, run_ort

SHAPE = [2, 8, 6]


def constants(**values):
    return [numpy_helper.from_array(np.array(v, np.float32), k) for k, v in values.items()]


COMMON = constants(
    half=0.5, one=1.0, sqrt2=math.sqrt(2.0), inv_sqrt2=1 / math.sqrt(2.0), three=3.0, k=0.044715, c=math.sqrt(2 / math.pi)
)


def model_of(nodes, opset, outputs=("y",)):
    """MatMul -> the chain on its output ``h`` -> y."""
    weight = numpy_helper.from_array(np.random.default_rng(0).standard_normal((6, 6)).astype(np.float32), "w")
    return make_model(
        [helper.make_node("MatMul", ["x", "w"], ["h"]), *nodes],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, SHAPE)],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, SHAPE) for o in outputs],
        [weight, *COMMON],
        opset=opset,
    )


def n(op, inputs, out):
    return helper.make_node(op, inputs, [out])


GELU_TORCH = [
    n("Div", ["h", "sqrt2"], "d"),
    n("Erf", ["d"], "e"),
    n("Add", ["e", "one"], "a"),
    n("Mul", ["h", "a"], "m"),
    n("Mul", ["m", "half"], "y"),
]
GELU_HALF_FIRST = [  # Hugging Face's x * 0.5 * (1.0 + erf(x / sqrt(2))), the reciprocal form
    n("Mul", ["h", "half"], "hh"),
    n("Mul", ["inv_sqrt2", "h"], "d"),
    n("Erf", ["d"], "e"),
    n("Add", ["one", "e"], "a"),
    n("Mul", ["hh", "a"], "y"),
]
GELU_TANH_POW = [
    n("Pow", ["h", "three"], "cube"),
    n("Mul", ["cube", "k"], "kc"),
    n("Add", ["h", "kc"], "inner"),
    n("Mul", ["inner", "c"], "ci"),
    n("Tanh", ["ci"], "t"),
    n("Add", ["t", "one"], "a"),
    n("Mul", ["h", "half"], "hh"),
    n("Mul", ["hh", "a"], "y"),
]
GELU_TANH_CUBE = [  # x * x * x instead of Pow (tf2onnx's Keras gelu(approximate=True))
    n("Mul", ["h", "h"], "sq"),
    n("Mul", ["sq", "h"], "cube"),
    n("Mul", ["k", "cube"], "kc"),
    n("Add", ["kc", "h"], "inner"),
    n("Mul", ["c", "inner"], "ci"),
    n("Tanh", ["ci"], "t"),
    n("Add", ["one", "t"], "a"),
    n("Mul", ["a", "h"], "m"),
    n("Mul", ["half", "m"], "y"),
]
SILU = [n("Sigmoid", ["h"], "s"), n("Mul", ["h", "s"], "y")]
SILU_SWAPPED = [n("Sigmoid", ["h"], "s"), n("Mul", ["s", "h"], "y")]


def gelu(x):
    return 0.5 * x * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))


def gelu_tanh(x):
    return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


def silu(x):
    return x / (1 + np.exp(-x))


FORMS = {
    "gelu/torch": (GELU_TORCH, "Gelu", {}, 20, gelu),
    "gelu/half_first": (GELU_HALF_FIRST, "Gelu", {}, 20, gelu),
    "gelu_tanh/pow": (GELU_TANH_POW, "Gelu", {"approximate": "tanh"}, 20, gelu_tanh),
    "gelu_tanh/cube": (GELU_TANH_CUBE, "Gelu", {"approximate": "tanh"}, 20, gelu_tanh),
    "silu": (SILU, "Swish", {}, 24, silu),
    "silu/swapped": (SILU_SWAPPED, "Swish", {}, 24, silu),
}


@pytest.mark.parametrize("form", list(FORMS))
def test_each_written_out_form_becomes_the_one_op_where_the_opset_has_it(form, rng):
    nodes, op_type, attributes, opset, function = FORMS[form]
    x = rng.standard_normal(SHAPE).astype(np.float32)
    model = model_of(nodes, opset)
    (before,) = run_ort(model, {"x": x})
    log = fuse_smooth_activations(model)
    onnx.checker.check_model(model, full_check=True)
    assert [node.op_type for node in model.graph.node] == ["MatMul", op_type] and len(log) == 1
    fused = model.graph.node[1]
    assert list(fused.input) == ["h"] and list(fused.output) == ["y"]
    assert {a.name: helper.get_attribute_value(a).decode() for a in fused.attribute} == attributes
    (after,) = run_ort(model, {"x": x})
    np.testing.assert_allclose(after, before, rtol=1e-5, atol=1e-5)
    (h,) = run_ort(model_of([], opset, outputs=("h",)), {"x": x})
    np.testing.assert_allclose(after, function(h.astype(np.float64)), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("form", list(FORMS))
def test_below_the_op_s_opset_the_chain_is_found_but_stays(form):
    nodes, op_type, _, opset, _ = FORMS[form]
    model = model_of(nodes, 17)
    (match,) = find_smooth_activations(model)
    assert match.source == "h" and match.last.output[0] == "y" and len(match.nodes) == len(nodes)
    assert op_type == match.activation.op_type and opset == match.activation.opset
    assert fuse_smooth_activations(model) == [] and len(model.graph.node) == 1 + len(nodes)


LOOKALIKES = {
    "gelu with 0.6": [*GELU_TORCH[:-1], n("Mul", ["m", "k"], "y")],  # 0.044715 * x * (1 + erf): not GELU
    "twice gelu": GELU_TORCH[:-1] + [n("Add", ["m", "one"], "y")],  # x * (1 + erf) + 1
    "sigmoid alone": [n("Sigmoid", ["h"], "s"), n("Mul", ["s", "three"], "y")],
    "sigmoid of another tensor": [n("Sigmoid", ["x"], "s"), n("Mul", ["h", "s"], "y")],
}


@pytest.mark.parametrize("case", list(LOOKALIKES))
def test_lookalikes_are_left(case, rng):
    model = model_of(LOOKALIKES[case], 24)
    x = rng.standard_normal(SHAPE).astype(np.float32)
    (before,) = run_ort(model, {"x": x})
    assert find_smooth_activations(model) == [] and fuse_smooth_activations(model) == []
    (after,) = run_ort(model, {"x": x})
    np.testing.assert_array_equal(after, before)


def test_an_inner_tensor_read_elsewhere_keeps_the_chain():
    """erf(x / sqrt 2) is also a graph output: the chain cannot go, so it is not fused."""
    model = model_of(GELU_TORCH, 20, outputs=("y", "e"))
    assert fuse_smooth_activations(model) == []
    assert [node.op_type for node in model.graph.node] == ["MatMul", "Div", "Erf", "Add", "Mul", "Mul"]
