"""Every Quant layer and functional-op module, exported in the format and matching ONNX Runtime."""

import numpy as np
import pytest
import torch
from torch import nn

import rq_torch
from rq_common.cpu_features import u8s8_kernels_may_saturate

from conftest import output_step, run_ort


class Layers(nn.Module):
    """Conv1d, ConvTranspose2d, Linear on 2-d inputs and the functional-op modules."""

    def __init__(self):
        super().__init__()
        self.conv1d = nn.Conv1d(4, 8, 3, padding=1)
        self.up = nn.ConvTranspose2d(2, 4, 2, stride=2)
        self.add, self.mul, self.cat, self.matmul = rq_torch.Add(), rq_torch.Mul(), rq_torch.Cat(dim=1), rq_torch.MatMul()
        self.fc = nn.Linear(8 * 8 + 4 * 8 * 8, 6)

    def forward(self, x):
        seq = torch.relu(self.conv1d(x))  # (N, 8, 8)
        image = self.up(x.reshape(-1, 2, 4, 4))  # (N, 4, 8, 8)
        mixed = self.add(self.mul(seq, seq), self.matmul(seq, torch.ones(8, 8) * 0.125))
        return self.fc(self.cat(torch.flatten(mixed, 1), torch.flatten(image, 1)))


@pytest.mark.parametrize("preset", ["npu_cnn", "npu_transformer", "cpu"])
def test_layers_export_and_match(tmp_path, preset):
    model = Layers().eval()
    example = torch.randn(1, 4, 8)
    qmodel = rq_torch.quantize_model(model, example, preset=preset)
    kinds = {type(m) for m in qmodel.modules()}
    assert {rq_torch.QuantConv1d, rq_torch.QuantConvTranspose2d, rq_torch.QuantLinear} <= kinds
    rq_torch.calibrate(qmodel, [torch.randn(1, 4, 8) for _ in range(16)], quiet=True)
    result = rq_torch.export_onnx(qmodel, example, tmp_path / "layers.onnx")
    assert result.violations == []
    step = output_step(tmp_path / "layers.onnx")
    for _ in range(8):
        x = torch.randn(1, 4, 8)
        with torch.no_grad():
            expected = qmodel(x).numpy()
        # as written where ORT's u8s8 kernels can saturate (x86 without VNNI: rq_common.cpu_features)
        got = run_ort(tmp_path / "layers.onnx", {"x": x.numpy()}, as_written=u8s8_kernels_may_saturate())
        assert np.max(np.abs(got - expected)) <= step * 1.0001


class SpatialMeans(nn.Module):
    """A global pooling written as a mean over H and W, as a function and as a method."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        y = torch.relu(self.conv(x))
        return self.fc(torch.mean(y, dim=[-2, -1])) + self.fc(y.mean((2, 3), keepdim=True).flatten(1))


@pytest.mark.parametrize("preset", ["npu_cnn", "cpu"])
def test_mean_over_the_spatial_dims_is_a_quantized_reduce_mean(tmp_path, preset):
    import warnings

    import onnx

    from rq_common.format import validate

    example = torch.randn(1, 3, 8, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing stays in float
        qmodel = rq_torch.quantize_model(SpatialMeans().eval(), example, preset=preset)
    assert qmodel.rq_plan.float_ops == []
    assert {"mean", "mean_1"} <= set(qmodel.rq_plan.quantized_ops)
    rq_torch.calibrate(qmodel, [torch.randn(1, 3, 8, 8) for _ in range(8)], quiet=True)
    path = tmp_path / "means.onnx"
    result = rq_torch.export_onnx(qmodel, example, path)
    assert result.violations == [] and validate(path, preset) == []
    written = onnx.load(str(path))
    means = [n for n in written.graph.node if n.op_type == "ReduceMean"]
    producers = {out: n for n in written.graph.node for out in n.output}
    readers = {i: n for n in written.graph.node for i in n.input}
    assert len(means) == 2
    for node in means:  # a Q/DQ pair before and after each, as rq-onnx writes it
        assert producers[node.input[0]].op_type == "DequantizeLinear"
        assert readers[node.output[0]].op_type == "QuantizeLinear"
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        expected = qmodel(x).numpy()
    np.testing.assert_array_equal(run_ort(path, {"x": x.numpy()}, as_written=True), expected)
