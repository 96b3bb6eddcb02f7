"""quantize_to_target: rq_common's accuracy loop over rq-tf2's options (range choosers, equalization),
scored on held-out batches; where they fall short, fit() in the user's fine_tune, and the path says so."""

import keras
import numpy as np
import pytest

import rq_tf2
from rq_common.errors import SpecError
from rq_common.pipeline.accuracy_loop import AccuracyTarget

L = keras.layers


def net() -> keras.Model:
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 3))
    x = L.Conv2D(8, 3, padding="same", activation="relu")(inputs)
    x = L.Conv2D(8, 3, padding="same", activation="relu")(x)
    return keras.Model(inputs, L.Dense(4)(L.Flatten()(x)))


def batches(n: int = 12):
    rng = np.random.default_rng(1)
    return [rng.standard_normal((4, 8, 8, 3)).astype(np.float32) for _ in range(n)]


def test_a_goal_the_defaults_reach_takes_one_attempt():
    calls = []
    _, loop = rq_tf2.quantize_to_target(
        net(), batches(), AccuracyTarget(max_drop=0.5, holdout=4), fine_tune=calls.append, quiet=True
    )
    assert loop.reached and [a.recipe.label() for a in loop.attempts] == ["defaults"] and calls == []


def test_an_unreachable_goal_tries_the_steps_then_fits_the_best_model():
    model = net()
    tuned = []

    def fine_tune(qmodel):  # the user's QAT: distillation from the float model with fit()
        tuned.append(qmodel)
        x = np.concatenate(batches(8))
        qmodel.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
        qmodel.fit(x, model.predict(x, verbose=0), epochs=1, batch_size=8, verbose=0)

    qmodel, loop = rq_tf2.quantize_to_target(
        model, batches(), AccuracyTarget(score=1.1, holdout=4), "npu_cnn", fine_tune=fine_tune, quiet=True
    )
    labels = [a.recipe.label() for a in loop.attempts]
    assert labels[:4] == ["defaults", "activation_method=pot_nonoverflow", "weight_method=pot_minmse", "no equalization"], labels
    assert labels[-1].endswith("QAT") and tuned == [qmodel] and len(labels) == 5
    assert "not reached after QAT too" in loop.notes()[0]


def test_too_few_batches_for_the_holdout_are_refused():
    with pytest.raises(SpecError, match="give more batches or a smaller holdout"):
        rq_tf2.quantize_to_target(net(), batches(4), AccuracyTarget(max_drop=0.1, holdout=4))
