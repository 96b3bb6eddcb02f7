"""quantize_to_target: rq_common's accuracy loop over rq-torch's options (no mixed precision: rq-torch
exports 8-bit activations), scored on held-out batches; where the recipes fall short, the user's
QAT loop fine-tunes the best model and the path says so."""

import pytest
import torch
from torch import nn

import rq_torch
from rq_common.errors import SpecError
from rq_common.pipeline.accuracy_loop import AccuracyTarget


def net():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(512, 4)
    )
    return model.eval()


def batches(n: int = 12):
    g = torch.Generator().manual_seed(1)
    return [torch.randn(4, 3, 8, 8, generator=g) for _ in range(n)]


def test_a_goal_the_defaults_reach_takes_one_attempt_and_no_fine_tuning():
    calls = []
    qmodel, loop = rq_torch.quantize_to_target(
        net(),
        torch.randn(1, 3, 8, 8),
        batches(),
        AccuracyTarget(max_drop=0.5, holdout=4),
        "npu_cnn",
        fine_tune=calls.append,
        quiet=True,
    )
    assert loop.reached and [a.recipe.label() for a in loop.attempts] == ["defaults"] and calls == []
    assert qmodel.rq_loop is loop


def test_an_unreachable_goal_tries_every_step_then_fine_tunes_the_best_model():
    model = net()
    tuned = []

    def fine_tune(qmodel):  # the user's QAT loop: distillation from the float model, a few steps
        tuned.append(qmodel)
        optimizer = torch.optim.Adam(rq_torch.weight_parameters(qmodel), lr=1e-3)
        qmodel.train()
        for x in batches(8):
            with torch.no_grad():
                teacher = model(x)
            optimizer.zero_grad()
            nn.functional.mse_loss(qmodel(x), teacher).backward()
            optimizer.step()

    qmodel, loop = rq_torch.quantize_to_target(
        model,
        torch.randn(1, 3, 8, 8),
        batches(),
        AccuracyTarget(score=1.1, holdout=4),
        "npu_transformer",
        fine_tune=fine_tune,
        quiet=True,
    )
    labels = [a.recipe.label() for a in loop.attempts]
    assert labels[0] == "defaults" and labels[-1].endswith("QAT") and tuned == [qmodel]
    tried = " ".join(labels)
    for step in ("activation_method=mse", "activation_method=percentile", "no equalization", "bias_correction", "adaround"):
        assert step in tried, labels
    assert "mixed_precision" not in tried  # rq-torch exports 8-bit activations
    assert "not reached after QAT too" in loop.notes()[0]


def test_too_few_batches_for_the_holdout_are_refused():
    with pytest.raises(SpecError, match="give more batches or a smaller holdout"):
        rq_torch.quantize_to_target(net(), torch.randn(1, 3, 8, 8), batches(4), AccuracyTarget(max_drop=0.1, holdout=4))
