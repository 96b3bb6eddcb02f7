"""rq-torch on the digits task: float vs PTQ vs QAT accuracy per preset, the time of a QAT training
step against a float one (same batch, same optimizer), and export time. One run, one table.

    nox -s bench            (or: python bench/bench_torch.py)
"""

from __future__ import annotations

import argparse
import sys
import tempfile
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
from qat_report import PRESETS, QatReport, paired_step_ms, timed_s  # noqa: E402

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


def training_step(model, params, x, y):
    model.train()
    optimizer = torch.optim.SGD(params, lr=1e-4)

    def step():
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()

    return step


def step_ms(float_model, qmodel, x, y, repeats=50) -> tuple[float, float]:
    float_step = training_step(float_model, float_model.parameters(), x, y)
    return paired_step_ms([float_step, training_step(qmodel, rq_torch.weight_parameters(qmodel), x, y)], repeats)


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
    report = QatReport(
        AREA,
        DETAIL,
        title="rq-torch on load_digits (DigitsCNN: 2 conv + BN + ReLU, max-pool, linear)",
        versions=f"torch {torch.__version__}, {torch.get_num_threads()} threads",
        setup=[
            f"float accuracy {100 * float_acc:.2f}%; PTQ on 256 training images; QAT {args.qat_epochs} epochs (Adam, lr 5e-4)",
            "step time: median of 50 training steps on one batch of 32, float and quantized steps alternating",
        ],
        script="bench_torch.py",
    )
    xb, yb = x_train[:32], y_train[:32]
    for preset in PRESETS:
        qmodel = rq_torch.quantize_model(model, x_test[:1], preset=preset)
        rq_torch.calibrate(qmodel, [x_train[i : i + 32] for i in range(0, 256, 32)], quiet=True)
        ptq = accuracy(qmodel, x_test, y_test)
        train(qmodel, rq_torch.weight_parameters(qmodel), x_train, y_train, epochs=args.qat_epochs, lr=5e-4)
        qat = accuracy(qmodel, x_test, y_test)
        steps = step_ms(model, qmodel, xb, yb)
        with tempfile.TemporaryDirectory() as tmp:
            export_s = timed_s(rq_torch.export_onnx, qmodel, x_test[:1], Path(tmp) / "m.onnx")
        report.digits_row(preset, (float_acc, ptq, qat), steps, export_s)
    report.step_table(
        "Training-step time on a larger network: ResNet-style (rq-torch's test network), batch 32 of 3x32x32, median of 20 steps."
    )
    resnet = nets.randomize_batchnorm(nets.ResNetStyle()).eval()
    xr, yr = torch.randn(32, 3, 32, 32), torch.randint(0, 10, (32,))
    for preset in PRESETS:
        qmodel = rq_torch.quantize_model(resnet, xr[:1], preset=preset)
        rq_torch.calibrate(qmodel, [xr], quiet=True)
        report.step_row(preset, step_ms(resnet, qmodel, xr, yr, repeats=20))
    return report.save(args.out)


if __name__ == "__main__":
    np.random.seed(0)
    main()
