"""What the parity tests compare: each weighted layer's quantization, read from an exported file."""

import numpy as np
import onnx

from rq_common.format import GraphIndex, qdq_params
from rq_common.format.npu_checks import output_quantize
from rq_common.spec import get_preset


def layer_table(model: onnx.ModelProto) -> list[dict]:
    """Per Conv / Gemm / MatMul with a constant weight, in graph order: the quantization of its
    input, weight, bias and output."""
    index = GraphIndex(model)
    rows = []
    for node in model.graph.node:
        if node.op_type not in ("Conv", "Gemm", "MatMul") or not index.is_constant(index.producers[node.input[1]].input[0]):
            continue
        source, weight = index.producers[node.input[0]], index.producers[node.input[1]]
        row = {
            "op": node.op_type,
            "input_scale": qdq_params(index, source).scale,
            "input_zero_point": qdq_params(index, source).zero_point,
            "weight": index.constant(weight.input[0]),
            "weight_scale": qdq_params(index, weight).scale,
            "output_scale": qdq_params(index, output_quantize(index, node)).scale,
        }
        if len(node.input) > 2 and node.input[2]:
            bias = index.producers[node.input[2]]
            row.update(bias=index.constant(bias.input[0]), bias_scale=qdq_params(index, bias).scale)
        rows.append(row)
    return rows


def assert_same_layers(ours: onnx.ModelProto, reference: onnx.ModelProto, preset: str) -> None:
    """Same ops in the same order, identical int8 weights and zero points, identical power-of-two
    scales (float scales within 1e-5 relative: frameworks sum activations in another order), and
    biases identical (int8) or within one unit (int32 at s_in x s_w, where float scales differ in
    the last place)."""
    rows, reference_rows = layer_table(ours), layer_table(reference)
    assert [r["op"] for r in rows] == [r["op"] for r in reference_rows]
    pot = get_preset(preset).power_of_two
    for i, (a, b) in enumerate(zip(rows, reference_rows, strict=True)):
        assert a.keys() == b.keys(), i
        np.testing.assert_array_equal(a["weight"], b["weight"], err_msg=f"layer {i} int8 weights")
        np.testing.assert_array_equal(a["input_zero_point"], b["input_zero_point"], err_msg=f"layer {i}")
        for key in ("input_scale", "weight_scale", "output_scale", "bias_scale"):
            if key not in a:
                continue
            if pot:
                np.testing.assert_array_equal(a[key], b[key], err_msg=f"layer {i} {key}")
            else:
                np.testing.assert_allclose(a[key], b[key], rtol=1e-5, err_msg=f"layer {i} {key}")
        if "bias" in a:
            np.testing.assert_allclose(a["bias"], b["bias"], atol=0 if pot else 1, err_msg=f"layer {i} bias")


def package_test_module(package: str, name: str):
    """A package's test helper module (its reference networks), loaded under a name of its own:
    rq-torch and rq-tf2 each have a ``nets.py``."""
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "packages" / package / "tests" / f"{name}.py"
    module_name = f"{package.replace('-', '_')}_tests_{name}"
    if module_name not in sys.modules:
        spec = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        spec.loader.exec_module(module)
    return sys.modules[module_name]
