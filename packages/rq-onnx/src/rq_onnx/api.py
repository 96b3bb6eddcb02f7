"""quantize_static: the ONNX Runtime-style entry point, in rq's int8 format."""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import onnx
from tqdm import tqdm

from rq_common.errors import SpecError
from rq_common.format import ViolationKind, require_valid, validate
from rq_common.format.graph import record_float_nodes, record_wide_activations
from rq_common.io import check_output_path, save_onnx
from rq_common.observers import NonFinitePolicy
from rq_common.pipeline import QuantizeResult
from rq_common.pipeline.accuracy_loop import AccuracyTarget, Recipe
from rq_common.pipeline.mixed_precision import MixedPrecision
from rq_common.qmath import widen
from rq_common.qmath.adaround import AdaptiveRounding, Rounding
from rq_common.qmath.equalization import Equalization, equalization_for
from rq_common.report import QuantReport
from rq_common.spec import CalibrationMethod, Preset, get_preset, widened_activation
from rq_onnx.calibrate import CalibrationDataReader, calibrate
from rq_onnx.equalize import equalize_model
from rq_onnx.finalize import corrected_inputs, finalize_plan, patched_inputs
from rq_onnx.options import QuantizeOptions
from rq_onnx.plan import make_plan, name_nodes
from rq_onnx.precision import search_widened
from rq_onnx.prepare import load_model, prepare_model
from rq_onnx.readers import peek
from rq_onnx.report import error_report
from rq_onnx.write import fix_batch_to_one, write_quantized


def quantize_static(
    model_input: str | Path | onnx.ModelProto,
    model_output: str | Path | None,
    calibration_data_reader: CalibrationDataReader,
    preset: str | Preset = "npu_cnn",
    *,
    per_channel: bool | None = None,
    calibrate_method: CalibrationMethod | str | None = None,
    exclude_op_types: Sequence[str] = (),
    exclude_nodes: Sequence[str] = (),
    max_calibration_batches: int | None = None,
    report_batches: int = 16,
    use_external_data: bool = False,
    report_path: str | Path | None = None,
    quiet: bool = False,
    nonfinite: NonFinitePolicy | str = NonFinitePolicy.RAISE,
    equalization: Equalization | bool | None = None,
    bias_correction: bool = False,
    rounding: Rounding | str = Rounding.NEAREST,
    mixed_precision: MixedPrecision | None = None,
    target: AccuracyTarget | None = None,
    allow_violations: bool = False,
) -> QuantizeResult:
    """Quantize a float ONNX model to rq's int8 format.

    ``calibration_data_reader`` follows ONNX Runtime's protocol (get_next() -> dict or None).
    ``preset``: a name, or a Preset changed as needed (``get_preset("cpu", activation_dtype="int8")``);
    ``per_channel`` and ``calibrate_method`` (the activations' method) change it as ONNX Runtime's
    arguments of those names do. The other arguments are QuantizeOptions (see there). The output
    file is written whole at the end, or not at all; the input is never modified. Written means
    valid: a model that breaks a rule of the preset's format is not written (FormatError names the
    first rule) unless ``allow_violations``; the result lists the violations either way.
    ``target``: run the accuracy loop (rq_common.pipeline.accuracy_loop, rq_onnx.auto) until the
    model scores the target on the reader's held-out last batches; the other options are its start.
    """
    for path in (model_output, report_path):
        if path is not None:
            check_output_path(path, inputs=(model_input,))
    options = QuantizeOptions(
        exclude_op_types=exclude_op_types,
        exclude_nodes=exclude_nodes,
        max_calibration_batches=max_calibration_batches,
        report_batches=report_batches,
        use_external_data=use_external_data,
        report_path=report_path,
        quiet=quiet,
        nonfinite=nonfinite,
        equalization=equalization,
        bias_correction=bias_correction,
        rounding=rounding,
        mixed_precision=mixed_precision,
    )
    preset = get_preset(preset, per_channel=per_channel, activation_method=calibrate_method)
    if target is not None:
        return _quantize_to_target(model_input, model_output, calibration_data_reader, preset, target, options, allow_violations)
    wide_spec = widened_activation(preset)
    if options.mixed_precision is not None and wide_spec is None:
        raise SpecError(
            "mixed_precision",
            f"preset '{preset.name}' has no wider activation type its target runs "
            "(16-bit activations run on cpu and on the NPU's transformer path: npu_transformer, npu_a16w8)",
        )
    notes: list[str] = []
    if getattr(calibration_data_reader, "is_random", False):
        notes.append("WARNING: calibrated on random data (asked for explicitly): scales do not reflect real inputs")
    model = prepare_model(load_model(model_input), preset, notes, sixteen_bits=options.mixed_precision is not None)
    name_nodes(model)
    equalization = equalization_for(options.equalization, preset)
    if equalization is not None:
        peeked = []  # high-bias absorption's batches, read ahead of calibration
        if equalization.absorb_high_bias:
            peeked, calibration_data_reader = peek(calibration_data_reader, equalization.absorb_batches)
        equalize_model(model, equalization, notes, peeked)
    plan = make_plan(model, preset, options.exclude_op_types, options.exclude_nodes)
    if not plan.activations:
        raise SpecError("model", "nothing to quantize: no op of the model has a quantization rule (see the float-op list)")

    rewind = callable(getattr(calibration_data_reader, "rewind", None))
    calibration = calibrate(
        model,
        plan.activations,
        plan.groups,
        preset,
        calibration_data_reader,
        max_batches=options.max_calibration_batches,
        keep_batches=0 if rewind else options.report_batches,
        quiet=options.quiet,
        nonfinite=options.nonfinite,
        channel_axes=corrected_inputs(model, plan) if options.bias_correction else None,
        patch_inputs=patched_inputs(model, plan) if options.rounding is Rounding.ADAROUND else None,
    )
    notes += calibration.notes
    if rewind:
        calibration_data_reader.rewind()
        feeds = list(calibration.checked(_reader_batches(calibration_data_reader, options.report_batches)))
    else:
        feeds = calibration.kept_batches
    rounding = AdaptiveRounding(progress=_layer_bar(options.quiet)) if options.rounding is Rounding.ADAROUND else None
    written = _write_repairing(model, plan, preset, calibration, options, notes, rounding)
    if options.mixed_precision is not None:  # its second finalize reuses the rounding's memo
        written = _widen_sensitive(model, written, preset, calibration, options, feeds, notes, rounding)
    quantized, dequantized, plan, act, violations = written
    report = QuantReport(title=f"rq-onnx: {preset.name}", notes=list(notes))
    report.notes += [f"kept in float: {f.node} ({f.op}): {f.reason}" for f in plan.float_ops]
    report.notes += [f"format violation: {v}" for v in violations]
    error_report(model, quantized, dequantized, act, feeds, report)

    if model_output is not None:
        require_valid(violations, preset, allow=allow_violations, flag="--allow-violations")
    files = {}
    if model_output is not None:
        files["onnx"] = save_model(quantized, Path(model_output), options.use_external_data)
    if options.report_path is not None:
        writer = report.to_json if options.report_path.suffix == ".json" else report.to_html
        writer(options.report_path)
        files["report"] = options.report_path
    return QuantizeResult(
        files.get("onnx"),
        quantized,
        preset,
        quantized_ops=list(plan.quantized_nodes),
        float_ops=plan.float_ops,
        notes=notes,
        violations=violations,
        qparams=act,
        files=files,
        report=report,
    )


def _quantize_to_target(model_input, model_output, reader, preset, target, options: QuantizeOptions, allow_violations):
    from rq_onnx.auto import quantize_to_target

    start = Recipe(
        equalization=options.equalization,
        bias_correction=options.bias_correction,
        rounding=options.rounding,
        mixed_precision=options.mixed_precision,
    )
    run_options = {
        "exclude_op_types": options.exclude_op_types,
        "exclude_nodes": options.exclude_nodes,
        "report_batches": options.report_batches,
        "use_external_data": options.use_external_data,
        "quiet": options.quiet,
        "nonfinite": options.nonfinite,
    }
    result = quantize_to_target(
        model_input, model_output, reader, preset, target, start, options.max_calibration_batches, allow_violations, run_options
    )
    if options.report_path is not None:
        result.report.notes += [n for n in result.notes if n.startswith("accuracy loop:")]
        writer = result.report.to_json if options.report_path.suffix == ".json" else result.report.to_html
        writer(options.report_path)
        result.files["report"] = options.report_path
    return result


# the NPU's position rules, repaired in finalize; where a repair cannot hold (constraints that
# contradict each other through a shared scale), the op runs on the CPU instead
POSITION_RULES = frozenset(
    {ViolationKind.NPU_SHIFT_CUT, ViolationKind.NPU_SHIFT_BIAS, ViolationKind.NPU_ADD_POSITIONS, ViolationKind.NPU_SHARED_SCALE}
)
MAX_FLOAT_ROUNDS = 3


def _widen_sensitive(model, written, preset: Preset, calibration, options: QuantizeOptions, feeds, notes: list[str], rounding):
    """Mixed precision: search which scale groups to widen on the written model (rq_onnx.precision),
    then finalize and write again with those groups' calibrated QParams widened."""
    quantized, _, plan, _, _ = written
    groups: dict[str, list[str]] = {}
    for tensor in plan.activations:
        groups.setdefault(plan.groups.find(tensor), []).append(tensor)
    wide_spec = widened_activation(preset)
    found = search_widened(model, quantized, groups, wide_spec, feeds, options.mixed_precision, options.quiet)
    notes.append(found.note(wide_spec.dtype.value))
    if not found.widened:
        return written
    widened = frozenset(t for group in found.widened for t in groups[group])
    readers = {node.name for node in model.graph.node if widened.intersection(node.input) or widened.intersection(node.output)}
    notes.append(
        f"mixed precision: {len(readers)} op(s) read or write a widened ({wide_spec.dtype.value}) tensor "
        "(ONNX Runtime's CPU runs them in float)"
    )
    again: list[str] = []  # the second finalize repeats the first one's notes
    written = _write_repairing(model, plan, preset, calibration, options, again, rounding, widened)
    notes += [note for note in again if note not in notes]
    return written


def _write_repairing(
    model,
    plan,
    preset: Preset,
    calibration,
    options: QuantizeOptions,
    notes: list[str],
    rounding: AdaptiveRounding | None,
    widened: frozenset[str] = frozenset(),
):
    """Finalize, write and validate, the ``widened`` tensors' QParams moved to the preset's wider
    spec. On fixed-point targets an op no NPU position can serve (found
    by finalize, or still failing a position rule after the repair) is kept in float with a note,
    and the rest finalized again from the same calibration (an op kept in float only removes
    shared-scale constraints, so every tensor still planned was calibrated). The last plan is
    always written: what no round could repair stays a violation."""
    wide_spec = widened_activation(preset)
    calibrated = {t: widen(qp, wide_spec) if t in widened else qp for t, qp in calibration.qparams.items()}
    float_reasons: dict[str, str] = {}
    for round_ in range(MAX_FLOAT_ROUNDS + 1):
        round_notes: list[str] = []
        activations = {t: calibrated[t] for t in plan.activations}
        numbers = finalize_plan(
            model,
            plan,
            preset,
            activations,
            round_notes,
            calibration.channel_means,
            calibration.input_moments,
            rounding,
        )
        checked = None
        unrepaired = dict(numbers.unrepairable)
        if not unrepaired:
            checked = _write_and_validate(model, plan, preset, numbers, round_notes, widened)
            quantized_nodes = set(plan.quantized_nodes)
            unrepaired = {
                v.node: f"the NPU's {v.kind.value} rule cannot be repaired here ({v.message})"
                for v in checked[2]
                if preset.target.fixed_point_rules and v.kind in POSITION_RULES and v.node in quantized_nodes
            }
        replanned = None
        if unrepaired and round_ < MAX_FLOAT_ROUNDS:
            reasons = {**float_reasons, **{node: f"{why}: runs in float" for node, why in unrepaired.items()}}
            replanned = make_plan(model, preset, options.exclude_op_types, options.exclude_nodes, reasons)
            if set(replanned.activations) <= set(calibrated):
                float_reasons = reasons
            else:
                replanned = None
        if replanned is None:
            break
        plan = replanned
    quantized, dequantized, violations = checked or _write_and_validate(model, plan, preset, numbers, round_notes, widened)
    notes += round_notes
    notes += [f"{node}: kept in float: {reason}" for node, reason in float_reasons.items()]
    return quantized, dequantized, plan, numbers.activations, violations


def _write_and_validate(model, plan, preset: Preset, numbers, notes: list[str], widened: frozenset[str] = frozenset()):
    """The quantized model (and its dequantized twin for the report) with its violations."""
    written = onnx.ModelProto()
    written.CopyFrom(model)
    if preset.target.fixed_point_rules:
        fix_batch_to_one(written, notes)
    quantized, dequantized = write_quantized(
        written, plan, numbers.activations, numbers.weights, numbers.biases, numbers.bias_values, numbers.weight_values
    )
    record_float_nodes(quantized, [f.node for f in plan.float_ops])  # for a later `rq-onnx check`
    record_wide_activations(quantized, sorted(widened.intersection(plan.activations)))
    return quantized, dequantized, validate(quantized, preset)


def _layer_bar(quiet: bool):
    """A progress bar over the layers adaptive rounding rounds (stderr; off when quiet)."""
    return lambda layers: tqdm(layers, desc="adaptive rounding", unit="layer", disable=quiet, file=sys.stderr)


def _reader_batches(reader, limit: int):
    for _ in range(limit):
        feed = reader.get_next()
        if feed is None:
            return
        yield feed


def save_model(model: onnx.ModelProto, path: Path, external_data: bool) -> Path:
    """Deterministic bytes, written whole (a temporary name, then a rename) or not at all."""
    if not external_data:
        return save_onnx(model, path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data_name = f"{path.name}.data"
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        staged = Path(tmp) / path.name
        onnx.save_model(
            model, str(staged), save_as_external_data=True, all_tensors_to_one_file=True, location=data_name, size_threshold=1024
        )
        os.replace(Path(tmp) / data_name, path.parent / data_name)
        os.replace(staged, path)
    return path
