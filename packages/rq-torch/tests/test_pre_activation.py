"""pre_activation(qmodel): a view that returns the logits before the final Softmax / Sigmoid,
sharing qmodel's parameters, so QAT can use a loss on logits and export the model as it is."""

import numpy as np
import pytest
import torch
from torch import nn

import rq_torch
from rq_common.errors import SpecError
from rq_common.qmath import fake_quantize


class Classifier(nn.Module):
    def __init__(self, final: nn.Module):
        super().__init__()
        self.conv, self.fc, self.final = nn.Conv2d(1, 4, 3), nn.Linear(4 * 6 * 6, 5), final

    def forward(self, x):
        return self.final(self.fc(torch.flatten(torch.relu(self.conv(x)), 1)))


def calibrated(final: nn.Module, preset: str = "npu_transformer"):
    torch.manual_seed(0)
    qmodel = rq_torch.quantize_model(Classifier(final).eval(), torch.randn(1, 1, 8, 8), preset=preset)
    rq_torch.calibrate(qmodel, [torch.randn(4, 1, 8, 8) for _ in range(4)], quiet=True)
    return qmodel


@pytest.mark.parametrize("final,activation", [(nn.Softmax(dim=1), lambda z: torch.softmax(z, 1)), (nn.Sigmoid(), torch.sigmoid)])
def test_the_view_gives_the_logits_the_model_applies_its_final_activation_to(final, activation):
    qmodel = calibrated(final)
    view = rq_torch.pre_activation(qmodel)
    x = torch.randn(6, 1, 8, 8)
    with torch.no_grad():
        logits, probabilities = view(x), qmodel(x)
    assert not torch.allclose(logits, probabilities)
    output = next(n for n in qmodel.graph.nodes if n.op == "output").args[0]  # the final activation's quantizer
    qparams = qmodel.get_submodule(output.target).qparams()
    # qmodel's output: those logits' activation, quantized (a tie may round the other way: one step)
    expected = fake_quantize(activation(logits).numpy(), qparams)
    assert float(np.abs(expected - probabilities.numpy()).max()) <= float(qparams.scale) + 1e-6


def test_training_the_view_trains_the_model():
    qmodel = calibrated(nn.Softmax(dim=1))
    view = rq_torch.pre_activation(qmodel)
    before = qmodel.fc.weight.detach().clone()
    optimizer = torch.optim.SGD(rq_torch.weight_parameters(view), lr=0.1)
    view.train()
    loss = nn.functional.cross_entropy(view(torch.randn(8, 1, 8, 8)), torch.randint(0, 5, (8,)))
    loss.backward()
    optimizer.step()
    assert not torch.equal(before, qmodel.fc.weight)  # the same parameters


def test_a_model_without_a_final_activation_is_refused():
    with pytest.raises(SpecError, match="end in no Softmax or Sigmoid"):
        rq_torch.pre_activation(calibrated(nn.Identity()))
