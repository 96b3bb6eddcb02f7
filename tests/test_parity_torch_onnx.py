"""Parity of rq-torch and rq-onnx: the same float network, calibration data and preset give the
same int8 model: the same power-of-two scales (float scales within 1e-5 relative, because torch
and ONNX Runtime sum activations in a different order) and the same int8 weights and biases."""

import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")  # the e2e session installs every package; this guards a partial install

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "packages" / "rq-torch" / "tests"))
import nets  # noqa: E402  (rq-torch's test networks)

import rq_torch  # noqa: E402
from rq_common.format import GraphIndex, qdq_params  # noqa: E402
from rq_common.format.npu_checks import output_quantize  # noqa: E402
from rq_common.spec import get_preset  # noqa: E402
from rq_onnx import ArrayReader, quantize_static  # noqa: E402

NETWORKS = {
    "resnet": (nets.ResNetStyle, (1, 3, 16, 16)),
    "mobilenet_v2": (nets.MobileNetV2Style, (1, 3, 32, 32)),
    "transformer": (nets.TransformerEncoder, (1, 8, 32)),
}


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


@pytest.mark.parametrize("preset", ["npu_cnn", "npu_transformer", "cpu"])
@pytest.mark.parametrize("network", list(NETWORKS))
def test_rq_torch_and_rq_onnx_write_the_same_int8_model(tmp_path, network, preset):
    build, shape = NETWORKS[network]
    torch.manual_seed(0)
    model = nets.randomize_batchnorm(build()).eval()
    example = torch.randn(shape)
    calibration = [torch.randn(shape) for _ in range(16)]

    qmodel = rq_torch.quantize_model(model, example, preset=preset)
    rq_torch.calibrate(qmodel, calibration, quiet=True)
    from_torch = rq_torch.export_onnx(qmodel, example, tmp_path / "torch.onnx")

    torch.onnx.export(
        model,
        (example,),
        str(tmp_path / "float.onnx"),
        dynamo=False,
        opset_version=17,
        do_constant_folding=False,
        input_names=["x"],
    )
    reader = ArrayReader({"x": torch.cat(calibration).numpy()}, batch_size=1)
    from_onnx = quantize_static(tmp_path / "float.onnx", tmp_path / "onnx.onnx", reader, preset=preset, quiet=True)
    assert from_torch.violations == [] and from_onnx.violations == []

    torch_rows, onnx_rows = layer_table(from_torch.model), layer_table(from_onnx.model)
    assert [r["op"] for r in torch_rows] == [r["op"] for r in onnx_rows]
    pot = get_preset(preset).power_of_two
    for i, (a, b) in enumerate(zip(torch_rows, onnx_rows, strict=True)):
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
            # int8 power-of-two biases are identical; int32 biases at s_in x s_w may differ by one
            # unit where the float scales differ in the last place
            np.testing.assert_allclose(a["bias"], b["bias"], atol=0 if pot else 1, err_msg=f"layer {i} bias")
