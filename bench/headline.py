"""The headline numbers every benchmark records as it measures: run_all.py writes them, side by side
with ONNX Runtime's quantizer where it has a counterpart, into bench/RESULTS.md."""

from __future__ import annotations

import datetime
import importlib.metadata
import multiprocessing
import platform
from dataclasses import dataclass

PACKAGES = ["numpy", "onnx", "onnxruntime", "torch", "tensorflow-cpu", "keras", "tf2onnx", "rq-common"]


@dataclass(frozen=True)
class Headline:
    area: str  # the benchmark and package
    measure: str
    rq: str
    onnx_runtime: str  # ONNX Runtime's quantizer on the same work, or "-" where it has nothing to compare
    ratio: str  # "ORT / rq" for times and memory, "rq - ORT" for accuracy, as the measure says
    detail: str  # the benchmark's own results file


HEADLINES: list[Headline] = []


def record(area: str, measure: str, rq: str, onnx_runtime: str = "-", ratio: str = "-", detail: str = "") -> None:
    HEADLINES.append(Headline(area, measure, rq, onnx_runtime, ratio, detail))


def write(path) -> None:
    """Save what this benchmark recorded (run_all.py reads it)."""
    import json
    from dataclasses import asdict
    from pathlib import Path

    Path(path).write_text(json.dumps([asdict(h) for h in HEADLINES], indent=1) + "\n")


def read(path) -> list[Headline]:
    import json
    from pathlib import Path

    return [Headline(**row) for row in json.loads(Path(path).read_text())]


def version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def provenance(machine_detail: str, measured: datetime.datetime | None = None) -> list[str]:
    """The date, machine and versions lines that head RESULTS.md and the zoo's report; ``measured``:
    when the numbers were taken, where that was before now."""
    when = measured or datetime.datetime.now(datetime.timezone.utc)
    return [
        f"- date: {when:%Y-%m-%d %H:%M UTC}",
        f"- machine: {platform.machine()}, {multiprocessing.cpu_count()} cores, {machine_detail}, python {platform.python_version()}",
        "- versions: " + ", ".join(f"{p} {version(p)}" for p in PACKAGES),
    ]
