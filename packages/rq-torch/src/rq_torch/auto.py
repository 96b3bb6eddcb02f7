"""The accuracy loop in rq-torch: rq_common's loop over rq-torch's options, ending in QAT.

The user's flow (PTQ, accuracy OK?, else improve, else fine-tune) as one call. The batches are
split once: the last ``target.holdout`` are scored and never calibrated on. Each attempt is a
fresh quantize_model + calibrate with the recipe's options (range chooser, equalization, bias
correction, adaptive rounding; rq-torch exports 8-bit activations, so no mixed precision), scored
by the target's metric on the held-out batches against the float model. Where no recipe reaches
the goal and ``fine_tune`` is given, the best model is handed to it (the user's own QAT loop: a
few epochs, ``rq_torch.pre_activation`` for a model ending in Softmax) and scored again.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import fx, nn

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
from rq_torch.calibrate import _inputs, calibrate
from rq_torch.transform import quantize_model

STEPS = tuple(step for step in Step if step is not Step.MIXED_PRECISION)  # 8-bit activations only


def _outputs(model: nn.Module, batches: Sequence, input_count: int) -> list[list[np.ndarray]]:
    """Each batch's outputs as numpy arrays (the model in eval mode, no gradients)."""
    model.eval()
    found = []
    with torch.no_grad():
        for batch in batches:
            out = model(**batch) if isinstance(batch, dict) else model(*_inputs(batch, input_count))
            found.append([t.detach().cpu().numpy() for t in (out if isinstance(out, (tuple, list)) else (out,))])
    return found


def quantize_to_target(
    model: nn.Module,
    example_inputs: Any,
    data: Sequence,
    target: AccuracyTarget,
    preset: str | Preset = "npu_cnn",
    *,
    fine_tune: Callable[[fx.GraphModule], None] | None = None,
    quiet: bool = False,
    **quantize_options: Any,
) -> tuple[fx.GraphModule, LoopResult]:
    """The best quantized model the loop found (calibrated, or fine-tuned by ``fine_tune`` where the
    recipes fell short) and the loop's path (``result.notes()``: every attempt, score and time).
    ``data``: the calibration batches, a list (the last ``target.holdout`` are held out);
    ``quantize_options``: quantize_model's other keywords (leaf_modules, exclude_nodes, ...)."""
    preset = get_preset(preset)
    calibration, held_out = split_holdout(list(data), target.holdout)
    target = target.limited_to(STEPS)
    input_count = len(example_inputs) if isinstance(example_inputs, tuple) else 1
    metric = target.scorer
    reference = _outputs(model, held_out, input_count)

    def attempt(recipe: Recipe) -> tuple[float, fx.GraphModule]:
        qmodel = quantize_model(
            model, example_inputs, recipe.preset_for(preset), equalization=recipe.equalization, **quantize_options
        )
        calibrate(qmodel, calibration, quiet=quiet, bias_correction=recipe.bias_correction, rounding=recipe.rounding)
        return metric(_outputs(qmodel, held_out, input_count), reference), qmodel

    loop = run_accuracy_loop(target, preset, metric(reference, reference), attempt)
    finish_with_qat(loop, fine_tune, lambda qmodel: metric(_outputs(qmodel, held_out, input_count), reference))
    loop.output.rq_loop = loop
    return loop.output, loop
