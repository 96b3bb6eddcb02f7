"""Run every benchmark, then write bench/RESULTS.md: one table of the headline numbers, rq beside
ONNX Runtime's quantizer where it has a counterpart, with the machine, versions and date.

    nox -s bench            (or: python bench/run_all.py)
    python bench/run_all.py --table-only     rewrite RESULTS.md from the headlines on disk (nox -s zoo does)

The zoo's headlines (results/zoo.headlines.json, written by `nox -s zoo`) join the table when present.
"""

from __future__ import annotations

import platform
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from headline import provenance, read  # noqa: E402

BENCHMARKS = ["bench_calibration", "bench_onnx", "bench_torch", "bench_tf2"]


def main(table_only: bool = False) -> str:
    if not table_only:
        for name in BENCHMARKS:
            print(f"== {name}", flush=True)
            subprocess.run([sys.executable, str(HERE / f"{name}.py")], check=True)
    sources = [HERE / "results" / f"{name.removeprefix('bench_')}.headlines.json" for name in BENCHMARKS]
    sources += [p for p in [HERE / "results" / "zoo.headlines.json"] if p.exists()]
    rows = [h for path in sources if path.exists() for h in read(path)]
    lines = [
        "# rq benchmark results",
        "",
        *provenance(platform.platform()),
        "- rerun: `nox -s bench` (or `python bench/run_all.py` with the packages installed) and `nox -s zoo` (the zoo rows);"
        " this file is written by those commands",
        "- one run: every ratio compares two numbers measured side by side in it. Times: ONNX Runtime / rq (above 1: rq is faster);",
        "  memory: ONNX Runtime / rq (above 1: rq uses less); accuracy and SQNR: rq minus ONNX Runtime.",
        "",
        "| area | measure | rq | ONNX Runtime's quantizer | ratio | detail |",
        "|---|---|---:|---:|---:|---|",
    ]
    lines += [f"| {h.area} | {h.measure} | {h.rq} | {h.onnx_runtime} | {h.ratio} | [{h.detail}]({h.detail}) |" for h in rows]
    text = "\n".join(lines) + "\n"
    (HERE / "RESULTS.md").write_text(text)
    print(text)
    return text


if __name__ == "__main__":
    main(table_only="--table-only" in sys.argv[1:])
