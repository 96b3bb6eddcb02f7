"""The main job, end to end on shipped data, through every rq package.

A small CNN is trained in PyTorch on scikit-learn's load_digits (no downloads). Its float weights
go, with explicit layout conversions (same_network.py), into a PyTorch model, a Keras model, a
frozen TF1 graph and a float ONNX model. Each is quantized by its rq package (rq-torch, rq-tf2,
rq-tf1, rq-onnx) for the NPU (npu_cnn) and for the CPU (cpu), following the flow users know:
calibrate on 256 training images (PTQ), check the accuracy, fine-tune with QAT when the drop
exceeds --qat-threshold (in the frameworks that train: PyTorch and Keras), export int8 ONNX. ONNX
Runtime runs every int8 model on the test digits; one table comes out, with an HTML report.

    python examples/digits_demo.py --out out/demo [--quiet]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import same_network  # noqa: E402

NETWORK = "digits_cnn"
PRESETS = ("npu_cnn", "cpu")
FRAMEWORKS = ("onnx", "torch", "tf2", "tf1")
CALIBRATION_IMAGES = 256


@dataclass
class Data:
    x_train: np.ndarray  # NCHW
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def load_data(seed: int = 0) -> Data:
    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None]
    order = np.random.default_rng(seed).permutation(len(x))
    x, y = x[order], digits.target[order]
    split = int(0.7 * len(x))
    return Data(x[:split], y[:split], x[split:], y[split:])


def train_float(data: Data, epochs: int = 15) -> dict[str, np.ndarray]:
    """The float CNN, trained in PyTorch (deterministic on one thread); its weights in PyTorch's layout."""
    import torch

    torch.manual_seed(0)
    model = same_network.torch_model(NETWORK, same_network.make_weights(NETWORK))
    _fit_torch(model, model.parameters(), data, epochs, lr=3e-3)
    model.eval()
    return {k.removeprefix("mods."): v.detach().numpy().copy() for k, v in model.state_dict().items() if "num_batches" not in k}


def _fit_torch(model, params, data: Data, epochs: int, lr: float) -> None:
    import torch
    from torch import nn

    optimizer = torch.optim.Adam(params, lr=lr)
    generator = torch.Generator().manual_seed(0)
    x, y = torch.from_numpy(data.x_train), torch.from_numpy(data.y_train)
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(x), generator=generator)
        for i in range(0, len(x), 32):
            batch = order[i : i + 32]
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x[batch]), y[batch]).backward()
            optimizer.step()
    model.eval()


def evaluate(path: Path, data: Data, nhwc: bool) -> tuple[float, float]:
    """Accuracy on the test digits and the median latency of one image (batch 1, as the NPU runs)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    x = same_network.to_nhwc(data.x_test) if nhwc else data.x_test
    logits, times = [], []
    for i in range(len(x)):
        start = time.perf_counter()
        logits.append(session.run(None, {name: x[i : i + 1]})[0])
        times.append(time.perf_counter() - start)
    return float(np.mean(np.concatenate(logits).argmax(1) == data.y_test)), 1000 * statistics.median(times)


# -- one function per package: PTQ, and QAT where the framework trains --------------------------------
def with_onnx(weights, data: Data, preset: str, out: Path, qat: bool, quiet: bool) -> Path:
    from rq_onnx import ArrayReader, quantize_static

    same_network.float_onnx(NETWORK, weights, out / "digits_float.onnx")
    reader = ArrayReader({"x": data.x_train[:CALIBRATION_IMAGES]}, batch_size=1)
    result = quantize_static(out / "digits_float.onnx", out / f"onnx_{preset}.onnx", reader, preset=preset, quiet=quiet)
    result.report.to_html(out / f"report_{preset}.html")
    return result.path


def with_torch(weights, data: Data, preset: str, out: Path, qat: bool, quiet: bool) -> Path:
    import torch

    import rq_torch

    example = torch.zeros(1, *same_network.INPUTS[NETWORK])
    qmodel = rq_torch.quantize_model(same_network.torch_model(NETWORK, weights), example, preset=preset)
    batches = [torch.from_numpy(data.x_train[i : i + 32]) for i in range(0, CALIBRATION_IMAGES, 32)]
    rq_torch.calibrate(qmodel, batches, quiet=quiet)
    if qat:
        torch.manual_seed(0)
        _fit_torch(qmodel, rq_torch.weight_parameters(qmodel), data, epochs=2, lr=5e-4)
    return rq_torch.export_onnx(qmodel, example, out / f"torch_{preset}.onnx").path


def with_tf2(weights, data: Data, preset: str, out: Path, qat: bool, quiet: bool) -> Path:
    import keras

    import rq_tf2

    keras.utils.set_random_seed(0)
    calibration = same_network.to_nhwc(data.x_train[:CALIBRATION_IMAGES])
    qmodel = rq_tf2.quantize_model(
        same_network.keras_model(NETWORK, weights), preset=preset, calib_dataset=calibration, quiet=quiet
    )
    if qat:
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        qmodel.compile(keras.optimizers.Adam(5e-4), loss)
        qmodel.fit(same_network.to_nhwc(data.x_train), data.y_train, batch_size=32, epochs=2, verbose=0, shuffle=False)
    return rq_tf2.export_onnx(qmodel, out / f"tf2_{preset}.onnx").path


def with_tf1(weights, data: Data, preset: str, out: Path, qat: bool, quiet: bool) -> Path:
    import rq_tf1

    graph = same_network.tf1_graph(NETWORK, weights, out / "digits_float.pb")
    calibration = same_network.to_nhwc(data.x_train[:CALIBRATION_IMAGES])
    result = rq_tf1.quantize_frozen_graph(
        graph,
        ["x"],
        ["logits"],
        lambda i: {"x": calibration[32 * i : 32 * (i + 1)]},
        max_calibration_batches=CALIBRATION_IMAGES // 32,
        output_dir=out / f"tf1_{preset}",
        preset=preset,
        quiet=quiet,
    )
    return result.path


QUANTIZERS = {"onnx": with_onnx, "torch": with_torch, "tf2": with_tf2, "tf1": with_tf1}
TRAINS = {"torch", "tf2"}  # the packages with QAT; ONNX and TF1 graphs are PTQ only


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("out/demo"))
    parser.add_argument(
        "--qat-threshold", type=float, default=0.1, help="fine-tune with QAT when PTQ loses more points than this"
    )
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    import torch

    torch.set_num_threads(1)  # deterministic training
    data = load_data()
    weights = train_float(data)
    same_network.float_onnx(NETWORK, weights, args.out / "digits_float.onnx")
    float_accuracy, float_ms = evaluate(args.out / "digits_float.onnx", data, nhwc=False)
    float_size = (args.out / "digits_float.onnx").stat().st_size
    rows = []
    print(
        f"float CNN (PyTorch-trained): accuracy {100 * float_accuracy:.2f}%, {float_size / 1024:.1f} KiB, {float_ms:.3f} ms/image"
    )
    for preset in PRESETS:
        for framework in FRAMEWORKS:
            path = QUANTIZERS[framework](weights, data, preset, args.out, False, args.quiet)
            accuracy, ms = evaluate(path, data, nhwc=framework in ("tf2", "tf1"))
            step = "PTQ"
            if 100 * (float_accuracy - accuracy) > args.qat_threshold and framework in TRAINS:
                path = QUANTIZERS[framework](weights, data, preset, args.out, True, args.quiet)
                accuracy, ms = evaluate(path, data, nhwc=framework in ("tf2", "tf1"))
                step = "PTQ + QAT"
            rows.append(
                {
                    "framework": framework,
                    "preset": preset,
                    "step": step,
                    "accuracy": accuracy,
                    "drop": float_accuracy - accuracy,
                    "size": path.stat().st_size,
                    "ms": ms,
                    "path": path,
                }
            )
    print_table(rows, float_accuracy, float_size, float_ms, args.out)
    return rows


def print_table(rows, float_accuracy, float_size, float_ms, out: Path) -> None:
    names = {"onnx": "ONNX (rq-onnx)", "torch": "PyTorch (rq-torch)", "tf2": "Keras (rq-tf2)", "tf1": "TF1 graph (rq-tf1)"}
    print()
    print("| framework | preset | steps | accuracy | drop (points) | size (KiB) | latency (ms/image) |")
    print("|---|---|---|---:|---:|---:|---:|")
    print(f"| float | - | - | {100 * float_accuracy:.2f}% | - | {float_size / 1024:.1f} | {float_ms:.3f} |")
    for r in rows:
        print(
            f"| {names[r['framework']]} | {r['preset']} | {r['step']} | {100 * r['accuracy']:.2f}% | "
            f"{100 * r['drop']:+.2f} | {r['size'] / 1024:.1f} | {r['ms']:.3f} |"
        )
    print()
    print(f"int8 models: {out}/  (every one in rq's format; `rq-onnx check <file> --preset <preset>`)")
    for preset in PRESETS:
        print(f"report ({preset}, per-tensor error, worst first): {out / f'report_{preset}.html'}")


if __name__ == "__main__":
    main()
