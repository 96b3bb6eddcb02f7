"""Parity of rq-torch and rq-onnx: the same float network, calibration data and preset give the
same int8 model: the same power-of-two scales (float scales within 1e-5 relative, because torch
and ONNX Runtime sum activations in a different order) and the same int8 weights and biases."""

import pytest
import torch
from parity import assert_recorded_bytes, assert_same_layers, package_test_module, recorded_preset

import rq_torch
from rq_common.qmath.equalization import Equalization
from rq_common.spec import get_preset
from rq_onnx import ArrayReader, quantize_static

nets = package_test_module("rq-torch", "nets")

NETWORKS = {
    "resnet": (nets.ResNetStyle, (1, 3, 16, 16)),
    "mobilenet_v2": (nets.MobileNetV2Style, (1, 3, 32, 32)),
    "transformer": (nets.TransformerEncoder, (1, 8, 32)),
}


def both_quantize(tmp_path, network: str, preset, equalization, bias_correction: bool = False):
    """The same network, calibration data and options through rq-torch and through its float ONNX
    export into rq-onnx: (rq-torch's result, rq-onnx's result)."""
    build, shape = NETWORKS[network]
    torch.manual_seed(0)
    model = nets.randomize_batchnorm(build()).eval()
    example = torch.randn(shape)
    calibration = [torch.randn(shape) for _ in range(16)]
    qmodel = rq_torch.quantize_model(model, example, preset=preset, equalization=equalization)
    rq_torch.calibrate(qmodel, calibration, quiet=True, bias_correction=bias_correction)
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
    options = {"equalization": equalization, "bias_correction": bias_correction}
    from_onnx = quantize_static(tmp_path / "float.onnx", tmp_path / "onnx.onnx", reader, preset, quiet=True, **options)
    assert from_torch.violations == [] and from_onnx.violations == []
    return from_torch, from_onnx


@pytest.mark.parametrize("preset", ["npu_cnn", "npu_transformer", "cpu"])
@pytest.mark.parametrize("network", list(NETWORKS))
def test_rq_torch_and_rq_onnx_write_the_same_int8_model(tmp_path, request, network, preset):
    # equalization off: the recorded bytes are the pipeline's without it (equalized below)
    from_torch, from_onnx = both_quantize(tmp_path, network, recorded_preset(preset), equalization=False)
    assert_same_layers(from_torch.model, from_onnx.model, preset)
    assert_recorded_bytes(request, {"torch": tmp_path / "torch.onnx", "onnx": tmp_path / "onnx.onnx"})


@pytest.mark.parametrize("preset", ["npu_cnn", "npu_transformer"])
@pytest.mark.parametrize("network", ["resnet", "mobilenet_v2"])
def test_rq_torch_and_rq_onnx_equalize_the_same(tmp_path, network, preset):
    """Both equalize with rq_common's math on the same folded weights: the same int8 model, the
    same pairs. MobileNetV2's are joined through ReLU6: made ReLU on both sides, and without
    high-bias absorption, rq-onnx's alone (ResNet's ReLUs all feed padded convs: none there)."""
    relaxed = Equalization(relu6="relu", absorb_high_bias=False)
    equalization = relaxed if network == "mobilenet_v2" else None  # None: on by default
    from_torch, from_onnx = both_quantize(tmp_path, network, preset, equalization)
    equalized = [[n for n in notes if "equaliz" in n] for notes in (from_torch.notes, from_onnx.notes)]
    assert equalized[0] == equalized[1] and "pair(s) of layers equalized" in equalized[0][-1], equalized
    assert_same_layers(from_torch.model, from_onnx.model, preset)


@pytest.mark.parametrize("network", ["resnet", "mobilenet_v2"])
def test_rq_torch_and_rq_onnx_correct_biases_the_same(tmp_path, network):
    """Bias correction from the same calibration data: rq-torch's input means (forward hooks) and
    rq-onnx's (ORT outputs) give the same corrected int8 biases (within the int32 rounding one
    summation order's last bit can move)."""
    from_torch, from_onnx = both_quantize(tmp_path, network, "npu_transformer", False, bias_correction=True)
    assert any("bias correction" in n for n in from_torch.notes)
    assert_same_layers(from_torch.model, from_onnx.model, "npu_transformer")
    (tmp_path / "plain").mkdir()
    plain, _ = both_quantize(tmp_path / "plain", network, "npu_transformer", equalization=False)
    assert plain.model.SerializeToString() != from_torch.model.SerializeToString()  # the correction changed biases


@pytest.mark.parametrize("network", ["resnet", "mobilenet_v2"])
def test_rq_torch_and_rq_onnx_place_the_same_quantizers_for_the_cpus_int8_kernels(tmp_path, network):
    """QdqPlacement.INTEGER_KERNELS comes from rq_common's one placement: on a CNN both packages
    keep the same Q/DQ pairs and write the same int8 layers. (A transformer's Linear is one Gemm to
    rq-torch and keeps its output Q/DQ; rq-onnx sees MatMul + bias Add: README, "Presets".)"""
    preset = get_preset("cpu", qdq="integer_kernels")
    from_torch, from_onnx = both_quantize(tmp_path, network, preset, equalization=False)
    assert_same_layers(from_torch.model, from_onnx.model, "cpu")
    pairs = [sum(n.op_type == "QuantizeLinear" for n in r.model.graph.node) for r in (from_torch, from_onnx)]
    assert pairs[0] == pairs[1] > 0
