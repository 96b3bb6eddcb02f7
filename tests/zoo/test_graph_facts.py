"""zoo.graph_facts: which ops of an int8 file compute in float, counted by hand on small graphs."""

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from zoo.graph_facts import float_ops


def test_a_resize_reading_dequantized_data_is_not_float_though_its_scales_are(tmp_path):
    """Resize's roi and scales are float parameters, not data: a DQ -> Resize -> Q is quantized.
    A Conv reading a float tensor is float."""
    scale, zero = numpy_helper.from_array(np.float32(0.1), "s"), numpy_helper.from_array(np.uint8(128), "z")
    scales = numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")
    roi = numpy_helper.from_array(np.zeros(0, np.float32), "roi")
    weight = numpy_helper.from_array(np.ones((1, 1, 1, 1), np.float32), "w")
    graph = helper.make_graph(
        [
            helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
            helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"]),
            helper.make_node("Resize", ["xd", "roi", "scales"], ["r"], mode="linear"),
            helper.make_node("QuantizeLinear", ["r", "s", "z"], ["rq"]),
            helper.make_node("DequantizeLinear", ["rq", "s", "z"], ["rd"]),
            helper.make_node("Relu", ["rd"], ["f"]),  # float data in, but from a DequantizeLinear: quantized
            helper.make_node("Conv", ["x", "w"], ["y"]),  # the graph input, not dequantized: float
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 4, 4])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("f", "y")],
        [scale, zero, scales, roi, weight],
    )
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    assert float_ops(path) == {"Conv": 1}
