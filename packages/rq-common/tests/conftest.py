import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def make_model(nodes, inputs, outputs, initializers=(), opset=17):
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8 if opset < 21 else 10
    return model


def run_ort(model: onnx.ModelProto, feeds: dict) -> list:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def qdq_model(dtype: int, scale, zero_point, axis=None, shape=(None,), opset=17):
    """x -> QuantizeLinear -> q (output) -> DequantizeLinear -> y (output)."""
    attrs = {} if axis is None else {"axis": axis}
    np_dtype = helper.tensor_dtype_to_np_dtype(dtype)
    return make_model(
        [
            helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], **attrs),
            helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"], **attrs),
        ],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))],
        [
            helper.make_tensor_value_info("q", dtype, list(shape)),
            helper.make_tensor_value_info("y", TensorProto.FLOAT, list(shape)),
        ],
        [
            numpy_helper.from_array(np.asarray(scale, np.float32), "s"),
            numpy_helper.from_array(np.asarray(zero_point, np_dtype), "z"),
        ],
        opset=opset,
    )
