"""The main job, end to end on shipped data: float model -> calibrate -> int8 ONNX -> accuracy.

A small MLP is trained with numpy on scikit-learn's load_digits (no downloads) and written as a
float ONNX model; rq-onnx's quantize_static calibrates it in ONNX Runtime and writes the rq int8
format for every preset, checked by rq-common's validator; ONNX Runtime runs each int8 model on
the test digits. It prints one table and writes an HTML report per preset.

    python examples/digits_demo.py --out out/demo [--quiet]
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from sklearn.datasets import load_digits

from rq_common.io import save_onnx
from rq_onnx import ArrayReader, quantize_static

HIDDEN = 48


@dataclass
class Data:
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def load_data(seed: int = 0) -> Data:
    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    order = np.random.default_rng(seed).permutation(len(x))
    x, y = x[order], digits.target[order]
    split = int(0.7 * len(x))
    return Data(x[:split], y[:split], x[split:], y[split:])


def train_mlp(data: Data, epochs: int = 400, seed: int = 0) -> dict[str, np.ndarray]:
    """Full-batch gradient descent with momentum on softmax cross-entropy (float64, deterministic)."""
    rng = np.random.default_rng(seed)
    params = {
        "W1": rng.standard_normal((HIDDEN, 64)) * np.sqrt(2 / 64),
        "B1": np.zeros(HIDDEN),
        "W2": rng.standard_normal((10, HIDDEN)) * np.sqrt(2 / HIDDEN),
        "B2": np.zeros(10),
    }
    velocity = {k: np.zeros_like(v) for k, v in params.items()}
    x, onehot = data.x_train.astype(np.float64), np.eye(10)[data.y_train]
    for _ in range(epochs):
        pre = x @ params["W1"].T + params["B1"]
        hidden = np.maximum(pre, 0)
        logits = hidden @ params["W2"].T + params["B2"]
        prob = np.exp(logits - logits.max(1, keepdims=True))
        prob /= prob.sum(1, keepdims=True)
        d_logits = (prob - onehot) / len(x)
        d_hidden = (d_logits @ params["W2"]) * (pre > 0)
        grads = {"W2": d_logits.T @ hidden, "B2": d_logits.sum(0), "W1": d_hidden.T @ x, "B1": d_hidden.sum(0)}
        for k in params:
            velocity[k] = 0.9 * velocity[k] - 0.5 * grads[k]
            params[k] += velocity[k]
    return {k: v.astype(np.float32) for k, v in params.items()}


def float_model(params: dict[str, np.ndarray]) -> onnx.ModelProto:
    graph = helper.make_graph(
        [
            helper.make_node("Gemm", ["x", "W1", "B1"], ["pre"], name="fc1", transB=1),
            helper.make_node("Relu", ["pre"], ["hidden"], name="relu"),
            helper.make_node("Gemm", ["hidden", "W2", "B2"], ["logits"], name="fc2", transB=1),
        ],
        "digits_mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 64])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
        [numpy_helper.from_array(v, k) for k, v in params.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="rq-demo")
    model.ir_version = 8
    return model


def session(model) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])


def accuracy(model_path: Path, data: Data, batch_size: int) -> tuple[float, float]:
    """Test accuracy, and the median milliseconds per batch, run in the batches the target runs."""
    runner = session(model_path)
    logits, times = [], []
    for i in range(0, len(data.x_test), batch_size):
        start = time.perf_counter()
        logits.append(runner.run(None, {"x": data.x_test[i : i + batch_size]})[0])
        times.append(time.perf_counter() - start)
    return float(np.mean(np.concatenate(logits).argmax(1) == data.y_test)), 1000 * float(np.median(times))


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("out/demo"))
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--calib-samples", type=int, default=320)
    args = parser.parse_args(argv)

    data = load_data()
    float_path = save_onnx(float_model(train_mlp(data)), args.out / "digits_float.onnx")
    float_acc, float_ms = accuracy(float_path, data, 32)
    calibration = data.x_train[: args.calib_samples]

    rows = []
    for preset in ("npu_cnn", "npu_transformer", "cpu"):
        batch = 1 if preset == "npu_cnn" else 32  # the NPU model runs batch 1
        result = quantize_static(
            float_path,
            args.out / f"digits_{preset}.onnx",
            ArrayReader({"x": calibration}, batch),
            preset=preset,
            quiet=args.quiet,
            report_path=args.out / f"report_{preset}.html",
        )
        if result.violations:
            raise SystemExit("\n".join(str(v) for v in result.violations))
        acc, ms = accuracy(result.output_path, data, batch)
        size = result.output_path.stat().st_size
        rows.append(
            dict(
                preset=preset,
                accuracy=acc,
                drop=float_acc - acc,
                sqnr=result.report.tensors["logits"].sqnr_db,
                bytes=size,
                batch=batch,
                ms=ms,
            )
        )

    print(
        f"\nfloat model: accuracy {100 * float_acc:.2f}% on {len(data.y_test)} test digits, {float_path.stat().st_size} bytes, {float_ms:.3f} ms per batch of 32"
    )
    print(f"{'preset':<16}{'accuracy':>10}{'drop':>8}{'logit SQNR':>12}{'bytes':>8}{'batch':>7}{'ms/batch':>10}")
    for r in rows:
        print(
            f"{r['preset']:<16}{100 * r['accuracy']:>9.2f}%{100 * r['drop']:>7.2f}p{r['sqnr']:>10.1f}dB"
            f"{r['bytes']:>8}{r['batch']:>7}{r['ms']:>10.3f}"
        )
    print(
        f"int8 models and reports: {args.out}/ (digits_<preset>.onnx, report_<preset>.html); every model passed rq's format validator"
    )
    return rows


if __name__ == "__main__":
    main()
