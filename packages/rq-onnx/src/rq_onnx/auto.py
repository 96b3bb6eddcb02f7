"""quantize_static(target=...): rq_common's accuracy loop, each attempt one rq-onnx run.

The reader's batches are read once; the last ``target.holdout`` are scored and never calibrated
on, the rest calibrate every attempt. The best attempt's model is written (when it passes the
format check, as every rq-onnx model), with the loop's path in its notes.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import onnx

from rq_common.format import require_valid
from rq_common.pipeline import QuantizeResult
from rq_common.pipeline.accuracy_loop import AccuracyTarget, Recipe, run_accuracy_loop, split_holdout
from rq_common.spec import Preset
from rq_onnx.calibrate import CalibrationDataReader, batches, check_feed, make_session
from rq_onnx.precision import run_all
from rq_onnx.prepare import load_model
from rq_onnx.readers import FeedListReader


def quantize_to_target(
    model_input: str | Path | onnx.ModelProto,
    model_output: str | Path | None,
    reader: CalibrationDataReader,
    preset: Preset,
    target: AccuracyTarget,
    start: Recipe,
    max_batches: int | None,
    allow_violations: bool,
    run_options: dict[str, Any],
) -> QuantizeResult:
    """The accuracy loop over rq-onnx runs (``run_options``: quantize_static's other keywords)."""
    from rq_onnx.api import quantize_static, save_model

    model = load_model(model_input)
    calibration, held_out = split_holdout(list(batches(reader, max_batches)), target.holdout)
    inputs = make_session(model).get_inputs()
    held_out = [check_feed(feed, inputs, number) for number, feed in enumerate(held_out, start=1)]
    if preset.target.fixed_point_rules:  # the NPU's models take batch 1 (rq_onnx.write.fix_batch_to_one)
        held_out = [
            {name: value[i : i + 1] for name, value in feed.items()}
            for feed in held_out
            for i in range(len(next(iter(feed.values()))))
        ]
    metric = target.scorer
    float_outputs = run_all(model, held_out)

    def attempt(recipe: Recipe) -> tuple[float, QuantizeResult]:
        result = quantize_static(
            model,
            None,
            FeedListReader(calibration),
            recipe.preset_for(preset),
            equalization=recipe.equalization,
            bias_correction=recipe.bias_correction,
            rounding=recipe.rounding,
            mixed_precision=recipe.mixed_precision,
            allow_violations=True,  # checked once, on the model that is written
            **run_options,
        )
        return metric(run_all(result.model, held_out), float_outputs), result

    loop = run_accuracy_loop(target, preset, metric(float_outputs, float_outputs), attempt, start)
    best: QuantizeResult = loop.output
    notes = [*best.notes, *loop.notes()]
    files = dict(best.files)
    if model_output is not None:
        require_valid(best.violations, preset, allow=allow_violations, flag="--allow-violations")
        files["onnx"] = save_model(best.model, Path(model_output), run_options.get("use_external_data", False))
    return replace(best, path=files.get("onnx"), notes=notes, files=files)
