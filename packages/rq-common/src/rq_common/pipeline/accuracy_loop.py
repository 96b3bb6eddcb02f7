"""The accuracy loop made automatic: PTQ, accuracy OK? else improve, in increasing cost.

Framework-neutral: a ``Recipe`` is the options one quantization run takes (range chooser, bias
correction, rounding, mixed precision); each ``Step`` proposes recipes built on the best one so
far; the package's ``attempt(recipe)`` quantizes and scores the result. A proposal is kept only
where it scores higher, and the loop stops as soon as the goal holds. The path (each attempt, its
score, time and whether it was kept) is what the user reads to know what helped.

Order, cheapest first (measured on the zoo: docs/pipeline.md): the other range choosers of the
preset's scale type (one more calibration each), cross-layer equalization for per-tensor weights
(a few array operations and one more calibration), bias correction (the same), adaptive rounding
(minutes on a transformer), mixed precision (one trial per activation group; slower on the CPU).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Any

from rq_common.errors import SpecError
from rq_common.pipeline.mixed_precision import Metric, MixedPrecision, output_agreement
from rq_common.qmath.adaround import Rounding
from rq_common.qmath.equalization import Equalization, resolve_equalization
from rq_common.spec import CalibrationMethod, Preset, widened_activation


@dataclass(frozen=True, kw_only=True)  # by name: new options must not shift the old ones
class Recipe:
    """One quantization run's accuracy options (None / False / nearest: the preset's defaults)."""

    activation_method: CalibrationMethod | None = None
    weight_method: CalibrationMethod | None = None
    equalization: Equalization | bool | None = None  # None: the preset's default (resolve_equalization)
    bias_correction: bool = False
    rounding: Rounding = Rounding.NEAREST
    mixed_precision: MixedPrecision | None = None
    fine_tuned: bool = False  # QAT after the rest (the framework packages' last step, the user's loop)

    def preset_for(self, preset: Preset) -> Preset:
        """``preset`` with this recipe's range choosers."""
        methods = {"activation_method": self.activation_method, "weight_method": self.weight_method}
        changes = {key: method for key, method in methods.items() if method is not None}
        return preset.override(**changes) if changes else preset

    def label(self) -> str:
        parts = [f"activation_method={self.activation_method.value}"] if self.activation_method else []
        parts += [f"weight_method={self.weight_method.value}"] if self.weight_method else []
        parts += [] if self.equalization is None else ["equalization" if self.equalization else "no equalization"]
        parts += ["bias_correction"] if self.bias_correction else []
        parts += [self.rounding.value] if self.rounding is not Rounding.NEAREST else []
        parts += ["mixed_precision"] if self.mixed_precision else []
        parts += ["QAT"] if self.fine_tuned else []
        return " + ".join(parts) or "defaults"


class Step(str, Enum):
    RANGES = "ranges"  # the preset's scale type's other range choosers, each in turn (power-of-two weights' too)
    EQUALIZATION = "equalization"  # where weights are per tensor: the other choice than the recipe's
    BIAS_CORRECTION = "bias_correction"
    ADAROUND = "adaround"
    MIXED_PRECISION = "mixed_precision"  # where the target runs 16-bit activations


STEPS: tuple[Step, ...] = (Step.RANGES, Step.EQUALIZATION, Step.BIAS_CORRECTION, Step.ADAROUND, Step.MIXED_PRECISION)
FLOAT_RANGES = (CalibrationMethod.MSE, CalibrationMethod.PERCENTILE)
POWER_OF_TWO_RANGES = (CalibrationMethod.POT_MINMSE, CalibrationMethod.POT_NONOVERFLOW)


@dataclass(frozen=True)
class AccuracyTarget:
    """When a quantized model is good enough, and how it is scored.

    score: the metric's value to reach; or max_drop: at most this far below the float model's own
    score (the default metric, output agreement with float, scores float 1.0). metric: scores the
    outputs on the held-out batches against float's (``Metric``); None: mean cosine agreement.
    holdout: the reader's last batches scored and not calibrated on. steps: what the loop may try.
    """

    score: float | None = None
    max_drop: float | None = None
    metric: Metric | None = None
    holdout: int = 8
    steps: tuple[Step, ...] = STEPS

    def __post_init__(self) -> None:
        if (self.score is None) == (self.max_drop is None):
            raise SpecError("target", "give the score to reach or the largest drop from float, one of the two")
        if self.max_drop is not None and self.max_drop < 0:
            raise SpecError("target.max_drop", f"{self.max_drop} is negative")
        if self.holdout < 1:
            raise SpecError("target.holdout", f"{self.holdout} batches: at least one batch is needed to score on")
        try:
            object.__setattr__(self, "steps", tuple(Step(s) for s in self.steps))
        except ValueError:
            choices = ", ".join(s.value for s in Step)
            raise SpecError("target.steps", f"{list(self.steps)}: each step is one of {choices}") from None

    @property
    def scorer(self) -> Metric:
        """The metric the loop scores with: the user's, else output agreement with float."""
        return self.metric or output_agreement

    def limited_to(self, offered: tuple[Step, ...]) -> AccuracyTarget:
        """This target with only the steps a package offers."""
        return replace(self, steps=tuple(s for s in self.steps if s in offered))

    def goal(self, float_score: float) -> float:
        return self.score if self.score is not None else float_score - self.max_drop

    def mixed_precision(self, goal: float) -> MixedPrecision:
        """Mixed precision's own search scores its trials on calibration batches, where a task
        metric (labels of the held-out batches) cannot run: output agreement, aimed at the loop's
        goal where that is the loop's metric too, else at its default; the loop keeps the result
        only where the task metric says it helps."""
        return MixedPrecision(target=goal) if self.metric is None else MixedPrecision()


@dataclass
class Attempt:
    recipe: Recipe
    score: float
    seconds: float
    kept: bool


@dataclass
class LoopResult:
    """The best recipe, its score, the goal, every attempt in order and the best attempt's output."""

    recipe: Recipe
    score: float
    goal: float
    attempts: list[Attempt] = field(default_factory=list)
    output: Any = None

    @property
    def reached(self) -> bool:
        return self.score >= self.goal

    def notes(self) -> list[str]:
        next_step = "after QAT too" if self.recipe.fine_tuned else "(fine-tuning with QAT is the next step)"
        outcome = "reached" if self.reached else f"not reached {next_step}"
        lines = [f"accuracy loop: {self.recipe.label()} scores {self.score:.4f}; goal {self.goal:.4f} {outcome}"]
        lines += [
            f"accuracy loop: {a.recipe.label()}: {a.score:.4f} in {a.seconds:.1f} s" + (" (kept)" if a.kept else "")
            for a in self.attempts
        ]
        return lines


def proposals(step: Step, recipe: Recipe, preset: Preset, target: AccuracyTarget, goal: float) -> Iterator[Recipe]:
    """The recipes ``step`` tries on top of ``recipe`` (none where it does not apply to the preset)."""
    if step is Step.RANGES:
        choosers = POWER_OF_TWO_RANGES if preset.activation.power_of_two else FLOAT_RANGES
        yield from (replace(recipe, activation_method=m) for m in choosers if m is not preset.activation_method)
        if (
            preset.weight.power_of_two and not preset.weight.per_channel
        ):  # float-scale error-chosen weights lose (docs/calibration.md)
            yield from (replace(recipe, weight_method=m) for m in POWER_OF_TWO_RANGES if m is not preset.weight_method)
    elif step is Step.EQUALIZATION and not preset.weight.per_channel:
        yield replace(recipe, equalization=resolve_equalization(recipe.equalization, True) is None)
    elif step is Step.BIAS_CORRECTION and not recipe.bias_correction:
        yield replace(recipe, bias_correction=True)
    elif step is Step.ADAROUND and recipe.rounding is Rounding.NEAREST:
        yield replace(recipe, rounding=Rounding.ADAROUND)
    elif step is Step.MIXED_PRECISION and recipe.mixed_precision is None and widened_activation(preset) is not None:
        yield replace(recipe, mixed_precision=target.mixed_precision(goal))


def run_accuracy_loop(
    target: AccuracyTarget,
    preset: Preset,
    float_score: float,
    attempt: Callable[[Recipe], tuple[float, Any]],
    start: Recipe = Recipe(),
) -> LoopResult:
    """Quantize with ``start``; while the goal does not hold, try each step's proposals on the best
    recipe so far and keep what scores higher. ``attempt(recipe)`` -> (score, the run's output)."""
    goal = target.goal(float_score)

    def timed(recipe: Recipe) -> tuple[float, Any, float]:
        began = time.perf_counter()
        score, output = attempt(recipe)
        return score, output, time.perf_counter() - began

    score, output, seconds = timed(start)
    result = LoopResult(start, score, goal, [Attempt(start, score, seconds, True)], output)
    for step in target.steps:
        for recipe in proposals(step, result.recipe, preset, target, goal):
            if result.reached:
                return result
            score, output, seconds = timed(recipe)
            kept = score > result.score
            result.attempts.append(Attempt(recipe, score, seconds, kept))
            if kept:
                result.recipe, result.score, result.output = recipe, score, output
    return result


def split_holdout(batches: list, holdout: int) -> tuple[list, list]:
    """(the batches to calibrate on, the last ``holdout`` to score on); a clear error for too few."""
    if len(batches) <= holdout:
        raise SpecError(
            "target.holdout",
            f"{len(batches)} batch(es) given; the accuracy loop scores on the last {holdout} and calibrates on the rest: "
            "give more batches or a smaller holdout",
        )
    return batches[:-holdout], batches[-holdout:]


def finish_with_qat(loop: LoopResult, fine_tune: Callable[[Any], None] | None, score: Callable[[Any], float]) -> None:
    """The framework packages' last step: where no recipe reached the goal and ``fine_tune`` (the
    user's QAT loop) is given, it trains the best model, which is scored again; the path says so."""
    if loop.reached or fine_tune is None:
        return
    began = time.perf_counter()
    fine_tune(loop.output)
    loop.recipe, loop.score = replace(loop.recipe, fine_tuned=True), score(loop.output)
    loop.attempts.append(Attempt(loop.recipe, loop.score, time.perf_counter() - began, True))
