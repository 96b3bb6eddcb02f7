"""calibrate(rounding="adaround"): the patches rq-torch takes a layer's moments from, times the
weight's rows, are the layer's own output (torch's conv); every rounded weight sits at floor or ceil
of W / s; and the model's output comes closer to float than with nearest rounding."""

import numpy as np
import pytest
import torch
from torch import nn

import rq_torch
from rq_common.qmath import quantize
from rq_torch.adaround import patches

CONVS = [
    dict(in_channels=4, out_channels=6, kernel_size=3, padding=1),
    dict(in_channels=4, out_channels=6, kernel_size=3, groups=2, stride=2, padding=(1, 0), dilation=(1, 2)),
    dict(in_channels=6, out_channels=6, kernel_size=3, groups=6, padding="same"),
    dict(in_channels=8, out_channels=5, kernel_size=1),
]


@pytest.mark.parametrize("config", CONVS)
def test_patches_times_the_weight_rows_are_the_convs_output(config):
    torch.manual_seed(0)
    conv = nn.Conv2d(bias=False, **config)
    x = torch.randn(2, config["in_channels"], 9, 11)
    with torch.no_grad():
        expected = conv(x)
    got = patches(conv, x)  # (groups, N * positions, K), positions every n-th: all of them here
    groups = conv.groups
    rows = conv.weight.detach().reshape(groups, conv.out_channels // groups, -1)
    out = torch.matmul(got, rows.transpose(1, 2))  # (groups, N * positions, O / groups)
    out = out.reshape(groups, 2, *expected.shape[2:], -1).permute(1, 0, 4, 2, 3).reshape(expected.shape)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)


def net():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 8 * 8, 4)
    ).eval()


def test_rounded_weights_sit_at_floor_or_ceil_and_the_output_comes_closer_to_float():
    g = torch.Generator().manual_seed(1)
    data = [torch.randn(8, 3, 8, 8, generator=g) for _ in range(8)]
    x = torch.randn(32, 3, 8, 8, generator=g)
    model = net()
    with torch.no_grad():
        reference = model(x).numpy().astype(np.float64)
    errors = {}
    for rounding in ("nearest", "adaround"):
        qmodel = rq_torch.quantize_model(model, data[0][:1], preset="npu_transformer", equalization=False)
        rq_torch.calibrate(qmodel, data, quiet=True, rounding=rounding)
        with torch.no_grad():
            errors[rounding] = float(((qmodel(x).numpy() - reference) ** 2).mean())
        if rounding == "adaround":
            for name in ("0", "2", "5"):
                layer, float_layer = qmodel.get_submodule(name), model.get_submodule(name)
                qparams = layer.weight_quantizer.qparams()
                ratio = float_layer.weight.detach().numpy().astype(np.float64) / float(qparams.scale)
                q = quantize(layer.weight.detach().numpy(), qparams).astype(np.float64)
                assert np.all((q == np.floor(ratio)) | (q == np.ceil(ratio)) | (np.abs(q) == 127)), name
                # the float weight is the rounded one: quantizing it again gives exactly q
                np.testing.assert_allclose(layer.weight.detach().numpy(), q * float(qparams.scale), rtol=1e-6)
    assert errors["adaround"] < errors["nearest"], errors
