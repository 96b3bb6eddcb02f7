"""The promise of rq: one network, one set of float weights, one preset and one calibration set give
the same int8 model from PyTorch (rq-torch), Keras (rq-tf2), a frozen TF1 graph (rq-tf1) and ONNX
(rq-onnx): the same ops and Q/DQ placement up to names and layout ops, the same integers, the same
scales (see parity.assert_same_computation for the stated tolerances and why), and ONNX Runtime
outputs within one output step of each other."""

import numpy as np
import onnx
import pytest
import same_network as nets
import torch
from parity import assert_recorded_bytes, assert_same_computation, recorded_preset

import rq_tf1
import rq_tf2
import rq_torch
from rq_common.format import output_qdq_params
from rq_onnx import ArrayReader, quantize_static

PRESETS = ["npu_cnn", "npu_transformer", "cpu"]


def calibration_set(network: str, count=16, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((count, *nets.INPUTS[network])).astype(np.float32)


def run_ort(path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: x[i : i + 1]})[0] for i in range(len(x))])  # batch 1: the NPU's


def output_step(model: onnx.ModelProto) -> float:
    return float(output_qdq_params(model).scale.reshape(-1)[0])


def quantize_all(network: str, preset: str, folder) -> dict[str, tuple[onnx.ModelProto, bool]]:
    """framework -> (its int8 ONNX model, whether it takes NHWC input)."""
    weights = nets.make_weights(network)
    data = calibration_set(network)
    out = {}

    reader = ArrayReader({"x": data}, batch_size=1)
    result = quantize_static(
        nets.float_onnx(network, weights, folder / "float.onnx"),
        folder / "onnx.onnx",
        reader,
        preset=recorded_preset(preset),
        quiet=True,
        equalization=False,  # the recorded bytes are without it
    )
    assert result.violations == []
    out["onnx"] = (result.model, False)

    model = nets.torch_model(network, weights)
    qmodel = rq_torch.quantize_model(
        model, torch.zeros(1, *nets.INPUTS[network]), preset=recorded_preset(preset), equalization=False
    )
    rq_torch.calibrate(qmodel, [torch.from_numpy(data[i : i + 4]) for i in range(0, len(data), 4)], quiet=True)
    result = rq_torch.export_onnx(qmodel, torch.zeros(1, *nets.INPUTS[network]), folder / "torch.onnx")
    assert result.violations == []
    out["torch"] = (result.model, False)

    qmodel = rq_tf2.quantize_model(nets.keras_model(network, weights), preset=recorded_preset(preset), equalization=False)
    rq_tf2.calibrate(qmodel, nets.to_nhwc(data), batch_size=4, quiet=True)
    result = rq_tf2.export_onnx(qmodel, folder / "tf2.onnx")
    assert result.violations == []
    out["tf2"] = (result.model, True)

    graph = nets.tf1_graph(network, weights, folder / "graph.pb")
    batches = [nets.to_nhwc(data[i : i + 4]) for i in range(0, len(data), 4)]
    result = rq_tf1.quantize_frozen_graph(
        graph,
        ["x"],
        ["logits"],
        lambda i: {"x": batches[i]},
        max_calibration_batches=len(batches),
        output_dir=folder / "tf1",
        preset=recorded_preset(preset),
        quiet=True,
        equalization=False,
    )
    assert result.violations == []
    out["tf1"] = (onnx.load(str(result.path)), True)
    return out


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("network", list(nets.NETWORKS))
def test_four_frameworks_write_the_same_int8_model(tmp_path, request, network, preset):
    models = quantize_all(network, preset, tmp_path)
    written = {f"tf1/{p.name}": p for p in sorted((tmp_path / "tf1").iterdir())}
    assert_recorded_bytes(request, {**written, **{f: tmp_path / f"{f}.onnx" for f in ("onnx", "torch", "tf2")}})
    reference, _ = models["onnx"]
    for framework, (model, _) in models.items():
        assert_same_computation(model, reference, preset, f"{framework} vs onnx")
    x = calibration_set(network, 8, seed=1)
    step = output_step(reference)
    outputs = {}
    for framework, (model, nhwc) in models.items():
        path = tmp_path / f"{framework}_run.onnx"
        onnx.save(model, str(path))
        outputs[framework] = run_ort(path, nets.to_nhwc(x) if nhwc else x)
    for framework, output in outputs.items():
        assert np.abs(output - outputs["onnx"]).max() / step <= 1.0001, framework
