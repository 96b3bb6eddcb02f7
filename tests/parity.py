"""What the parity tests compare: each weighted layer's quantization, read from an exported file."""

import hashlib
import json
import os
import platform
from pathlib import Path

import numpy as np
import onnx

from rq_common.format import GraphIndex, qdq_params
from rq_common.format.npu_checks import output_quantize
from rq_common.optable import ops_where
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

    path = Path(__file__).resolve().parents[1] / "packages" / package / "tests" / f"{name}.py"
    module_name = f"{package.replace('-', '_')}_tests_{name}"
    if module_name not in sys.modules:
        spec = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        spec.loader.exec_module(module)
    return sys.modules[module_name]


LAYOUT_OPS = ops_where(lambda facts: facts.layout)


def canonical_ops(model: onnx.ModelProto) -> list[dict]:
    """The model's quantized computation with node names and layout ops (the Transposes and
    Reshapes one exporter writes and another does not) left out: every compute op, depth first from
    the outputs with inputs in order, as {op, attributes, inputs, output}, where each input is the
    quantization it is read with (an activation's scale and zero point, a constant's integers and
    scale) and output the QuantizeLinear that follows (None where an activation fuses into the op)."""
    index = GraphIndex(model)
    rows: list[dict] = []
    seen: set[str] = set()

    def producer(tensor: str):
        node = index.producers.get(tensor)
        while node is not None and node.op_type in LAYOUT_OPS:
            node = index.producers.get(node.input[0])
        return node

    def read_as(tensor: str):
        node = producer(tensor)
        if node is None or node.op_type != "DequantizeLinear":
            return ("float-constant", index.constant(tensor).tolist()) if index.is_constant(tensor) else ("float", None)
        params = qdq_params(index, node)
        if index.is_constant(node.input[0]):
            return ("constant", index.constant(node.input[0]), params.scale, params.zero_point)
        return ("activation", params.scale, params.zero_point)

    def quantized_after(tensor: str):
        readers = [r for r, _ in index.consumers_of(tensor)]
        while len(readers) == 1 and readers[0].op_type in LAYOUT_OPS:
            readers = [r for r, _ in index.consumers_of(readers[0].output[0])]
        q = next((r for r in readers if r.op_type == "QuantizeLinear"), None)
        return None if q is None else (qdq_params(index, q).scale, qdq_params(index, q).zero_point)

    def visit(tensor: str) -> None:
        node = producer(tensor)
        if node is None or node.name in seen:
            return
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            visit(node.input[0])
            return
        seen.add(node.name)
        for name in node.input:
            if name and not index.is_constant(name):
                visit(name)
        inputs = [read_as(name) for name in node.input if name]
        if node.op_type == "Gemm" and not any(a.name == "transB" and a.i for a in node.attribute):
            kind, values, scale, zero_point = inputs[1]
            inputs[1] = (kind, values.T, scale, zero_point)  # (in, out) stored: compare as (out, in)
        attributes = {
            a.name: onnx.helper.get_attribute_value(a) for a in node.attribute if a.name in ("group", "strides", "pads", "alpha")
        }
        rows.append({"op": node.op_type, "attributes": attributes, "inputs": inputs, "output": quantized_after(node.output[0])})

    for output in model.graph.output:
        visit(output.name)
    return rows


def assert_same_computation(ours: onnx.ModelProto, reference: onnx.ModelProto, preset: str, label: str) -> None:
    """The same ops in the same order with the same Q/DQ placement, the same integers, and the same
    scales: identical when they are powers of two; float scales within 1e-5 relative (frameworks sum
    the calibration activations in another order) and int32 biases within one unit (s_in x s_w of
    scales that differ in their last place)."""
    pot = get_preset(preset).power_of_two
    rows, reference_rows = canonical_ops(ours), canonical_ops(reference)
    assert [(r["op"], len(r["inputs"])) for r in rows] == [(r["op"], len(r["inputs"])) for r in reference_rows], label
    for i, (a, b) in enumerate(zip(rows, reference_rows, strict=True)):
        where = f"{label}: op {i} ({a['op']})"
        for key, default in (("pads", [0, 0, 0, 0] if a["op"] == "Conv" else None), ("group", 1), ("strides", [1, 1])):
            assert a["attributes"].get(key, default) == b["attributes"].get(key, default), f"{where}: {key}"
        assert (a["output"] is None) == (b["output"] is None), f"{where}: output quantized in one and not the other"
        if a["output"] is not None:
            _same_scale(a["output"][0], b["output"][0], pot, f"{where} output scale")
            np.testing.assert_array_equal(a["output"][1], b["output"][1], err_msg=f"{where} output zero point")
        for slot, (x, y) in enumerate(zip(a["inputs"], b["inputs"])):
            assert x[0] == y[0], f"{where} input {slot}: {x[0]} vs {y[0]}"
            if x[0] == "activation":
                _same_scale(x[1], y[1], pot, f"{where} input {slot} scale")
                np.testing.assert_array_equal(x[2], y[2], err_msg=f"{where} input {slot} zero point")
            elif x[0] == "constant":
                int32 = x[1].dtype == np.int32
                np.testing.assert_allclose(
                    x[1], y[1], atol=1 if int32 and not pot else 0, err_msg=f"{where} input {slot} integers"
                )
                _same_scale(x[2], y[2], pot, f"{where} input {slot} constant scale")
            elif x[0] == "float-constant":
                np.testing.assert_allclose(x[1], y[1], rtol=1e-6, err_msg=f"{where} input {slot}")


def _same_scale(a, b, pot: bool, message: str) -> None:
    if pot:
        np.testing.assert_array_equal(a, b, err_msg=message)
    else:
        np.testing.assert_allclose(a, b, rtol=1e-5, err_msg=message)


RECORDED_BYTES = Path(__file__).parent / "golden" / "parity_bytes.json"


def recorded_preset(name: str):
    """The preset as the byte recordings were made with it, on every CPU family: npu_cnn's weights
    by power-of-two MinMSE (NonOverflow since; the recordings of the other families cannot be
    made again here). The parity of the frameworks holds for either; the bytes pin this one."""
    from rq_common.spec import get_preset

    return get_preset(name, weight_method="pot_minmse") if name == "npu_cnn" else get_preset(name)


# the x86 features the float kernels (ONNX Runtime's MLAS, oneDNN in torch and TensorFlow) choose
# code by, besides the SIMD width: two AVX-512 machines, one with AMX and one without, calibrate
# scales that differ in the last bits
KERNEL_FEATURES = ("amx_tile", "avx512_bf16", "avx512_vnni")


def float_kernel_family() -> str:
    """This CPU's float-kernel family, the recording's key: the SIMD width (AVX2 or AVX-512 on x86)
    and the features of KERNEL_FEATURES it has. Calibrated ranges, hence scales and bytes, follow
    the kernels' last bits."""
    from rq_common.cpu_features import cpu_flags, is_x86

    machine = platform.machine().lower()
    if not is_x86():
        return machine
    flags = cpu_flags()
    width = next((f for f in ("avx512f", "avx2") if f in flags), "sse")
    return "-".join([machine, width, *(f for f in KERNEL_FEATURES if width == "avx512f" and f in flags)])


def _recordings_of_this_kind(recordings: dict, family: str, key: str) -> list[dict]:
    """The recordings of ``key`` this CPU may reproduce: its own family's, else those of its SIMD
    width (families recorded before KERNEL_FEATURES were named, one of which this CPU may be)."""
    if key in recordings.get(family, {}):
        return [recordings[family][key]]
    width = "-".join(family.split("-")[:2])
    return [r[key] for f, r in recordings.items() if key in r and (f == width or f.startswith(width + "-"))]


def assert_recorded_bytes(request, files: dict[str, Path]) -> None:
    """Every file rq wrote for this parity test has the bytes recorded in tests/golden/parity_bytes.json
    (sha256) for this CPU's float kernels (float_kernel_family): refactoring rq's pipeline must not
    change a single number. RQ_RECORD_BYTES=1 records them instead (only when a change of numbers is
    intended, and named in the commit, or for a kernel family not yet recorded).
    """
    digests = {name: hashlib.sha256(path.read_bytes()).hexdigest() for name, path in sorted(files.items())}
    key, family = request.node.nodeid.split("::", 1)[1], float_kernel_family()
    recordings = json.loads(RECORDED_BYTES.read_text()) if RECORDED_BYTES.exists() else {}
    if os.environ.get("RQ_RECORD_BYTES") == "1":
        recordings.setdefault(family, {})[key] = digests
        recordings = {f: dict(sorted(r.items())) for f, r in sorted(recordings.items())}
        RECORDED_BYTES.parent.mkdir(exist_ok=True)
        RECORDED_BYTES.write_text(json.dumps(recordings, indent=1) + "\n")
        return
    candidates = _recordings_of_this_kind(recordings, family, key)
    assert candidates, f"no recorded bytes for {key} on {family} CPUs; record them with RQ_RECORD_BYTES=1"
    changed = min(([name for name in digests if digests[name] != r.get(name)] for r in candidates), key=len)
    same_files = any(digests.keys() == r.keys() for r in candidates)
    assert same_files and not changed, f"{key} ({family}): bytes differ from the recording: {changed}"


def stable_tf2onnx(model: onnx.ModelProto) -> bytes:
    """A float model from tf2onnx, with its node order, generated names and shared constants' names
    made independent of the process (tf2onnx's come from set order and a process-wide counter), as
    rq-tf2 and rq-tf1 make their own exports: the same float model then gives rq-onnx the same input."""
    from rq_common.format.graph import order_nodes_from_outputs
    from rq_common.format.markers import name_constants_by_first_reader, renumber_generated_names

    order_nodes_from_outputs(model)
    renumber_generated_names(model)
    name_constants_by_first_reader(model)
    model.graph.doc_string = ""  # names the traced function by a process-wide counter
    return model.SerializeToString(deterministic=True)
