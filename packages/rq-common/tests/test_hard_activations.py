"""Written-out HardSigmoid / HardSwish / PReLU and Div by a constant, rewritten as single ops: the graph
types change, ONNX Runtime's outputs do not (against the unfused graph and a numpy reference)."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from rq_common.format import divisions_to_multiplications, fuse_written_out_activations

from conftest import make_model, run_ort


def scalar(name, value):
    return numpy_helper.from_array(np.array(value, np.float32), name)


BOUNDS = [scalar("zero", 0.0), scalar("six", 6.0), scalar("one", 1.0)]
CONSTANTS = [scalar("three", 3.0), scalar("sixth", 1 / 6), scalar("half", 0.5), scalar("six_d", 6.0)]


def chain(nodes):
    return make_model(
        [helper.make_node("Conv", ["x", "w"], ["x0"]), *nodes],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 5, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3, 5, 5])],
        [numpy_helper.from_array(np.eye(3, dtype=np.float32).reshape(3, 3, 1, 1) * 3, "w"), *BOUNDS, *CONSTANTS],
    )


def relu6_plus_3(out="r6"):
    return [helper.make_node("Add", ["x0", "three"], ["p3"]), helper.make_node("Clip", ["p3", "zero", "six"], [out])]


FORMS = {
    "hard_sigmoid/relu6": ("HardSigmoid", [*relu6_plus_3(), helper.make_node("Mul", ["r6", "sixth"], ["y"])]),
    "hard_sigmoid/div6": ("HardSigmoid", [*relu6_plus_3(), helper.make_node("Div", ["r6", "six_d"], ["y"])]),
    "hard_sigmoid/clip01": (
        "HardSigmoid",
        [
            helper.make_node("Mul", ["x0", "sixth"], ["s"]),
            helper.make_node("Add", ["s", "half"], ["sh"]),
            helper.make_node("Clip", ["sh", "zero", "one"], ["y"]),
        ],
    ),
    "hard_swish/div6": (  # torch.onnx's and Paddle's older form
        "HardSwish",
        [*relu6_plus_3(), helper.make_node("Mul", ["x0", "r6"], ["m"]), helper.make_node("Div", ["m", "six_d"], ["y"])],
    ),
    "hard_swish/x_times_hard_sigmoid": (
        "HardSwish",
        [
            helper.make_node("HardSigmoid", ["x0"], ["hs"], alpha=1 / 6, beta=0.5),
            helper.make_node("Mul", ["hs", "x0"], ["y"]),
        ],
    ),
    "hard_swish/x_times_written_out_hard_sigmoid": (
        "HardSwish",
        [*relu6_plus_3(), helper.make_node("Mul", ["r6", "sixth"], ["hs"]), helper.make_node("Mul", ["x0", "hs"], ["y"])],
    ),
}


def reference(op_type, x):
    hard_sigmoid = np.clip(x / 6 + 0.5, 0, 1)
    return hard_sigmoid if op_type == "HardSigmoid" else x * hard_sigmoid


@pytest.mark.parametrize("form", list(FORMS))
def test_each_written_out_form_becomes_the_one_op(form, rng):
    op_type, nodes = FORMS[form]
    model = chain(nodes)
    x = rng.uniform(-3, 3, (2, 3, 5, 5)).astype(np.float32)
    (before,) = run_ort(model, {"x": x})
    divisions_to_multiplications(model)
    log = fuse_written_out_activations(model)
    onnx.checker.check_model(model, full_check=True)
    assert [n.op_type for n in model.graph.node] == ["Conv", op_type] and log[-1].endswith(f"{op_type} fused into one op")
    (after,) = run_ort(model, {"x": x})
    np.testing.assert_allclose(after, before, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(after, reference(op_type, 3 * x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "nodes",
    [
        [
            helper.make_node("Add", ["x0", "three"], ["p3"]),
            helper.make_node("Clip", ["p3", "zero", "one"], ["r"]),
            helper.make_node("Mul", ["r", "sixth"], ["y"]),
        ],  # Clip(0, 1): not a ReLU6
        [*relu6_plus_3(), helper.make_node("Mul", ["r6", "half"], ["y"])],  # * 0.5: not 1/6
        [*relu6_plus_3(), helper.make_node("Mul", ["r6", "sixth"], ["y"]), helper.make_node("Relu", ["r6"], ["also"])],
    ],
)
def test_lookalikes_and_shared_parts_are_left_or_kept(nodes, rng):
    model = chain(nodes)
    if any("also" in n.output for n in nodes):
        model.graph.output.append(helper.make_tensor_value_info("also", TensorProto.FLOAT, [2, 3, 5, 5]))
    x = rng.uniform(-3, 3, (2, 3, 5, 5)).astype(np.float32)
    before = run_ort(model, {"x": x})
    fuse_written_out_activations(model)
    ops = [n.op_type for n in model.graph.node]
    if "Relu" in ops:  # the ReLU6 is read elsewhere: it stays, beside the fused op
        assert "HardSigmoid" in ops and "Clip" in ops
    else:
        assert "HardSigmoid" not in ops
    for got, want in zip(run_ort(model, {"x": x}), before, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_division_by_a_run_time_tensor_is_left_alone(rng):
    model = make_model(
        [helper.make_node("Div", ["a", "b"], ["y"]), helper.make_node("Div", ["a", "c"], ["z"])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [4]) for n in "ab"],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [4]) for n in "yz"],
        [numpy_helper.from_array(np.array([2, 4, 8, 3], np.float32), "c")],
    )
    a, b = rng.uniform(1, 2, (2, 4)).astype(np.float32)
    before = run_ort(model, {"a": a, "b": b})
    assert len(divisions_to_multiplications(model)) == 1
    assert [n.op_type for n in model.graph.node] == ["Div", "Mul"]
    for got, want in zip(run_ort(model, {"a": a, "b": b}), before, strict=True):
        np.testing.assert_allclose(got, want, rtol=2e-7)  # one float32 rounding apart at most


ALPHA = np.array([0.25, 0.1, 0.6], np.float32).reshape(3, 1, 1)  # per channel, as tf2onnx writes Keras's


@pytest.mark.parametrize(
    "nodes",
    [
        [  # Keras: relu(x) + (-alpha) * relu(-x), -alpha folded into a constant (MTCNN's frozen graphs)
            helper.make_node("Relu", ["x0"], ["pos"]),
            helper.make_node("Neg", ["x0"], ["negx"]),
            helper.make_node("Relu", ["negx"], ["rneg"]),
            helper.make_node("Mul", ["rneg", "minus_alpha"], ["m"]),
            helper.make_node("Add", ["pos", "m"], ["y"]),
        ],
        [  # relu(x) - alpha * relu(-x), the constant first
            helper.make_node("Relu", ["x0"], ["pos"]),
            helper.make_node("Neg", ["x0"], ["negx"]),
            helper.make_node("Relu", ["negx"], ["rneg"]),
            helper.make_node("Mul", ["alpha", "rneg"], ["m"]),
            helper.make_node("Sub", ["pos", "m"], ["y"]),
        ],
    ],
)
def test_written_out_prelu_becomes_prelu_with_its_slope(nodes, rng):
    model = chain(nodes)
    model.graph.initializer.extend([numpy_helper.from_array(-ALPHA, "minus_alpha"), numpy_helper.from_array(ALPHA, "alpha")])
    x = rng.uniform(-3, 3, (2, 3, 5, 5)).astype(np.float32)
    (before,) = run_ort(model, {"x": x})
    log = fuse_written_out_activations(model)
    onnx.checker.check_model(model, full_check=True)
    assert [n.op_type for n in model.graph.node] == ["Conv", "PRelu"] and log[-1].endswith("PRelu fused into one op")
    slope = next(numpy_helper.to_array(t) for t in model.graph.initializer if t.name == model.graph.node[1].input[1])
    np.testing.assert_array_equal(slope, ALPHA)
    (after,) = run_ort(model, {"x": x})
    np.testing.assert_allclose(after, before, rtol=1e-6, atol=1e-6)
    y = 3 * x
    np.testing.assert_allclose(after, np.where(y > 0, y, ALPHA * y), rtol=1e-5, atol=1e-6)


def test_relu_minus_a_relu_of_another_tensor_is_not_a_prelu(rng):
    model = chain(
        [
            helper.make_node("Relu", ["x0"], ["pos"]),
            helper.make_node("Neg", ["x"], ["negx"]),  # the graph input, not x0
            helper.make_node("Relu", ["negx"], ["rneg"]),
            helper.make_node("Mul", ["rneg", "minus_alpha"], ["m"]),
            helper.make_node("Add", ["pos", "m"], ["y"]),
        ]
    )
    model.graph.initializer.append(numpy_helper.from_array(-ALPHA, "minus_alpha"))
    assert fuse_written_out_activations(model) == []
    assert "PRelu" not in [n.op_type for n in model.graph.node]
