"""The NPU adds its inputs at one position: rq_common's repair needs every quantized Add's inputs
(TorchPlan.adds), a lifted constant among them as a ConstantOperand, or the export breaks
npu-add-positions wherever two inputs are more than 7 positions apart."""

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
