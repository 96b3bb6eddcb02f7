"""calibrate(bias_correction=True): each bias becomes b - (W_q - W) E[x] (a numpy reference of
Nagel et al. 2019's empirical bias correction on the layer's own input), and the model's output
mean comes closer to float's."""

import numpy as np
import torch
from torch import nn

import rq_torch
from rq_common.qmath import fake_quantize


def conv_then_linear():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 6, 3), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 6 * 6, 4)).eval()
    with torch.no_grad():
        model[0].weight[0] *= 0.005  # a narrow channel beside wide ones: per-tensor weights round it coarsely
    return model


def test_each_bias_is_corrected_by_its_weights_rounding_error_times_its_input_mean():
    model = conv_then_linear()
    g = torch.Generator().manual_seed(1)
    data = [torch.randn(4, 3, 8, 8, generator=g) + 0.5 for _ in range(4)]
    qmodel = rq_torch.quantize_model(model, data[0][:1], preset="npu_transformer", equalization=False)
    rq_torch.calibrate(qmodel, data, quiet=True, bias_correction=True)
    x = torch.cat(data).double()
    with torch.no_grad():
        inputs = {"0": x, "3": torch.flatten(torch.relu(model[0](x.float())), 1).double()}  # each layer's float input
    for name, axis in (("0", 1), ("3", 1)):
        layer, float_layer = qmodel.get_submodule(name), model.get_submodule(name)
        weight = float_layer.weight.detach().numpy().astype(np.float64)
        quantized = fake_quantize(weight, layer.weight_quantizer.qparams()).astype(np.float64)
        mean = inputs[name].transpose(0, axis).reshape(inputs[name].shape[axis], -1).mean(dim=1).numpy()
        shape = (1, -1, 1, 1) if weight.ndim == 4 else (1, -1)
        expected = float_layer.bias.detach().numpy() - ((quantized - weight) * mean.reshape(shape)).reshape(len(weight), -1).sum(
            1
        )
        np.testing.assert_allclose(layer.bias.detach().numpy(), expected, rtol=1e-5, atol=1e-6)


def test_the_output_mean_comes_closer_to_floats():
    model = conv_then_linear()
    g = torch.Generator().manual_seed(2)
    data = [torch.randn(8, 3, 8, 8, generator=g) + 2.0 for _ in range(8)]  # inputs with a mean: the error shows in the output's
    x = torch.randn(64, 3, 8, 8, generator=g) + 2.0
    with torch.no_grad():
        reference = model(x).mean(0)
    errors = {}
    for correct in (False, True):
        qmodel = rq_torch.quantize_model(model, data[0][:1], preset="npu_transformer", equalization=False)
        rq_torch.calibrate(qmodel, data, quiet=True, bias_correction=correct)
        with torch.no_grad():
            errors[correct] = float((qmodel(x).mean(0) - reference).abs().mean())
    assert errors[True] < errors[False] / 2, errors
