"""The NPU's position rules in rq-torch. The NPU adds its inputs at one position: rq_common's repair
needs every quantized Add's inputs (TorchPlan.adds), a lifted constant among them as a
ConstantOperand, or the export breaks npu-add-positions wherever two inputs are more than 7
positions apart. A layer no position can serve runs in float, as in rq-onnx."""

import warnings

import numpy as np
import torch
from torch import nn

import rq_torch
from rq_common.format import validate
from rq_common.pipeline import ConstantOperand
from rq_common.qmath import npu_rules

from conftest import run_ort


class FarApart(nn.Module):
    """Two branches whose outputs are ~50000x apart in range (positions ~16 apart), plus a constant."""

    def __init__(self):
        super().__init__()
        self.big, self.small = nn.Conv2d(3, 4, 1), nn.Conv2d(3, 4, 1)
        with torch.no_grad():
            for conv, factor in ((self.big, 500.0), (self.small, 0.01)):
                conv.weight.mul_(factor)
                conv.bias.mul_(factor)

    def forward(self, x):
        return self.small(x) + self.big(x) + 0.001


def test_far_apart_add_inputs_are_repaired(tmp_path):
    example = torch.randn(1, 3, 8, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        qmodel = rq_torch.quantize_model(FarApart().eval(), example, preset="npu_cnn")
    assert qmodel.rq_plan.adds == [["rq_quantizer_1", "rq_quantizer_2"], ["rq_quantizer_3", ConstantOperand("rq_constant_0")]]
    rq_torch.calibrate(qmodel, [torch.randn(1, 3, 8, 8) for _ in range(8)], quiet=True)
    small, big = (npu_rules.position(qmodel.get_submodule(n).qparams().scale) for n in ("rq_quantizer_1", "rq_quantizer_2"))
    assert small - big == 7  # calibrated ~16 apart: the finer one lowered to within 7
    constant = qmodel.get_submodule("rq_constant_quantizer_0")
    assert (
        npu_rules.position(constant.qparams().scale)
        == npu_rules.position(qmodel.get_submodule("rq_quantizer_3").qparams().scale) + 7
    )
    assert qmodel.get_submodule("rq_quantizer_4").qparams().scale == constant.qparams().scale  # what the export holds
    path = tmp_path / "q.onnx"
    result = rq_torch.export_onnx(qmodel, example, path)
    assert any("'rq_quantizer_1': position" in note and "Add inputs within 7 positions" in note for note in result.notes)
    assert any("'rq_constant_0': position" in note for note in result.notes)
    assert result.violations == [] and validate(path, "npu_cnn") == []
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        expected = qmodel(x).numpy()
    np.testing.assert_array_equal(run_ort(path, {"x": x.numpy()}, as_written=True), expected)


class ConcatOfFarApartConvs(nn.Module):
    """rq-onnx's case (test_npu_rules): two 1x1 Convs into one Concat share its scale on the NPU, one
    with weights near 127 (w_pos 0), one near 1e-5 (w_pos 23). shift_cut in [0, 16] needs
    out_pos <= in_pos for the first and out_pos >= in_pos + 7 for the second: no shared position."""

    def __init__(self):
        super().__init__()
        rng = np.random.default_rng(0)
        self.conv_big, self.conv_tiny = nn.Conv2d(2, 2, 1, bias=False), nn.Conv2d(2, 2, 1, bias=False)
        with torch.no_grad():
            self.conv_big.weight.copy_(torch.tensor(rng.uniform(60, 127, (2, 2, 1, 1)), dtype=torch.float32))
            self.conv_tiny.weight.copy_(torch.tensor(rng.uniform(0.6e-5, 1.2e-5, (2, 2, 1, 1)), dtype=torch.float32))

    def forward(self, x):
        return torch.cat([self.conv_big(x), self.conv_tiny(x)], 1)


def test_a_layer_no_npu_position_can_serve_runs_in_float(tmp_path):
    """The layer rq_common's finalize names unrepairable keeps a float weight, is recorded as a float
    op (so rq-onnx check agrees with the export) and the rest is written in the format; ORT runs the
    file as torch runs the model. After a state_dict round trip the export still knows it."""
    example = torch.rand(1, 2, 4, 4)
    qmodel = rq_torch.quantize_model(ConcatOfFarApartConvs().eval(), example, preset="npu_cnn")
    rq_torch.calibrate(qmodel, [torch.rand(1, 2, 4, 4) for _ in range(8)], quiet=True)
    assert [op.node for op in qmodel.rq_plan.float_ops] == ["conv_tiny"]
    assert "shift_cut needs an output position in [14, 30]" in qmodel.rq_plan.float_ops[0].reason  # w_pos 23 + in_pos 7
    assert any(note.startswith("conv_tiny: kept in float") for note in qmodel.rq_notes)
    assert "conv_tiny" not in qmodel.rq_plan.quantized_ops and "conv_big" in qmodel.rq_plan.quantized_ops
    path = tmp_path / "q.onnx"
    result = rq_torch.export_onnx(qmodel, example, path)
    assert result.violations == [] and validate(path, "npu_cnn") == []
    convs = {n.name: n for n in result.model.graph.node if n.op_type == "Conv"}
    initializers = {t.name for t in result.model.graph.initializer}
    (tiny,) = [n for name, n in convs.items() if "conv_tiny" in name]
    assert tiny.input[1] in initializers  # a float weight, read by no DequantizeLinear
    assert [op.node for op in result.float_ops] == ["conv_tiny"]
    x = torch.rand(1, 2, 4, 4)
    with torch.no_grad():
        expected = qmodel(x).numpy()
    np.testing.assert_allclose(run_ort(path, {"x": x.numpy()}, as_written=True), expected, rtol=0, atol=1e-5)

    torch.save(qmodel.state_dict(), tmp_path / "q.pt")
    fresh = rq_torch.quantize_model(ConcatOfFarApartConvs().eval(), example, preset="npu_cnn")
    fresh.load_state_dict(torch.load(tmp_path / "q.pt", weights_only=True))
    again = rq_torch.export_onnx(fresh, example, tmp_path / "again.onnx")
    assert again.violations == [] and [op.node for op in again.float_ops] == ["conv_tiny"]
    assert (tmp_path / "again.onnx").read_bytes() == path.read_bytes()
