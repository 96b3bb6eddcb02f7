"""One step of the zoo run in its own process, so that its wall time and peak RSS are its own and a
crash ends a row, not the run. The runner (zoo.run) starts it; it writes ``<work>/<step>.json``.

    python -m zoo.job float    MODEL WORK            the float model as ONNX (WORK/float.onnx)
    python -m zoo.job ort      MODEL WORK            ONNX Runtime's quantizer (WORK/ort_int8.onnx)
    python -m zoo.job rq       MODEL WORK PRESET     rq for PRESET through the model's framework (WORK/rq_PRESET.onnx)
    python -m zoo.job evaluate MODEL WORK [FILE ...] metrics of every file, and their latency side by side
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
import traceback
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kilobytes on Linux


def _quantize_step(step: str, entry, work: Path, preset: str | None) -> dict:
    from zoo import frameworks
    from zoo.core import Split

    calibration = entry.samples(Split.CALIBRATION, sizes(entry)[0])
    if step == "ort":
        start = time.perf_counter()
        summary = frameworks.ort_quantize(work / "float.onnx", calibration, work / "ort_int8.onnx")
        return {"seconds": time.perf_counter() - start, "file": "ort_int8.onnx", "samples": len(calibration), **summary}
    model = entry.load()
    start = time.perf_counter()
    summary = frameworks.rq_quantize(entry, model, calibration, preset, work / f"rq_{preset}.onnx", work)
    return {"seconds": time.perf_counter() - start, "file": f"rq_{preset}.onnx", "samples": len(calibration), **summary}


def _float_step(entry, work: Path) -> dict:
    start = time.perf_counter()
    model = entry.load()
    entry.export_float(model, work / "float.onnx")
    return {"seconds": time.perf_counter() - start, "file": "float.onnx"}


def _evaluate_step(entry, work: Path, files: list[str]) -> dict:
    from zoo.core import Split
    from zoo.evaluate import interleaved_latency, run_all

    evaluation = entry.samples(Split.EVALUATION, sizes(entry)[1])
    reference = run_all(work / "float.onnx", evaluation)
    metrics = {"float.onnx": entry.score(reference, reference, evaluation)}
    as_written = {}  # the same files without ORT's integer kernels: quantization error alone
    errors = {}
    runnable = {"float.onnx": work / "float.onnx"}
    for name in files:
        try:
            metrics[name] = entry.score(run_all(work / name, evaluation), reference, evaluation)
            as_written[name] = entry.score(run_all(work / name, evaluation, as_written=True), reference, evaluation)
            runnable[name] = work / name
        except Exception as error:  # one file that ONNX Runtime cannot run is a row, not the end
            errors[name] = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"[:300]
    latency = interleaved_latency(runnable, entry.example())
    return {
        "metrics": metrics,
        "metrics_as_written": as_written,
        "errors": errors,
        "latency_ms": latency,
        "samples": len(evaluation),
    }


def sizes(entry) -> tuple[int, int]:
    """The model's sample counts, capped by the runner's RQ_ZOO_SAMPLES=calib,eval where it is set."""
    override = os.environ.get("RQ_ZOO_SAMPLES")
    return entry.sample_counts(tuple(int(n) for n in override.split(",")) if override else None)


def main(argv: list[str]) -> int:
    step, model_name, work = argv[0], argv[1], Path(argv[2])
    rest = argv[3:]
    out = work / (f"{step}_{rest[0]}.json" if step == "rq" else f"{step}.json")
    try:
        from zoo.registry import get

        entry = get(model_name)
        if step == "float":
            result = _float_step(entry, work)
        elif step in ("ort", "rq"):
            result = _quantize_step(step, entry, work, rest[0] if rest else None)
        elif step == "evaluate":
            result = _evaluate_step(entry, work, rest)
        else:
            raise SystemExit(f"unknown step {step}")
        result["ok"] = True
    except Exception as error:
        lines = traceback.format_exc().strip().splitlines()
        result = {"ok": False, "error": f"{type(error).__name__}: {error}".splitlines()[0][:400], "traceback": lines[-12:]}
    result["peak_rss_mib"] = peak_rss_mib()
    out.write_text(json.dumps(result, indent=1, default=str) + "\n")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
