"""Bad input: each a clear error that says what to do."""

import warnings

import nets
import pytest
import torch
from torch import nn

import rq_torch
from rq_common.errors import CalibrationDataError, SpecError
from rq_common.spec import get_preset
from rq_torch.errors import NotCalibratedError, TraceError


class DataDependent(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow: fx cannot trace it
            return self.conv(x)
        return self.conv(-x)


def test_untraceable_model_names_the_line_and_the_fix():
    with pytest.raises(TraceError) as info:
        rq_torch.quantize_model(DataDependent(), torch.randn(1, 3, 8, 8))
    message = str(info.value)
    assert "test_bad_input.py" in message and "if x.sum() > 0" in message
    assert "leaf_modules" in message and "rq_torch.modules" in message


def test_untraceable_submodule_can_be_a_leaf_and_stays_float():
    class Wrapper(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = DataDependent()
            self.fc = nn.Linear(4 * 6 * 6, 2)

        def forward(self, x):
            return self.fc(torch.flatten(self.inner(x), 1))

    qmodel = rq_torch.quantize_model(Wrapper(), torch.randn(1, 3, 8, 8), leaf_modules=[DataDependent])
    reasons = {f.op: f.reason for f in qmodel.rq_plan.float_ops}
    assert reasons["inner"].startswith("no quantization rule for inner")
    assert reasons["torch.flatten"] == "its input is not quantized, so the values pass through in float"


def test_example_inputs_of_the_wrong_shape():
    with pytest.raises(TraceError, match=r"does not run on the example inputs \[\(1, 5, 16, 16\)\].*shapes the model takes"):
        rq_torch.quantize_model(nets.ResNetStyle(), torch.randn(1, 5, 16, 16))


def test_calibration_with_no_batches():
    qmodel = rq_torch.quantize_model(nets.ResNetStyle(), torch.randn(1, 3, 16, 16))
    with pytest.raises(CalibrationDataError, match="no batches"):
        rq_torch.calibrate(qmodel, [], quiet=True)


def test_export_before_calibration(tmp_path):
    qmodel = rq_torch.quantize_model(nets.ResNetStyle(), torch.randn(1, 3, 16, 16))
    with pytest.raises(NotCalibratedError, match=r"run rq_torch.calibrate\(qmodel, data\) before exporting"):
        rq_torch.export_onnx(qmodel, torch.randn(1, 3, 16, 16), tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


def test_nan_in_calibration_data():
    qmodel = rq_torch.quantize_model(nets.ResNetStyle(), torch.randn(1, 3, 16, 16))
    bad = torch.randn(1, 3, 16, 16)
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(CalibrationDataError, match="NaN"):
        rq_torch.calibrate(qmodel, [bad], quiet=True)


def test_impossible_override():
    with pytest.raises(SpecError, match="weight.granularity"):
        rq_torch.quantize_model(nets.ResNetStyle(), torch.randn(1, 3, 16, 16), preset=get_preset("npu_cnn", per_channel=True))
    with pytest.raises(SpecError, match="cannot be exported by torch"):
        rq_torch.quantize_model(nets.ResNetStyle(), torch.randn(1, 3, 16, 16), preset=get_preset("cpu", weight_narrow_range=True))
    with pytest.raises(SpecError, match="cannot be exported by torch"):
        rq_torch.quantize_model(nets.ResNetStyle(), torch.randn(1, 3, 16, 16), preset="npu_a16w8")


@pytest.mark.parametrize("dropout", [nn.Dropout(0.2), nn.Dropout2d(0.2), nn.AlphaDropout(0.2), nn.FeatureAlphaDropout(0.2)])
def test_dropout_of_every_kind_is_the_identity_not_a_float_op(tmp_path, dropout):
    """khmer-ocr-ocm's CNN has Dropout2d between its blocks: in eval mode (and in the export) it does nothing."""

    from rq_common.format import validate

    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), dropout, nn.Conv2d(4, 2, 3)).eval()
    example = torch.randn(1, 3, 10, 10)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing stays in float
        qmodel = rq_torch.quantize_model(model, example, preset="cpu")
    assert qmodel.rq_plan.float_ops == []
    rq_torch.calibrate(qmodel, [torch.randn(2, 3, 10, 10) for _ in range(4)], quiet=True)
    assert rq_torch.export_onnx(qmodel, example, tmp_path / "q.onnx").violations == []
    assert validate(tmp_path / "q.onnx", "cpu") == []


class SkipReadsAfterInplaceRelu(nn.Module):
    """CRAFT's VGG16-BN slices: the next slice starts with ReLU(inplace=True), so the skip
    connection's tensor is the ReLU'd one at run time, though fx's graph says the BatchNorm's."""

    def __init__(self):
        super().__init__()
        self.slice1 = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4))
        self.slice2 = nn.Sequential(nn.ReLU(inplace=True), nn.Conv2d(4, 4, 3, padding=1))

    def forward(self, x):
        h = self.slice1(x)
        y = self.slice2(h)
        return torch.cat([y, h], dim=1)


def test_inplace_op_read_later_is_quantized_where_it_runs(tmp_path, seeded):
    import numpy as np

    from conftest import run_ort

    model = SkipReadsAfterInplaceRelu().eval()
    with torch.no_grad():
        model.slice1[1].running_mean.uniform_(-0.5, 0.5)
    x = torch.randn(8, 3, 8, 8)
    with torch.no_grad():
        expected = model(x.clone())
    assert (expected[:, 4:] >= 0).all()  # the skip half is the ReLU'd tensor
    qmodel = rq_torch.quantize_model(model, x[:1], preset="cpu")
    rq_torch.calibrate(qmodel, [x[i : i + 2] for i in range(0, 8, 2)], quiet=True)
    with torch.no_grad():
        quantized = qmodel(x.clone())
    error = (quantized - expected).numpy()
    assert 10 * np.log10(np.sum(expected.numpy() ** 2) / np.sum(error**2)) > 30
    result = rq_torch.export_onnx(qmodel, x[:1], tmp_path / "q.onnx")
    assert result.violations == []
    ort_out = np.concatenate([run_ort(tmp_path / "q.onnx", {"x": x[i : i + 1].numpy()}, as_written=True) for i in range(8)])
    np.testing.assert_array_equal(ort_out, quantized.numpy())


class TwoInputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(5, 4)

    def forward(self, image, extra):
        return self.conv(image).mean((2, 3)) + self.fc(extra)


@pytest.mark.parametrize(
    "batch,message",
    [
        (torch.randn(2, 5, 16, 16), r"input 'x' has shape \[2, 5, 16, 16\], the model was traced with \[1, 3, 16, 16\]"),
        (torch.randn(2, 3, 16, 16, 1), r"input 'x' has shape \[2, 3, 16, 16, 1\], the model was traced with \[1, 3, 16, 16\]"),
        (torch.randn(3, 16, 16), r"input 'x' has shape \[3, 16, 16\].*give batches of shape \[N, 3, 16, 16\]"),
        ((torch.randn(4, 3, 8, 8), torch.zeros(4)), r"input 'x' has shape \[4, 3, 8, 8\].*only the batch size may differ"),
        ({"x": torch.randn(2, 3, 16, 8)}, r"input 'x' has shape \[2, 3, 16, 8\]"),
    ],
)
def test_calibration_batch_of_another_shape_than_the_traced_example(batch, message):
    """Named by rq (expected and got) before torch fails on it; the batch size alone may differ."""
    qmodel = rq_torch.quantize_model(nets.ResNetStyle(), torch.randn(1, 3, 16, 16))
    good = torch.randn(4, 3, 16, 16)
    with pytest.raises(CalibrationDataError, match=f"calibration batch 2: {message}") as info:
        rq_torch.calibrate(qmodel, [good, batch], quiet=True)
    assert type(info.value) is CalibrationDataError and "\n" not in str(info.value)


def test_calibration_shapes_of_several_inputs_are_checked_by_name():
    qmodel = rq_torch.quantize_model(TwoInputs(), (torch.randn(1, 3, 8, 8), torch.randn(1, 5)), preset="cpu")
    rq_torch.calibrate(qmodel, [(torch.randn(4, 3, 8, 8), torch.randn(4, 5))], quiet=True)  # another batch size: fine
    with pytest.raises(CalibrationDataError, match=r"batch 1: input 'extra' has shape \[4, 6\].*traced with \[1, 5\]"):
        rq_torch.calibrate(qmodel, [(torch.randn(4, 3, 8, 8), torch.randn(4, 6))], quiet=True)
    with pytest.raises(CalibrationDataError, match=r"input 'extra' has shape \[2, 5, 1\]"):
        rq_torch.calibrate(qmodel, [{"image": torch.randn(2, 3, 8, 8), "extra": torch.randn(2, 5, 1)}], quiet=True)


def test_many_float_ops_are_one_warning():
    class Exps(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 1)

        def forward(self, x):
            x = self.conv(x)
            for _ in range(10):
                x = torch.exp(x) * 0.5  # exp has no rule: 10 float ops
            return x

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        qmodel = rq_torch.quantize_model(Exps(), torch.randn(1, 3, 4, 4))
    messages = [str(w.message) for w in caught if "stay" in str(w.message)]
    assert len(messages) == 1
    assert messages[0].startswith("rq_torch: 10 ops stay in float (every one in qmodel.rq_plan.float_ops")
    assert "'torch.exp' (node exp): no quantization rule for torch.exp" in messages[0]
    assert "(node exp_2)" in messages[0] and "(node exp_3)" not in messages[0] and messages[0].endswith("; and 7 more")
    assert sum(op.op == "torch.exp" for op in qmodel.rq_plan.float_ops) == 10


class Embedder(nn.Module):
    """forward() branches on a Python argument: fx cannot trace it without a value for it."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)

    def forward(self, x, embed=False):
        y = self.conv(x)
        if embed:
            return torch.flatten(y, 1)
        return torch.relu(y)


def test_a_branch_on_a_forward_argument_says_concrete_args():
    with pytest.raises(TraceError) as caught:
        rq_torch.quantize_model(Embedder(), torch.randn(1, 3, 4, 4))
    message = str(caught.value)
    assert "(if embed:)" in message and "branches in Python on its argument 'embed'" in message
    assert "quantize_model(..., concrete_args={'embed': False})" in message
    assert "leaf_modules" not in message and "\n" not in message


@pytest.mark.parametrize("embed", [False, True])
def test_concrete_args_trace_the_branch_asked_for(tmp_path, embed):
    import numpy as np
    import onnx

    from conftest import run_ort

    model = Embedder().eval()
    qmodel = rq_torch.quantize_model(model, torch.randn(1, 3, 4, 4), preset="cpu", concrete_args={"embed": embed})
    assert qmodel.rq_plan.input_names == ["x"]
    rq_torch.calibrate(qmodel, [torch.randn(1, 3, 4, 4) for _ in range(8)], quiet=True)
    path = tmp_path / "q.onnx"
    assert rq_torch.export_onnx(qmodel, torch.randn(1, 3, 4, 4), path).violations == []
    assert [i.name for i in onnx.load(str(path)).graph.input] == ["x"]
    x = torch.randn(1, 3, 4, 4)
    with torch.no_grad():
        expected, float_out = qmodel(x).numpy(), model(x, embed=embed).numpy()
    assert expected.shape == ((1, 64) if embed else (1, 4, 4, 4))
    assert (expected.min() < 0) == embed  # the flatten branch keeps negatives, the relu branch does not
    assert 10 * np.log10(np.sum(float_out**2) / np.sum((expected - float_out) ** 2)) > 10  # the float model, quantized
    np.testing.assert_array_equal(run_ort(path, {"x": x.numpy()}, as_written=True), expected)
