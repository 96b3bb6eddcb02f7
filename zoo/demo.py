"""The main job (``nox -s demo``): one trained model per framework from the zoo, through the flow users
follow: calibrate (PTQ), check the metric against float, fine-tune with QAT where PTQ falls short and
the framework trains, export int8 ONNX; ONNX Runtime runs every file; one table comes out.

    python -m zoo.demo --out out/demo [--qat-threshold 0.02] [--quiet]

QAT is distillation from the float model (mean squared error between the quantized and the float
model's outputs, over the calibration samples): it needs no labels, so every zoo model can take it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from rq_common.format import validate  # noqa: E402
from zoo import frameworks  # noqa: E402
from zoo.core import Framework, Samples, Split, ZooModel  # noqa: E402
from zoo.evaluate import interleaved_latency, run_all  # noqa: E402
from zoo.registry import get  # noqa: E402

DEMO_MODELS = ("ddddocr_det", "easyocr_g2", "mtcnn_onet", "mtcnn_onet_tf1")  # ONNX, PyTorch, Keras, TF1
PRESETS = ("npu_cnn", "cpu")
NAMES = {Framework.ONNX: "ONNX (rq-onnx)", Framework.TORCH: "PyTorch (rq-torch)", Framework.TF2: "Keras (rq-tf2)", Framework.TF1: "TF1 graph (rq-tf1)"}  # fmt: skip


@dataclass
class Row:
    model: str
    framework: Framework
    preset: str
    step: str
    metric: str
    float_value: float
    int8_value: float | None
    size: int
    float_ms: float
    int8_ms: float | None
    path: Path | None
    violations: int = 0  # rq-onnx check's count for the preset
    error: str = ""


def worse_by(entry: ZooModel, reference: float, value: float) -> float:
    """How much worse ``value`` is than ``reference``, relative to it (0.02: 2% worse)."""
    loss = reference - value if entry.higher_is_better else value - reference
    return loss / max(abs(reference), 1e-9)


# -- QAT, one function per framework that trains ------------------------------------------------------
def qat_torch(entry: ZooModel, model, calibration: Samples, preset: str, out: Path, epochs: int, quiet: bool) -> Path:
    import torch

    import rq_torch

    torch.manual_seed(0)
    inputs = [entry.torch_inputs(s) for s in calibration.inputs]
    with torch.no_grad():
        targets = [_tensors(model(*x)) for x in inputs]
    qmodel = rq_torch.quantize_model(model, inputs[0], preset=preset)
    rq_torch.calibrate(qmodel, inputs, quiet=quiet)
    optimizer = torch.optim.Adam(rq_torch.weight_parameters(qmodel), lr=1e-5)
    qmodel.train()
    for _ in range(epochs):
        for x, target in zip(inputs, targets, strict=True):
            optimizer.zero_grad()
            loss = sum(torch.nn.functional.mse_loss(y, t) for y, t in zip(_tensors(qmodel(*x)), target, strict=True))
            loss.backward()
            optimizer.step()
    qmodel.eval()
    return rq_torch.export_onnx(qmodel, inputs[0], out).path


def _tensors(output) -> list:
    return list(output) if isinstance(output, (tuple, list)) else [output]


def qat_keras(entry: ZooModel, model, calibration: Samples, preset: str, out: Path, epochs: int, quiet: bool) -> Path:
    import keras

    import rq_tf2

    keras.utils.set_random_seed(0)
    x = np.concatenate([s[0] for s in calibration.inputs])
    targets = model.predict(x, batch_size=32, verbose=0)
    qmodel = rq_tf2.quantize_model(model, preset=preset, calib_dataset=[s[0] for s in calibration.inputs], quiet=quiet)
    qmodel.compile(keras.optimizers.Adam(1e-5), "mse")
    qmodel.fit(x, targets, batch_size=8, epochs=epochs, verbose=0, shuffle=False)
    return rq_tf2.export_onnx(qmodel, out).path


QAT = {Framework.TORCH: qat_torch, Framework.TF2: qat_keras}  # ONNX and TF1 graphs are PTQ only


def headline(entry: ZooModel, path: Path, reference: list[list[np.ndarray]], evaluation: Samples) -> float:
    """The model's headline metric for the int8 file at ``path``, run in ONNX Runtime."""
    return next(iter(entry.score(run_all(path, evaluation), reference, evaluation).values()))


def demo_model(
    entry: ZooModel, out: Path, threshold: float, epochs: int, samples: tuple[int, int] | None, quiet: bool
) -> list[Row]:
    work = out / entry.name
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    model = entry.load()
    float_path = entry.export_float(model, work / "float.onnx")
    calibration_size, evaluation_size = entry.sample_counts(samples)
    calibration = entry.samples(Split.CALIBRATION, calibration_size)
    evaluation = entry.samples(Split.EVALUATION, evaluation_size)
    reference = run_all(float_path, evaluation)
    metric, float_value = next(iter(entry.score(reference, reference, evaluation).items()))
    rows = []
    for preset in PRESETS:
        if preset not in entry.presets:
            continue
        path = work / f"{preset}.onnx"
        step = "PTQ"
        try:
            frameworks.rq_quantize(entry, model, calibration, preset, path, work)
            value = headline(entry, path, reference, evaluation)
            if worse_by(entry, float_value, value) > threshold and entry.framework in QAT:
                qat_path = QAT[entry.framework](entry, model, calibration, preset, work / f"{preset}_qat.onnx", epochs, quiet)
                qat_value = headline(entry, qat_path, reference, evaluation)
                if worse_by(entry, value, qat_value) < 0:  # keep what is better, as a user would
                    path, value, step = qat_path, qat_value, "PTQ + QAT"
                else:
                    step = f"PTQ (QAT gave {qat_value:.4f})"
        except Exception as error:  # a row that says what failed; the other models still run
            rows.append(Row(entry.name, entry.framework, preset, step, metric, float_value, None, 0, 0.0, None, None, f"{type(error).__name__}: {error}".splitlines()[0][:160]))  # fmt: skip
            continue
        latency = interleaved_latency({"float": float_path, "int8": path}, entry.example())
        violations = len(validate(path, preset))
        rows.append(Row(entry.name, entry.framework, preset, step, metric, float_value, value, path.stat().st_size, latency["float"], latency["int8"], path, violations))  # fmt: skip
    return rows


def print_table(rows: list[Row], float_sizes: dict[str, int]) -> None:
    print()
    print(
        "| model | framework | preset | steps | metric | float | int8 | change | size KiB (float) | latency ms (float) | rq-onnx check |"
    )
    print("|---|---|---|---|---|---:|---:|---:|---:|---:|---|")
    for r in rows:
        if r.int8_value is None:
            print(
                f"| {r.model} | {NAMES[r.framework]} | {r.preset} | {r.step} | {r.metric} | {r.float_value:.4f} | FAILED: {r.error} | | | |"
            )
            continue
        print(
            f"| {r.model} | {NAMES[r.framework]} | {r.preset} | {r.step} | {r.metric} | {r.float_value:.4f} | {r.int8_value:.4f} | "
            f"{r.int8_value - r.float_value:+.4f} | {r.size / 1024:.0f} ({float_sizes[r.model] / 1024:.0f}) | "
            f"{r.int8_ms:.2f} ({r.float_ms:.2f}) | {'passes' if not r.violations else f'{r.violations} violations'} |"
        )
    print()
    print("latency: batch 1, 2 threads, float and int8 taking turns in one loop (medians)")
    print("rq-onnx check: the file against its preset's format (a violation: the NPU compiler would refuse or reroute that node)")


def main(argv=None) -> list[Row]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("out/demo"))
    parser.add_argument("--models", nargs="*", default=list(DEMO_MODELS))
    parser.add_argument(
        "--qat-threshold", type=float, default=0.02, help="QAT when PTQ's metric is this much worse than float (relative)"
    )
    parser.add_argument("--qat-epochs", type=int, default=2)
    parser.add_argument("--samples", help="calibration,evaluation sample caps (default: each model's own)")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    rows: list[Row] = []
    float_sizes = {}
    for name in args.models:
        entry = get(name)
        print(f"== {entry.name} ({NAMES[entry.framework]}): {entry.task}", flush=True)
        samples = tuple(int(n) for n in args.samples.split(",")) if args.samples else None
        rows += demo_model(entry, args.out, args.qat_threshold, args.qat_epochs, samples, args.quiet)
        float_sizes[entry.name] = (args.out / entry.name / "float.onnx").stat().st_size
    print_table(rows, float_sizes)
    return rows


if __name__ == "__main__":
    sys.exit(1 if any(row.int8_value is None for row in main()) else 0)  # a FAILED row fails the job
