"""export_onnx writes only what the validator passes, and the file records the ops kept in float, so
that validating the file alone (what `rq-onnx check` does) agrees with the exporter."""

import warnings

import numpy as np
import onnx
import pytest
import torch
from torch import nn

import rq_torch
from rq_common.errors import FormatError
from rq_common.format import ViolationKind, validate
from rq_common.format.graph import record_float_nodes, recorded_float_nodes

from conftest import run_ort


def _calibrated(model: nn.Module, shape: tuple, preset: str, **options):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        qmodel = rq_torch.quantize_model(model.eval(), torch.randn(shape), preset=preset, **options)
    return rq_torch.calibrate(qmodel, [torch.randn(shape) for _ in range(8)], quiet=True)


def _leaky():  # alpha 0.2 is no multiple of 1/256: the NPU cannot compute it (npu-leaky-alpha)
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.LeakyReLU(0.2), nn.Conv2d(8, 4, 3))


def test_a_model_that_breaks_a_rule_is_an_error_and_nothing_is_written(tmp_path):
    qmodel = _calibrated(_leaky(), (1, 3, 8, 8), "npu_cnn")
    path = tmp_path / "q.onnx"
    with pytest.raises(FormatError, match=r"npu-leaky-alpha: node '/1/LeakyRelu'.*nothing was written.*allow_violations=True"):
        rq_torch.export_onnx(qmodel, torch.randn(1, 3, 8, 8), path)
    assert list(tmp_path.iterdir()) == []


def test_a_file_already_there_is_left_as_it_was(tmp_path):
    qmodel = _calibrated(_leaky(), (1, 3, 8, 8), "npu_cnn")
    path = tmp_path / "q.onnx"
    path.write_bytes(b"earlier")
    with pytest.raises(FormatError):
        rq_torch.export_onnx(qmodel, torch.randn(1, 3, 8, 8), path)
    assert path.read_bytes() == b"earlier"


def test_allow_violations_writes_and_lists_what_the_file_breaks(tmp_path):
    qmodel = _calibrated(_leaky(), (1, 3, 8, 8), "npu_cnn")
    result = rq_torch.export_onnx(qmodel, torch.randn(1, 3, 8, 8), tmp_path / "q.onnx", allow_violations=True)
    assert [v.kind for v in result.violations] == [ViolationKind.NPU_LEAKY_ALPHA]
    assert validate(tmp_path / "q.onnx", "npu_cnn") == result.violations


def test_the_op_kept_in_float_on_request_makes_it_valid(tmp_path):
    qmodel = _calibrated(_leaky(), (1, 3, 8, 8), "npu_cnn", exclude_nodes=["1"])
    result = rq_torch.export_onnx(qmodel, torch.randn(1, 3, 8, 8), tmp_path / "q.onnx")
    assert result.violations == [] and validate(tmp_path / "q.onnx", "npu_cnn") == []
    assert recorded_float_nodes(onnx.load(str(tmp_path / "q.onnx"))) == ["/_1/1/LeakyRelu"]


class FloatInside(nn.Module):
    """SiLU (a module) and exp (a function) have no quantization rule: both run in float."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.act = nn.SiLU()
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)

    def forward(self, x):
        y = self.act(self.conv(x))
        return self.conv2(torch.exp(y) + y)


@pytest.mark.parametrize("preset", ["npu_cnn", "cpu"])
def test_the_float_ops_are_recorded_by_their_exported_names(tmp_path, preset):
    qmodel = _calibrated(FloatInside(), (1, 3, 8, 8), preset)
    assert {op.node for op in qmodel.rq_plan.float_ops} == {"act", "exp"}
    path = tmp_path / "q.onnx"
    result = rq_torch.export_onnx(qmodel, torch.randn(1, 3, 8, 8), path)
    written = onnx.load(str(path))
    assert recorded_float_nodes(written) == ["/act/act/Sigmoid", "/act/act/Mul", "/exp/Exp"]
    assert result.violations == [] and validate(path, preset) == []
    # without the record, the validator sees a quantized Mul fed by a float Sigmoid
    record_float_nodes(written, [])
    assert ViolationKind.MISSING_QDQ in {v.kind for v in validate(written, preset)}
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        expected = qmodel(x).numpy()
    np.testing.assert_array_equal(run_ort(path, {"x": x.numpy()}, as_written=True), expected)
