"""rq-torch on the digits task: float vs PTQ vs QAT accuracy per preset, the time of a QAT training
step against a float one (same batch, same optimizer), and export time. One run, one table.

    nox -s bench            (or: python bench/bench_torch.py)
"""

from __future__ import annotations

import argparse
import datetime
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "packages" / "rq-torch" / "tests"))
import nets  # noqa: E402  (rq-torch's test networks)

import rq_torch  # noqa: E402

sys.path.insert(0, str(HERE))
from headline import record, write  # noqa: E402

AREA = "rq-torch"
DETAIL = "results/torch.md"


def data():
    digits = load_digits()
    x = torch.tensor(digits.images / 16.0, dtype=torch.float32).unsqueeze(1)
    return train_test_split(x, torch.tensor(digits.target), test_size=0.3, random_state=0)


def accuracy(model, x, y) -> float:
    model.eval()
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def train(model, params, x, y, epochs, lr):
    optimizer = torch.optim.Adam(params, lr=lr)
    g = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), 32):
            idx = order[i : i + 32]
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            optimizer.step()


def paired_step_ms(float_model, qmodel, x, y, repeats=50) -> tuple[float, float]:
    """Median training-step times of the float and the quantized model, their steps alternating so
    that both see the same machine load (side by side, as ratios must be measured)."""
    runs = []
    for model, params in ((float_model, float_model.parameters()), (qmodel, rq_torch.weight_parameters(qmodel))):
        model.train()
        runs.append((model, torch.optim.SGD(params, lr=1e-4), []))
    for i in range(repeats + 5):
        for model, optimizer, times in runs:
            start = time.perf_counter()
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
            if i >= 5:
                times.append(time.perf_counter() - start)
    return tuple(1000 * statistics.median(times) for _, _, times in runs)


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--qat-epochs", type=int, default=3)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "torch.md")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    x_train, x_test, y_train, y_test = data()
    model = nets.DigitsCNN()
    train(model, model.parameters(), x_train, y_train, epochs=15, lr=3e-3)
    model.eval()
    float_acc = accuracy(model, x_test, y_test)
    lines = [
        "# rq-torch on load_digits (DigitsCNN: 2 conv + BN + ReLU, max-pool, linear)",
        "",
        f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}; machine: {platform.machine()}, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, python {platform.python_version()}",
        f"- float accuracy {100 * float_acc:.2f}%; PTQ on 256 training images; QAT {args.qat_epochs} epochs (Adam, lr 5e-4)",
        "- step time: median of 50 training steps on one batch of 32, float and quantized steps alternating",
        "- rerun: `nox -s bench` (or `python bench/bench_torch.py`)",
        "",
        "| preset | float | PTQ | QAT | QAT step / float step | export (s) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    xb, yb = x_train[:32], y_train[:32]
    for preset in ("npu_cnn", "npu_transformer", "cpu"):
        qmodel = rq_torch.quantize_model(model, x_test[:1], preset=preset)
        rq_torch.calibrate(qmodel, [x_train[i : i + 32] for i in range(0, 256, 32)], quiet=True)
        ptq = accuracy(qmodel, x_test, y_test)
        train(qmodel, rq_torch.weight_parameters(qmodel), x_train, y_train, epochs=args.qat_epochs, lr=5e-4)
        qat = accuracy(qmodel, x_test, y_test)
        float_ms, qat_ms = paired_step_ms(model, qmodel, xb, yb)
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            rq_torch.export_onnx(qmodel, x_test[:1], Path(tmp) / "m.onnx")
            export_s = time.perf_counter() - start
        lines.append(
            f"| {preset} | {100 * float_acc:.2f}% | {100 * ptq:.2f}% | {100 * qat:.2f}% | {qat_ms / float_ms:.2f}x ({qat_ms:.2f} / {float_ms:.2f} ms) | {export_s:.2f} |"
        )
        record(
            AREA,
            f"digits accuracy {preset}: float / PTQ / QAT",
            f"{100 * float_acc:.2f}% / {100 * ptq:.2f}% / {100 * qat:.2f}%",
            detail=DETAIL,
        )
        print(lines[-1], flush=True)
    lines += [
        "",
        "Training-step time on a larger network: ResNet-style (rq-torch's test network), batch 32 of 3x32x32, median of 20 steps.",
        "",
        "| preset | float step (ms) | QAT step (ms) | QAT / float |",
        "|---|---:|---:|---:|",
    ]
    resnet = nets.randomize_batchnorm(nets.ResNetStyle()).eval()
    xr, yr = torch.randn(32, 3, 32, 32), torch.randint(0, 10, (32,))
    for preset in ("npu_cnn", "npu_transformer", "cpu"):
        qmodel = rq_torch.quantize_model(resnet, xr[:1], preset=preset)
        rq_torch.calibrate(qmodel, [xr], quiet=True)
        float_ms, qat_ms = paired_step_ms(resnet, qmodel, xr, yr, repeats=20)
        lines.append(f"| {preset} | {float_ms:.1f} | {qat_ms:.1f} | {qat_ms / float_ms:.2f}x |")
        record(AREA, f"QAT step / float step, ResNet-style, {preset} (goal <= 1.5x)", f"{qat_ms / float_ms:.2f}x", detail=DETAIL)
        print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    write(args.out.with_suffix(".headlines.json"))
    print(text)
    return text


if __name__ == "__main__":
    np.random.seed(0)
    main()
