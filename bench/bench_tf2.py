"""rq-tf2 on the digits task: float vs PTQ vs QAT (fit()) accuracy per preset, the time of a QAT
training step against a float one (train_on_batch, same batch, same optimizer), and export time.

    nox -s bench            (or: python bench/bench_tf2.py)
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "packages" / "rq-tf2" / "tests"))
import nets  # noqa: E402  (rq-tf2's test networks)

import rq_tf2  # noqa: E402

sys.path.insert(0, str(HERE))
from qat_report import PRESETS, QatReport, paired_step_ms, timed_s  # noqa: E402

AREA = "rq-tf2"
DETAIL = "results/tf2.md"

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def data():
    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[..., None]
    return train_test_split(x, digits.target, test_size=0.3, random_state=0)


def accuracy(model, x, y) -> float:
    return float(np.mean(np.argmax(np.asarray(model.predict(x, verbose=0)), axis=1) == y))


def training_step(model, x, y):
    model.compile(keras.optimizers.SGD(1e-4), LOSS)
    return lambda: model.train_on_batch(x, y)


def step_ms(float_model, qmodel, x, y, repeats=50) -> tuple[float, float]:
    return paired_step_ms([training_step(float_model, x, y), training_step(qmodel, x, y)], repeats)


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--qat-epochs", type=int, default=3)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "tf2.md")
    args = parser.parse_args(argv)
    keras.utils.set_random_seed(0)
    x_train, x_test, y_train, y_test = data()
    model = nets.digits_cnn()
    model.compile(keras.optimizers.Adam(2e-3), LOSS)
    model.fit(x_train, y_train, batch_size=32, epochs=12, verbose=0)
    float_acc = accuracy(model, x_test, y_test)
    report = QatReport(
        AREA,
        DETAIL,
        title="rq-tf2 on load_digits (digits CNN: 2 conv + BN + ReLU, max-pool, dense)",
        versions=f"tensorflow {tf.__version__}, keras {keras.__version__}",
        setup=[
            f"float accuracy {100 * float_acc:.2f}%; PTQ on 256 training images; QAT {args.qat_epochs} epochs of fit() (Adam, lr 5e-4)",
            "step time: median of 50 train_on_batch steps on one batch of 32, float and quantized steps alternating",
        ],
        script="bench_tf2.py",
    )
    xb, yb = x_train[:32], y_train[:32]
    for preset in PRESETS:
        qmodel = rq_tf2.quantize_model(model, preset=preset, calib_dataset=x_train[:256], quiet=True)
        ptq = accuracy(qmodel, x_test, y_test)
        qmodel.compile(keras.optimizers.Adam(5e-4), LOSS)
        qmodel.fit(x_train, y_train, batch_size=32, epochs=args.qat_epochs, verbose=0)
        qat = accuracy(qmodel, x_test, y_test)
        steps = step_ms(model, qmodel, xb, yb)
        with tempfile.TemporaryDirectory() as tmp:
            export_s = timed_s(rq_tf2.export_onnx, qmodel, Path(tmp) / "m.onnx")
        report.digits_row(preset, (float_acc, ptq, qat), steps, export_s)
    report.step_table(
        "Training-step time on a larger network: ResNet-style (rq-tf2's test network), batch 32 of 32x32x3, median of 20 steps."
    )
    resnet = nets.randomize_batchnorm(nets.resnet_style(size=32))
    rng = np.random.default_rng(0)
    xr, yr = rng.standard_normal((32, 32, 32, 3)).astype(np.float32), rng.integers(0, 10, 32)
    for preset in PRESETS:
        qmodel = rq_tf2.quantize_model(resnet, preset=preset, calib_dataset=xr, quiet=True)
        report.step_row(preset, step_ms(resnet, qmodel, xr, yr, repeats=20))
    return report.save(args.out)


if __name__ == "__main__":
    main()
