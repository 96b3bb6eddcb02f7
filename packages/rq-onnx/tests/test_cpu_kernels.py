"""The op table's ``cpu`` facts against ONNX Runtime itself: a DQ -> op -> Q group of each op is
built, and the graph ORT optimizes it to (``SessionOptions.optimized_model_filepath``) shows whether
an int8 kernel took the op or it runs in float between the Q/DQ pairs."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from rq_common.optable import OP_TABLE, CpuKernel, Role, facts_for

F = np.float32
# each op's extra inputs (constants) and attributes, so that the group is a valid model
OPS = {
    "Conv": ({"w": "weight"}, {}),
    "Gemm": ({"w": "weight2d"}, {"transB": 1}),
    "MatMul": ({"w": "weight2d"}, {}),
    "Add": ({"x2": "activation"}, {}),
    "Mul": ({"x2": "activation"}, {}),
    "Concat": ({"x2": "activation"}, {"axis": 1}),
    "AveragePool": ({}, {"kernel_shape": [2, 2]}),
    "GlobalAveragePool": ({}, {}),
    "Sigmoid": ({}, {}),
    "LeakyRelu": ({}, {}),
    "Softmax": ({}, {}),
    "Tanh": ({}, {}),
    "Erf": ({}, {}),
    "HardSigmoid": ({}, {}),
    "PRelu": ({"slope": np.full((4, 1, 1), 0.1, F)}, {}),
    "LayerNormalization": ({"gamma": np.ones(8, F), "beta": np.zeros(8, F)}, {"axis": -1}),
}


def _group(op: str, tmp_path) -> list[str]:
    """The op types of the optimized DQ -> op -> Q model."""
    extras, attributes = OPS[op]
    two_d = extras.get("w") == "weight2d"
    shape = [8, 16] if two_d else [1, 4, 8, 8]
    scale, zero = numpy_helper.from_array(np.array(0.05, F), "s"), numpy_helper.from_array(np.array(128, np.uint8), "z")
    inits, nodes, inputs = [scale, zero], [], []

    def activation(name):
        nodes.extend(
            [
                helper.make_node("QuantizeLinear", ["x", "s", "z"], [name + "q"]),
                helper.make_node("DequantizeLinear", [name + "q", "s", "z"], [name]),
            ]
        )
        inputs.append(name)

    activation("xd")
    for name, kind in extras.items():
        if isinstance(kind, str) and kind == "activation":
            activation(name)
        elif isinstance(kind, str):
            weight = np.random.default_rng(0).integers(-5, 5, (16, 16) if two_d else (4, 4, 3, 3)).astype(np.int8)
            inits += [numpy_helper.from_array(weight, "w8"), numpy_helper.from_array(np.array(0.01, F), "ws")]
            inits.append(numpy_helper.from_array(np.array(0, np.int8), "wz"))
            nodes.append(helper.make_node("DequantizeLinear", ["w8", "ws", "wz"], [name]))
            inputs.append(name)
        else:
            inits.append(numpy_helper.from_array(kind, name))
            inputs.append(name)
    nodes.append(helper.make_node(op, inputs, ["y"], **attributes))
    nodes += [
        helper.make_node("QuantizeLinear", ["y", "s", "z"], ["yq"]),
        helper.make_node("DequantizeLinear", ["yq", "s", "z"], ["out"]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    options.log_severity_level = 3
    ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return [n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node]


@pytest.mark.parametrize("op", list(OPS))
def test_the_op_tables_cpu_kernel_is_what_onnx_runtime_runs(op, tmp_path):
    optimized = _group(op, tmp_path)
    if facts_for(op).cpu is CpuKernel.NONE:
        assert op in optimized, f"{op}: ONNX Runtime has an int8 kernel for it: {optimized}"
    else:
        assert op not in optimized and any(t.startswith(("QLinear", "QGemm")) for t in optimized), optimized


def test_every_int8_kernel_fact_is_measured_above():
    # Relu / Clip drop out before a Q whose range starts at their bound, and Resize runs on the
    # int8 values as they are: neither leaves a QLinear op to find
    unmeasured = {"Relu", "Clip", "Resize"}
    claimed = {op for op, facts in OP_TABLE.items() if facts.role is Role.OWN_SCALE and facts.cpu is not CpuKernel.NONE}
    assert claimed - unmeasured <= OPS.keys()
