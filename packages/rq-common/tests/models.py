"""Small hand-built ONNX models for the format tests."""

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from rq_common import QParams, bias_qparams, compute_qparams, get_preset
from rq_common.format import insert_qdq, make_quantized_constant

from conftest import make_model

IN_SHAPE = [1, 3, 8, 8]


def float_conv_model(rng, with_bias=True, opset=17):
    """x -> Conv(W, B) -> Relu -> y."""
    w = (rng.standard_normal((4, 3, 3, 3)) * 0.3).astype(np.float32)
    b = (rng.standard_normal(4) * 0.1).astype(np.float32)
    inputs = ["x", "W", "B"] if with_bias else ["x", "W"]
    return make_model(
        [
            helper.make_node("Conv", inputs, ["c"], name="conv", pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["c"], ["y"], name="relu"),
        ],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, IN_SHAPE)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])],
        [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "B")][: len(inputs) - 1],
        opset=opset,
    )


def quantized_conv_model(rng, preset_name):
    """The float conv model quantized by hand with rq_common's builders: in the format."""
    preset = get_preset(preset_name)
    model = float_conv_model(rng)
    w = numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == "W"))
    b = numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == "B"))
    x_qp = compute_qparams(-3.0, 3.0, preset.activation)
    if preset.weight.per_channel:
        w_qp = compute_qparams(w.reshape(4, -1).min(1), w.reshape(4, -1).max(1), preset.weight, axis=0)
    else:
        w_qp = compute_qparams(w.min(), w.max(), preset.weight)
    b_qp = bias_qparams(b, x_qp, w_qp, preset.bias, preset.bias_rule)
    y_qp = compute_qparams(0.0, 4.0, preset.activation)
    graph = model.graph
    del graph.initializer[:]
    for name, values, qp in (("W", w, w_qp), ("B", b, b_qp)):
        pieces = make_quantized_constant(name, values, qp)
        pieces.add_to(graph, 0)
        conv = next(n for n in graph.node if n.op_type == "Conv")
        conv.input[1 if name == "W" else 2] = pieces.output
    insert_qdq(model, "x", x_qp)
    insert_qdq(model, "y", y_qp)
    onnx.checker.check_model(model)
    return model, dict(x=x_qp, w=w_qp, b=b_qp, y=y_qp)


def initializer(model, name) -> np.ndarray:
    return numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == name))


def set_initializer(model, name, values) -> None:
    for i, t in enumerate(model.graph.initializer):
        if t.name == name:
            model.graph.initializer[i].CopyFrom(numpy_helper.from_array(np.asarray(values), name))
            return
    model.graph.initializer.append(numpy_helper.from_array(np.asarray(values), name))


def node(model, name):
    return next(n for n in model.graph.node if n.name == name)


__all__ = ["IN_SHAPE", "QParams", "float_conv_model", "initializer", "node", "quantized_conv_model", "set_initializer"]
