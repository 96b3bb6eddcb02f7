"""Calibration benchmark: rq's range choosers against ONNX Runtime's calibrators.

Both sides calibrate the same tensors of the same small ONNX model on the same batches, running
the model in ONNX Runtime once per batch; rq feeds its streaming observers, ORT uses its
calibrators from onnxruntime.quantization.calibrate. Reported: wall time (best of --repeat) and
the ratio ORT / rq, and peak Python-heap memory (tracemalloc: numpy arrays included) at 16, 256
and 1024 batches.

    nox -s bench            (or: python bench/bench_calibration.py [--batches 16 256 1024])
"""

from __future__ import annotations

import argparse
import datetime
import gc
import platform
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization import calibrate as ort_calibrate

import rq_common
from rq_common import Calibrator, QuantSpec, get_preset

sys.path.insert(0, str(Path(__file__).resolve().parent))
from headline import record, write  # noqa: E402

SHAPE = [4, 16, 16, 16]
TENSORS = ["x", "scaled", "relu", "sum"]
HERE = Path(__file__).parent


def bench_model() -> onnx.ModelProto:
    graph = helper.make_graph(
        [
            helper.make_node("Mul", ["x", "c"], ["scaled"]),
            helper.make_node("Relu", ["scaled"], ["relu"]),
            helper.make_node("Add", ["scaled", "relu"], ["sum"]),
        ],
        "bench",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, SHAPE)],
        [helper.make_tensor_value_info("sum", TensorProto.FLOAT, SHAPE)],
        [numpy_helper.from_array(np.float32(1.5), "c")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


class Reader(ort_calibrate.CalibrationDataReader):
    """ONNX Runtime's reader protocol; the batches are made on the fly (heavy-tailed, seeded)."""

    def __init__(self, batches: int):
        self.rng = np.random.default_rng(0)
        self.left = batches

    def get_next(self):
        if self.left == 0:
            return None
        self.left -= 1
        return {"x": self.rng.standard_t(3, SHAPE).astype(np.float32)}


def run_rq(model_path: str, batches: int, spec: QuantSpec, method: str) -> dict:
    options = ort.SessionOptions()
    model = onnx.load(model_path)
    model.graph.output.extend(helper.make_tensor_value_info(n, TensorProto.FLOAT, SHAPE) for n in TENSORS[1:-1])
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    calibrators = {n: Calibrator(spec, method, name=n) for n in TENSORS}
    reader = Reader(batches)
    while (feed := reader.get_next()) is not None:
        values = dict(zip(names, session.run(None, feed)))
        values["x"] = feed["x"]
        for name, calibrator in calibrators.items():
            calibrator.update(values[name])
    return {n: c.qparams() for n, c in calibrators.items()}


def run_ort(model_path: str, batches: int, method: ort_calibrate.CalibrationMethod, workdir: str) -> dict:
    calibrator = ort_calibrate.create_calibrator(
        model_path, augmented_model_path=str(Path(workdir) / "augmented.onnx"), calibrate_method=method
    )
    calibrator.collect_data(Reader(batches))
    return calibrator.compute_data()


def measure(fn: Callable[[], object], repeat: int) -> tuple[float, float]:
    """(best wall seconds over ``repeat`` runs, peak traced MiB of one run)."""
    times = []
    for _ in range(repeat):
        gc.collect()
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    gc.collect()
    tracemalloc.start()
    fn()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return min(times), peak / 2**20


# (rq method, spec, ORT method or None): the asymmetric uint8 spec is what ORT's defaults compute
CASES = [
    ("minmax", QuantSpec(dtype="uint8", symmetric=False), ort_calibrate.CalibrationMethod.MinMax),
    ("percentile", QuantSpec(dtype="uint8", symmetric=True), ort_calibrate.CalibrationMethod.Percentile),
    ("entropy", QuantSpec(dtype="uint8", symmetric=False), ort_calibrate.CalibrationMethod.Entropy),
    ("mse", QuantSpec(dtype="uint8", symmetric=False), None),
    ("pot_nonoverflow", get_preset("npu_cnn").activation, None),
    ("pot_minmse", get_preset("npu_cnn").activation, None),
]


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[16, 256, 1024])
    parser.add_argument("--repeat", type=int, default=3, help="timing runs per cell (best is kept)")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "calibration.md")
    args = parser.parse_args(argv)

    rows = []
    with tempfile.TemporaryDirectory() as workdir:
        model_path = str(Path(workdir) / "bench.onnx")
        onnx.save(bench_model(), model_path)
        for method, spec, ort_method in CASES:
            for batches in args.batches:
                repeat = args.repeat if batches <= 256 else 1
                rq_time, rq_mem = measure(partial(run_rq, model_path, batches, spec, method), repeat)
                if ort_method is not None:
                    ort_time, ort_mem = measure(partial(run_ort, model_path, batches, ort_method, workdir), repeat)
                else:
                    ort_time = ort_mem = float("nan")
                rows.append((method, batches, rq_time, ort_time, rq_mem, ort_mem))
                if batches == max(args.batches) and ort_method is not None:
                    record(
                        "calibration (rq-common)",
                        f"{method}: time, {batches} batches",
                        f"{rq_time:.3f} s",
                        f"{ort_time:.3f} s",
                        f"{ort_time / rq_time:.2f}x",
                        "results/calibration.md",
                    )
                    record(
                        "calibration (rq-common)",
                        f"{method}: peak memory, {batches} batches",
                        f"{rq_mem:.1f} MiB",
                        f"{ort_mem:.1f} MiB",
                        f"{ort_mem / rq_mem:.1f}x",
                        "results/calibration.md",
                    )
                print(
                    f"  {method:<16}{batches:>6} batches: rq {rq_time:.3f}s {rq_mem:.1f} MiB | ORT {ort_time:.3f}s {ort_mem:.1f} MiB",
                    flush=True,
                )

    per_batch_mib = len(TENSORS) * int(np.prod(SHAPE)) * 4 / 2**20
    lines = [
        "# Calibration: rq range choosers vs ONNX Runtime calibrators",
        "",
        f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}; machine: {platform.machine()}, "
        f"{platform.processor() or platform.platform()}, python {platform.python_version()}",
        f"- versions: rq-common {rq_common.__version__}, numpy {np.__version__}, onnx {onnx.__version__}, onnxruntime {ort.__version__}",
        f"- workload: {len(TENSORS)} tensors of shape {SHAPE} (float32, Student-t heavy tails) per batch, "
        f"{per_batch_mib:.2f} MiB of activations per batch; both sides run the model once per batch in ORT",
        "- time: best of 3 runs (1 run at 1024 batches); memory: peak Python heap (tracemalloc), numpy arrays included",
        "- rerun: `nox -s bench` (or `python bench/bench_calibration.py`)",
        "",
        "| method | batches | rq time (s) | ORT time (s) | ORT / rq time | rq peak (MiB) | ORT peak (MiB) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for method, batches, rq_time, ort_time, rq_mem, ort_mem in rows:
        if np.isnan(ort_time):
            ort_cells = "n/a (ORT has none) | | "
        else:
            ort_cells = f"{ort_time:.3f} | {ort_time / rq_time:.2f}x | "
        lines.append(
            f"| {method} | {batches} | {rq_time:.3f} | {ort_cells}{rq_mem:.1f} | "
            + ("" if np.isnan(ort_mem) else f"{ort_mem:.1f}")
            + " |"
        )
    table = "\n".join(lines) + "\n"
    print()
    print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(table)
    write(args.out.with_suffix(".headlines.json"))
    print(f"written to {args.out}")
    return table


if __name__ == "__main__":
    main()
