"""The rq-onnx command line: quantize, check, compare."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import onnx

from rq_common.errors import RqError, run_command
from rq_common.format import validate
from rq_common.format.builder import DEQUANTIZED
from rq_common.observers import NonFinitePolicy
from rq_common.pipeline.accuracy_loop import AccuracyTarget
from rq_common.pipeline.mixed_precision import MixedPrecision
from rq_common.qmath.adaround import Rounding
from rq_common.qmath.equalization import Equalization, Relu6, equalization_for
from rq_common.report import QuantReport
from rq_common.spec import ALIASES, PRESETS, CalibrationMethod, QdqPlacement, get_preset
from rq_onnx.api import quantize_static
from rq_onnx.calibrate import batches, check_feed, make_session, with_outputs
from rq_onnx.prepare import load_model
from rq_onnx.readers import RandomDataReader, model_inputs, open_calibration_data

PRESET_NAMES = sorted([*PRESETS, *(a.upper() for a in ALIASES)])


def _add_data_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--calib-data", type=Path, help="an .npz (keys = input names), a folder of .npy files, or a folder of images"
    )
    parser.add_argument("--random-data", type=int, metavar="N", help="calibrate on N random samples instead (the report says so)")
    parser.add_argument("--batch-size", type=int, default=1, help="samples per calibration batch (default 1)")


def _reader(args, model: onnx.ModelProto):
    if args.calib_data is not None and args.random_data is not None:
        raise RqError("give --calib-data or --random-data, not both")
    if args.calib_data is not None:
        return open_calibration_data(args.calib_data, model, args.batch_size)
    if args.random_data is not None:
        return RandomDataReader(model_inputs(model), args.random_data, args.batch_size)
    raise RqError("calibration data is needed: --calib-data PATH (or, explicitly, --random-data N)")


def _equalization(args) -> Equalization | bool:
    """--equalize and --relu6 as quantize_static's equalization: auto is the preset's default."""
    if args.equalize == "off":
        return False
    config = Equalization(relu6=args.relu6)
    if args.equalize == "on":
        return config
    preset = get_preset(args.preset, per_channel=True if args.per_channel else None)
    return config if equalization_for(None, preset) is not None else False


def cmd_quantize(args) -> int:
    model = load_model(args.input)
    result = quantize_static(
        model,
        args.output,
        _reader(args, model),
        preset=get_preset(args.preset, qdq=args.qdq) if args.qdq else args.preset,
        calibrate_method=args.method,
        per_channel=True if args.per_channel else None,
        exclude_nodes=tuple(args.exclude_nodes),
        exclude_op_types=tuple(args.exclude_op_types),
        report_path=args.report,
        use_external_data=args.external_data,
        quiet=args.quiet,
        nonfinite=args.nonfinite,
        equalization=_equalization(args),
        bias_correction=args.bias_correction,
        rounding=args.rounding,
        mixed_precision=_mixed_precision(args),
        target=_target(args),
        allow_violations=args.allow_violations,
    )
    for note in result.notes:
        print(f"note: {note}")
    for op in result.float_ops:
        print(f"float: {op.node} ({op.op}): {op.reason}")
    for violation in result.violations:
        print(f"violation: {violation}")
    _print_table(result.report, limit=args.show)
    print(f"wrote {result.path}" + (f", report {args.report}" if args.report else ""))
    if result.violations:
        print(f"note: written with {len(result.violations)} format violation(s), as --allow-violations asked")
    return 0


def _mixed_precision(args) -> MixedPrecision | None:
    if args.mixed_precision is None:
        return None
    return MixedPrecision(target=args.mixed_precision, max_tensors=args.max_wide_tensors)


def _target(args) -> AccuracyTarget | None:
    if args.target_metric is None and args.max_drop is None:
        return None
    return AccuracyTarget(score=args.target_metric, max_drop=args.max_drop, holdout=args.holdout)


def cmd_check(args) -> int:
    violations = validate(load_model(args.model), args.preset, float_nodes=args.float_nodes)
    for violation in violations:
        print(violation)
    if not violations:
        print(f"{args.model}: in the rq int8 format for preset {args.preset}")
    return 1 if violations else 0


def cmd_compare(args) -> int:
    float_model, int8_model = load_model(args.float_model), load_model(args.int8_model)
    common = sorted({o.name for o in float_model.graph.output} & {o.name for o in int8_model.graph.output})
    float_outputs = [o.name for o in float_model.graph.output]
    # the int8 model's dequantized copy of a float tensor T is named T_dequantized (rq's builders)
    float_tensors = {o for n in float_model.graph.node for o in n.output} | {i.name for i in float_model.graph.input}
    dequantized = sorted({n.output[0] for n in int8_model.graph.node if n.op_type == "DequantizeLinear"})
    suffix = DEQUANTIZED
    pairs = [(t, t) for t in common] + [
        (t[: -len(suffix)], t) for t in dequantized if t.endswith(suffix) and t[: -len(suffix)] in float_tensors
    ]
    float_session = make_session(with_outputs(float_model, [f for f, _ in pairs]))
    int8_session = make_session(with_outputs(int8_model, [q for _, q in pairs]))
    report = QuantReport(title="rq-onnx compare")
    agree = total = 0
    for number, feed in enumerate(batches(_reader(args, float_model)), start=1):
        feed = check_feed(feed, float_session.get_inputs(), number)
        ref = dict(zip([o.name for o in float_session.get_outputs()], float_session.run(None, feed), strict=True))
        ref.update(feed)
        got = dict(zip([o.name for o in int8_session.get_outputs()], int8_session.run(None, feed), strict=True))
        for f, q in pairs:
            report.stats(f).update(ref[f], got[q])
        first = float_outputs[0]
        if first in common and ref[first].ndim == 2 and ref[first].shape[1] > 1:
            agree += int(np.sum(ref[first].argmax(1) == got[first].argmax(1)))
            total += ref[first].shape[0]
    if total:
        print(f"top-1 agreement on '{float_outputs[0]}': {100 * agree / total:.2f}% of {total} samples")
    for name in common:
        print(f"output '{name}': SQNR {report.tensors[name].sqnr_db:.2f} dB")
    _print_table(report, limit=args.show)
    return 0


def _print_table(report: QuantReport, limit: int) -> None:
    rows = report.worst_first()[:limit]
    if not rows:
        return
    width = max(len(r.name) for r in rows)
    print(f"{'tensor':<{width}}  {'SQNR dB':>8}  {'max |err|':>10}  {'clipped':>8}")
    for r in rows:
        print(f"{r.name:<{width}}  {r.sqnr_db:>8.2f}  {r.max_abs_error:>10.4g}  {100 * r.clipped_fraction:>7.3f}%")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rq-onnx", description="int8 quantization of ONNX models in rq's format")
    sub = parser.add_subparsers(dest="command", required=True)

    q = sub.add_parser("quantize", help="quantize a float model")
    q.add_argument("input", type=Path)
    q.add_argument("output", type=Path)
    _add_data_arguments(q)
    q.add_argument("--preset", default="npu_cnn", choices=PRESET_NAMES)
    q.add_argument(
        "--method", choices=[m.value for m in CalibrationMethod], help="activation range chooser (default: the preset's)"
    )
    q.add_argument("--per-channel", action="store_true", help="per-channel weights (targets that run them)")
    q.add_argument(
        "--qdq",
        choices=[p.value for p in QdqPlacement],
        help="every_op (default), or integer_kernels: Q/DQ only where ONNX Runtime's int8 CPU kernels are (cpu)",
    )
    q.add_argument("--exclude-nodes", nargs="*", default=[], metavar="NODE", help="node names kept in float")
    q.add_argument("--exclude-op-types", nargs="*", default=[], metavar="OP", help="op types kept in float")
    q.add_argument("--report", type=Path, help="write the report (.html or .json)")
    q.add_argument("--external-data", action="store_true", help="weights in <output>.data (models over 2 GB)")
    q.add_argument("--show", type=int, default=10, help="rows of the per-tensor table to print")
    q.add_argument("--quiet", action="store_true", help="no progress bars")
    q.add_argument(
        "--equalize",
        choices=["auto", "on", "off"],
        default="auto",
        help="cross-layer equalization before calibration: layer pairs joined through ReLU-like ops rescaled so that "
        "per-tensor weights fit every channel (auto, the default: on where the preset's weights are per tensor)",
    )
    q.add_argument(
        "--relu6",
        choices=[r.value for r in Relu6],
        default=Relu6.KEEP.value,
        help="where equalization runs: keep a ReLU6 pair as it is (default), or make the ReLU6 a ReLU and equalize the pair",
    )
    q.add_argument(
        "--bias-correction",
        action="store_true",
        help="correct each layer's bias for its quantized weight's error, from the calibration data's means",
    )
    q.add_argument(
        "--rounding",
        choices=[r.value for r in Rounding],
        default=Rounding.NEAREST.value,
        help="weights to nearest, or adaround: up or down per weight, to reconstruct each layer's output on the calibration data",
    )
    q.add_argument(
        "--mixed-precision",
        type=float,
        metavar="AGREEMENT",
        help="widen the most sensitive activations to int16, measured on the calibration data, until the output "
        "agreement with float (mean cosine) reaches AGREEMENT, e.g. 0.99 (cpu, npu_transformer)",
    )
    q.add_argument(
        "--max-wide-tensors", type=int, default=MixedPrecision.max_tensors, help="at most this many activations widened"
    )
    q.add_argument(
        "--target-metric",
        type=float,
        metavar="AGREEMENT",
        help="the accuracy loop: try other ranges, bias correction, adaround and mixed precision, cheapest first, "
        "until the output agreement with float (mean cosine) on the held-out batches reaches AGREEMENT",
    )
    q.add_argument("--max-drop", type=float, help="the accuracy loop's goal as the largest drop from float's agreement (1.0)")
    q.add_argument(
        "--holdout",
        type=int,
        default=AccuracyTarget.holdout,
        help="the accuracy loop scores on the data's last HOLDOUT batches and calibrates on the rest",
    )
    q.add_argument("--allow-violations", action="store_true", help="write the model even if it breaks the preset's format")
    q.add_argument(
        "--nonfinite",
        choices=[p.value for p in NonFinitePolicy],
        default=NonFinitePolicy.RAISE.value,
        help="+-inf in a quantized tensor: stop (raise) or leave it out of the range (ignore_inf)",
    )
    q.set_defaults(run=cmd_quantize)

    c = sub.add_parser("check", help="validate a model against the int8 format of a preset")
    c.add_argument("model", type=Path)
    c.add_argument("--preset", default="npu_cnn", choices=PRESET_NAMES)
    c.add_argument("--float-nodes", nargs="*", default=[], metavar="NODE", help="nodes kept in float on purpose")
    c.set_defaults(run=cmd_check)

    m = sub.add_parser("compare", help="run a float and an int8 model on the same data and compare them")
    m.add_argument("float_model", type=Path)
    m.add_argument("int8_model", type=Path)
    _add_data_arguments(m)
    m.add_argument("--show", type=int, default=20)
    m.set_defaults(run=cmd_compare)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_command("rq-onnx", lambda: args.run(args))


if __name__ == "__main__":
    sys.exit(main())
