"""The accuracy loop in rq-tf2: rq_common's loop over rq-tf2's options, ending in QAT with fit().

The batches (a list: arrays, or tuples of arrays for several inputs) are split once: the last
``target.holdout`` are scored and never calibrated on. Each attempt is a fresh quantize_model with
the recipe's range chooser and equalization, calibrated on the rest, scored by the target's metric
on the held-out batches against the float model (rq-tf2 has no bias correction, adaptive rounding
or 16-bit activations yet: those steps are left out). Where no recipe reaches the goal and
``fine_tune`` is given, the best model is handed to it (``compile()`` + ``fit()`` for a few epochs;
``rq_tf2.pre_activation`` for a model ending in Softmax) and scored again.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import keras
import numpy as np

from rq_common.pipeline.accuracy_loop import (
    AccuracyTarget,
    LoopResult,
    Recipe,
    Step,
    finish_with_qat,
    run_accuracy_loop,
    split_holdout,
)
from rq_common.spec import Preset, get_preset
from rq_tf2.transform import quantize_model

STEPS = (Step.RANGES, Step.EQUALIZATION)  # what rq-tf2 offers of the loop's steps


def _outputs(model: keras.Model, batches: Sequence) -> list[list[np.ndarray]]:
    found = []
    for batch in batches:
        out = model(list(batch) if isinstance(batch, tuple) else batch, training=False)
        found.append([np.asarray(t) for t in (out if isinstance(out, (list, tuple)) else [out])])
    return found


def quantize_to_target(
    model: keras.Model,
    data: Sequence,
    target: AccuracyTarget,
    preset: str | Preset = "npu_cnn",
    *,
    fine_tune: Callable[[keras.Model], None] | None = None,
    quiet: bool = False,
    **quantize_options: Any,
) -> tuple[keras.Model, LoopResult]:
    """The best quantized model the loop found (calibrated, or fine-tuned by ``fine_tune`` where the
    recipes fell short) and the loop's path (``result.notes()``). ``quantize_options``:
    quantize_model's other keywords (exclude_nodes, layer_configs, input_shape, ...)."""
    preset = get_preset(preset)
    calibration, held_out = split_holdout(list(data), target.holdout)
    target = target.limited_to(STEPS)
    metric = target.scorer
    reference = _outputs(model, held_out)

    def attempt(recipe: Recipe) -> tuple[float, keras.Model]:
        qmodel = quantize_model(
            model,
            recipe.preset_for(preset),
            equalization=recipe.equalization,
            calib_dataset=calibration,
            quiet=quiet,
            **quantize_options,
        )
        return metric(_outputs(qmodel, held_out), reference), qmodel

    loop = run_accuracy_loop(target, preset, metric(reference, reference), attempt)
    finish_with_qat(loop, fine_tune, lambda qmodel: metric(_outputs(qmodel, held_out), reference))
    return loop.output, loop
