"""The report rq-torch's and rq-tf2's benchmarks share: per preset, digits accuracy float / PTQ /
QAT, the QAT step against the float step and export time; then the step times on the ResNet-style
network. Each framework brings its own measuring; the tables, headlines and files are made here."""

from __future__ import annotations

import datetime
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

from headline import record, write

PRESETS = ("npu_cnn", "npu_transformer", "cpu")


def paired_step_ms(steps: list[Callable[[], None]], repeats: int) -> tuple[float, ...]:
    """Median times of each training step, the steps alternating so that all see the same machine
    load (side by side, as ratios must be measured); five warm-up rounds first."""
    times: list[list[float]] = [[] for _ in steps]
    for i in range(repeats + 5):
        for step, taken in zip(steps, times):
            start = time.perf_counter()
            step()
            if i >= 5:
                taken.append(time.perf_counter() - start)
    return tuple(1000 * statistics.median(t) for t in times)


def timed_s(work: Callable[..., object], *args) -> float:
    start = time.perf_counter()
    work(*args)
    return time.perf_counter() - start


class QatReport:
    """``title``: the heading; ``versions``: the framework's versions for the machine line;
    ``setup``: how the models were trained and timed; ``script``: the file that reruns it alone."""

    def __init__(self, area: str, detail: str, *, title: str, versions: str, setup: list[str], script: str):
        self.area, self.detail = area, detail
        self.lines = [
            f"# {title}",
            "",
            f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}; machine: {platform.machine()}, "
            f"{versions}, python {platform.python_version()}",
            *(f"- {line}" for line in setup),
            f"- rerun: `nox -s bench` (or `python bench/{script}`)",
            "",
            "| preset | float | PTQ | QAT | QAT step / float step | export (s) |",
            "|---|---:|---:|---:|---:|---:|",
        ]

    def digits_row(self, preset: str, accuracies: tuple[float, float, float], step_ms: tuple[float, float], export_s: float):
        """``accuracies``: float, PTQ, QAT; ``step_ms``: float, QAT."""
        float_acc, ptq, qat = (f"{100 * a:.2f}%" for a in accuracies)
        float_ms, qat_ms = step_ms
        self._add(
            f"| {preset} | {float_acc} | {ptq} | {qat} | {qat_ms / float_ms:.2f}x ({qat_ms:.2f} / {float_ms:.2f} ms) | {export_s:.2f} |"
        )
        record(self.area, f"digits accuracy {preset}: float / PTQ / QAT", f"{float_acc} / {ptq} / {qat}", detail=self.detail)

    def step_table(self, title: str):
        self.lines += ["", title, "", "| preset | float step (ms) | QAT step (ms) | QAT / float |", "|---|---:|---:|---:|"]

    def step_row(self, preset: str, step_ms: tuple[float, float]):
        float_ms, qat_ms = step_ms
        self._add(f"| {preset} | {float_ms:.1f} | {qat_ms:.1f} | {qat_ms / float_ms:.2f}x |")
        record(
            self.area,
            f"QAT step / float step, ResNet-style, {preset} (goal <= 1.5x)",
            f"{qat_ms / float_ms:.2f}x",
            detail=self.detail,
        )

    def save(self, out: Path) -> str:
        text = "\n".join(self.lines) + "\n"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        write(out.with_suffix(".headlines.json"))
        print(text)
        return text

    def _add(self, line: str):
        self.lines.append(line)
        print(line, flush=True)
