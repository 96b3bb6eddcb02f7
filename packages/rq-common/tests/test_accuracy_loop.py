"""The accuracy loop: cheapest step first, only improvements kept, stop once the goal holds."""

from __future__ import annotations

import pytest

from rq_common.errors import SpecError
from rq_common.pipeline.accuracy_loop import AccuracyTarget, LoopResult, Recipe, Step, run_accuracy_loop
from rq_common.pipeline.mixed_precision import MixedPrecision
from rq_common.qmath.adaround import Rounding
from rq_common.spec import CalibrationMethod, get_preset


def scored(scores: dict[str, float]):
    """attempt(): each recipe's score by its label; the run's output is the label."""
    tried = []

    def attempt(recipe: Recipe):
        tried.append(recipe.label())
        return scores[recipe.label()], recipe.label()

    return attempt, tried


def test_improvements_build_on_each_other_and_the_loop_stops_at_the_goal():
    attempt, tried = scored(
        {
            "defaults": 0.80,
            "activation_method=mse": 0.85,
            "activation_method=percentile": 0.83,
            "activation_method=mse + bias_correction": 0.84,
            "activation_method=mse + adaround": 0.91,
            "activation_method=mse + adaround + mixed_precision": 0.99,
        }
    )
    result = run_accuracy_loop(AccuracyTarget(score=0.9), get_preset("cpu"), 1.0, attempt)
    assert tried == [
        "defaults",
        "activation_method=mse",
        "activation_method=percentile",
        "activation_method=mse + bias_correction",
        "activation_method=mse + adaround",
    ]  # 0.91 >= 0.9: mixed precision is never tried
    assert result.reached and result.output == "activation_method=mse + adaround" and result.score == 0.91
    assert result.recipe == Recipe(activation_method=CalibrationMethod.MSE, rounding=Rounding.ADAROUND)
    assert [a.kept for a in result.attempts] == [True, True, False, False, True]
    assert result.notes()[0].startswith("accuracy loop: activation_method=mse + adaround scores 0.9100; goal 0.9000 reached")


def test_a_goal_that_holds_at_once_costs_one_attempt_and_max_drop_is_from_floats_score():
    attempt, tried = scored({"defaults": 0.75})
    result = run_accuracy_loop(AccuracyTarget(max_drop=0.05), get_preset("cpu"), 0.78, attempt)
    assert tried == ["defaults"] and result.goal == pytest.approx(0.73) and result.reached


def test_the_steps_follow_the_preset_and_the_best_is_kept_when_nothing_reaches():
    attempt, tried = scored(
        {
            "defaults": 0.5,
            "activation_method=pot_nonoverflow": 0.4,
            "weight_method=pot_minmse": 0.42,
            "no equalization": 0.45,
            "bias_correction": 0.6,
            "bias_correction + adaround": 0.55,
        }
    )
    result = run_accuracy_loop(AccuracyTarget(score=0.99), get_preset("npu_cnn"), 1.0, attempt)
    # power-of-two ranges only (the weights' other chooser too), equalization's other choice (on by default for per-tensor weights),
    # and no mixed precision: the NPU's CNN path runs no 16-bit activations
    assert tried == [
        "defaults",
        "activation_method=pot_nonoverflow",
        "weight_method=pot_minmse",
        "no equalization",
        "bias_correction",
        "bias_correction + adaround",
    ]
    assert not result.reached and result.recipe == Recipe(bias_correction=True) and result.score == 0.6
    assert "not reached (fine-tuning with QAT is the next step)" in result.notes()[0]


def test_mixed_precision_aims_at_the_loops_goal_where_it_scores_the_same_way():
    def task_metric(outputs, reference):
        return 0.0

    attempt, tried = scored({"defaults": 0.5, "mixed_precision": 0.95})
    target = AccuracyTarget(score=0.9, steps=(Step.MIXED_PRECISION,))
    result = run_accuracy_loop(target, get_preset("npu_transformer"), 1.0, attempt)
    assert tried == ["defaults", "mixed_precision"] and result.recipe.mixed_precision == MixedPrecision(target=0.9)
    # a task metric needs the held-out batches' labels: the search keeps agreement at its default
    target = AccuracyTarget(score=0.9, metric=task_metric, steps=(Step.MIXED_PRECISION,))
    assert run_accuracy_loop(target, get_preset("npu_transformer"), 1.0, attempt).recipe.mixed_precision == MixedPrecision()


def test_a_target_says_what_is_wrong_with_it():
    for bad in ({}, {"score": 0.9, "max_drop": 0.01}, {"max_drop": -1.0}, {"score": 0.9, "holdout": 0}):
        with pytest.raises(SpecError):
            AccuracyTarget(**bad)
    with pytest.raises(SpecError, match="each step is one of ranges, equalization, bias_correction, adaround, mixed_precision"):
        AccuracyTarget(score=0.9, steps=("smoothquant",))


def test_a_fine_tuned_recipe_says_so():
    fine_tuned = Recipe(bias_correction=True, fine_tuned=True)
    assert fine_tuned.label() == "bias_correction + QAT"
    result = LoopResult(fine_tuned, 0.5, 0.9)
    assert result.notes()[0] == "accuracy loop: bias_correction + QAT scores 0.5000; goal 0.9000 not reached after QAT too"


def test_a_recipe_gives_the_preset_with_its_range_choosers():
    preset = Recipe(activation_method=CalibrationMethod.POT_NONOVERFLOW, weight_method=CalibrationMethod.POT_MINMSE).preset_for(
        get_preset("npu_cnn")
    )
    assert (preset.activation_method, preset.weight_method) == (CalibrationMethod.POT_NONOVERFLOW, CalibrationMethod.POT_MINMSE)
    assert Recipe().preset_for(get_preset("cpu")) is get_preset("cpu")
