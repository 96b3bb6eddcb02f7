"""quantize_model(equalization=...): the equalized float layers compute what the model did (to
1e-5), paired channel ranges end equal, a ReLU6 pair is left alone unless asked, and a per-tensor
int8 export of a badly scaled net comes closer to float (ONNX Runtime) with it than without."""

import copy

import numpy as np
import pytest
import torch
from torch import nn

import rq_torch
from rq_common.errors import SpecError
from rq_common.qmath.equalization import Equalization
from rq_torch.equalize import equalize_layers, find_pairs
from rq_torch.trace import trace
from rq_torch.transform import fold_batchnorms

from conftest import run_ort


class BadlyScaled(nn.Module):
    """Conv-BN-ReLU -> depthwise Conv-BN-act -> Conv-ReLU -> mean -> Linear-ReLU-Linear, with BN
    statistics spread over four decades and the next layer compensating, as folded backbones
    leave channel ranges: the float function is an ordinary one, per-tensor weights are not."""

    def __init__(self, activation: type[nn.Module] = nn.ReLU):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.dw, self.bn2 = nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.BatchNorm2d(8)
        self.act1, self.act2 = nn.ReLU(), activation()
        self.conv3 = nn.Conv2d(8, 16, 1)
        self.fc1, self.fc2 = nn.Linear(16, 12), nn.Linear(12, 4)
        g = torch.Generator().manual_seed(3)
        with torch.no_grad():
            for bn, reader in ((self.bn1, self.dw.weight), (self.bn2, self.conv3.weight)):
                bn.running_var.copy_(10.0 ** (torch.rand(8, generator=g) * 4 - 2))
                bn.running_mean.zero_()
                spread = bn.running_var.sqrt()  # BN divides channel i by it; the reader multiplies it back
                reader.mul_(spread.view(8, 1, 1, 1) if reader is self.dw.weight else spread.view(1, 8, 1, 1))
            rows = 10.0 ** (torch.rand(12, generator=g) * 3 - 1.5)
            self.fc1.weight.mul_(rows.view(12, 1))
            self.fc1.bias.mul_(rows)
            self.fc2.weight.div_(rows.view(1, 12))

    def forward(self, x):
        x = self.act2(self.bn2(self.dw(self.act1(self.bn1(self.conv1(x))))))
        x = torch.relu(self.conv3(x)).mean(dim=(2, 3))
        return self.fc2(torch.relu(self.fc1(x)))


def folded(model: nn.Module):
    """Traced (a copy: a GraphModule shares its root's modules) with BatchNorm folded."""
    gm = trace(copy.deepcopy(model).eval(), (), None)
    fold_batchnorms(gm)
    return gm


def ranges(weight: torch.Tensor, axis: int) -> np.ndarray:
    return weight.detach().abs().transpose(0, axis).reshape(weight.shape[axis], -1).amax(dim=1).numpy()


def test_equalized_layers_compute_the_same_with_equal_paired_ranges():
    model = BadlyScaled().eval()
    x = torch.randn(4, 3, 10, 10)
    gm = folded(model)
    notes = equalize_layers(gm, Equalization(max_iterations=100))
    assert "3 pair(s) of layers equalized" in notes[-1]  # conv1-dw, dw-conv3, fc1-fc2 (the mean is not a pool op)
    with torch.no_grad():
        expected, got = model(x), gm(x)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5 * float(expected.abs().max()))
    np.testing.assert_allclose(ranges(gm.conv1.weight, 0), ranges(gm.dw.weight, 0), rtol=1e-3)
    np.testing.assert_allclose(ranges(gm.dw.weight, 0), ranges(gm.conv3.weight, 1), rtol=1e-3)
    np.testing.assert_allclose(ranges(gm.fc1.weight, 0), ranges(gm.fc2.weight, 1), rtol=1e-5)


def test_relu6_pairs_are_left_alone_unless_asked():
    gm = folded(BadlyScaled(nn.ReLU6))
    before = gm.dw.weight.detach().clone()
    notes = equalize_layers(gm, Equalization())
    assert any("1 pair(s) joined through ReLU6 left as they are" in n for n in notes)
    # conv1-dw still equalizes (through ReLU), which rescales dw's input channels
    assert len(find_pairs(gm)) == 3 and not torch.equal(before, gm.dw.weight)
    relaxed = folded(BadlyScaled(nn.ReLU6))
    notes = equalize_layers(relaxed, Equalization(relu6="relu"))
    assert "3 pair(s) of layers equalized" in notes[-1] and "1 ReLU6 became ReLU" in notes[-1]
    assert not any(isinstance(m, nn.ReLU6) for m in relaxed.modules())


def quantized_sqnr(tmp_path, equalization, name: str) -> float:
    torch.manual_seed(0)  # the same net both times
    model = BadlyScaled().eval()
    g = torch.Generator().manual_seed(5)
    data = [torch.randn(4, 3, 10, 10, generator=g) for _ in range(8)]
    qmodel = rq_torch.quantize_model(model, data[0][:1], preset="npu_transformer", equalization=equalization)
    rq_torch.calibrate(qmodel, data, quiet=True)
    result = rq_torch.export_onnx(qmodel, data[0][:1], tmp_path / f"{name}.onnx")
    assert result.violations == []
    x = torch.randn(16, 3, 10, 10, generator=g)
    with torch.no_grad():
        expected = model(x).numpy().astype(np.float64)
    got = np.concatenate([run_ort(tmp_path / f"{name}.onnx", {"x": x[i : i + 1].numpy()}, as_written=True) for i in range(16)])
    return float(10 * np.log10((expected**2).sum() / ((got - expected) ** 2).sum())), result


def test_per_tensor_int8_export_comes_closer_to_float(tmp_path):
    plain, result = quantized_sqnr(tmp_path, False, "plain")
    assert not any("equaliz" in n for n in result.notes)
    equalized, result = quantized_sqnr(tmp_path, None, "equalized")  # the default for per-tensor weights
    assert equalized > plain + 6, (plain, equalized)  # 6 dB: a quarter of the error
    assert any("3 pair(s) of layers equalized" in n for n in result.notes)


def test_per_channel_weights_and_qat_batchnorm_are_not_equalized_by_default():
    example = torch.randn(1, 3, 10, 10)
    for kwargs in ({"preset": "cpu"}, {"preset": "npu_cnn", "freeze_bn_after": 10}):
        qmodel = rq_torch.quantize_model(BadlyScaled(), example, **kwargs)
        assert qmodel.rq_plan.notes == []
    assert "equaliz" in rq_torch.quantize_model(BadlyScaled(), example, preset="cpu", equalization=True).rq_plan.notes[-1]


def test_equalization_and_unfolded_batchnorm_are_refused_together():
    with pytest.raises(SpecError, match="use one of the two"):
        rq_torch.quantize_model(BadlyScaled(), torch.randn(1, 3, 10, 10), equalization=True, freeze_bn_after=10)
