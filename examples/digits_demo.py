"""The main job, end to end on shipped data: float model -> calibrate -> int8 ONNX -> accuracy.

A small MLP is trained with numpy on scikit-learn's load_digits (no downloads), written as a
float ONNX model, calibrated through ONNX Runtime with rq_common's observers and range choosers,
written in the rq int8 format with rq_common's builders for every preset, checked by the
validator, and run in ONNX Runtime. It prints one table and writes an HTML report per preset.

    python examples/digits_demo.py --out out/demo [--quiet]
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from sklearn.datasets import load_digits
from tqdm import tqdm

from rq_common import Calibrator, bias_qparams, get_preset
from rq_common.format import insert_qdq, make_quantized_constant, validate
from rq_common.io import save_onnx
from rq_common.report import QuantReport

HIDDEN = 48
ACTIVATIONS = ["x", "hidden", "logits"]  # the run-time tensors that get Q/DQ


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


def session(model: onnx.ModelProto) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def with_outputs(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    """The float model with intermediate tensors exposed, so one run gives every activation."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    existing = {o.name for o in out.graph.output}
    out.graph.output.extend(helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in names if n not in existing)
    return out


def calibrate(model: onnx.ModelProto, batches: list[np.ndarray], preset, quiet: bool) -> dict:
    calibrators = {n: Calibrator(preset.activation, preset.activation_method, name=n) for n in ACTIVATIONS}
    runner = session(with_outputs(model, ACTIVATIONS[1:]))
    names = [o.name for o in runner.get_outputs()]
    for batch in tqdm(batches, desc=f"calibrate {preset.name}", disable=quiet, file=sys.stdout):
        values = dict(zip(names, runner.run(None, {"x": batch})))
        values["x"] = batch
        for name, calibrator in calibrators.items():
            calibrator.update(values[name])
    return {name: c.qparams() for name, c in calibrators.items()}


def quantize(model: onnx.ModelProto, params: dict[str, np.ndarray], act_qparams: dict, preset) -> onnx.ModelProto:
    """Write the int8 format: int8 weights + DQ, bias per the preset's rule, Q/DQ on activations."""
    q = onnx.ModelProto()
    q.CopyFrom(model)
    del q.graph.initializer[:]
    weight_spec = preset.weight
    for gemm, w, b, source in (("fc1", "W1", "B1", "x"), ("fc2", "W2", "B2", "hidden")):
        calibrator = Calibrator(weight_spec, preset.weight_method, name=w)
        calibrator.update(params[w])
        w_qp = calibrator.qparams()
        b_qp = bias_qparams(params[b], act_qparams[source], w_qp, preset.bias, preset.bias_rule)
        node = next(n for n in q.graph.node if n.name == gemm)
        for slot, name, qp in ((1, w, w_qp), (2, b, b_qp)):
            pieces = make_quantized_constant(name, params[name], qp)
            pieces.add_to(q.graph, 0)
            node.input[slot] = pieces.output
    for name in ACTIVATIONS:
        insert_qdq(q, name, act_qparams[name])
    return q


def accuracy(model: onnx.ModelProto, data: Data) -> tuple[float, np.ndarray, float]:
    runner = session(model)
    start = time.perf_counter()
    (logits,) = runner.run(None, {"x": data.x_test})
    elapsed = time.perf_counter() - start
    return float(np.mean(logits.argmax(1) == data.y_test)), logits, elapsed


def error_report(fmodel: onnx.ModelProto, qmodel: onnx.ModelProto, x: np.ndarray, title: str) -> QuantReport:
    """SQNR of the int8 model's hidden layer and logits against the float model's."""
    (f_hidden, f_logits) = session(with_outputs(fmodel, ["hidden"])).run(["hidden", "logits"], {"x": x})
    (q_hidden, q_logits) = session(with_outputs(qmodel, ["hidden_dequantized"])).run(["hidden_dequantized", "logits"], {"x": x})
    report = QuantReport(title=title)
    report.stats("hidden").update(f_hidden, q_hidden)
    report.stats("logits").update(f_logits, q_logits)
    return report


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("out/demo"))
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--calib-batches", type=int, default=10)
    args = parser.parse_args(argv)

    data = load_data()
    params = train_mlp(data)
    fmodel = float_model(params)
    save_onnx(fmodel, args.out / "digits_float.onnx")
    float_acc, _, _ = accuracy(fmodel, data)
    batches = np.array_split(data.x_train[: 32 * args.calib_batches], args.calib_batches)

    rows = []
    for preset_name in ("npu_cnn", "npu_transformer", "cpu"):
        preset = get_preset(preset_name)
        qmodel = quantize(fmodel, params, calibrate(fmodel, batches, preset, args.quiet), preset)
        violations = validate(qmodel, preset)
        if violations:
            raise SystemExit("\n".join(str(v) for v in violations))
        path = save_onnx(qmodel, args.out / f"digits_{preset_name}.onnx")
        acc, _, seconds = accuracy(qmodel, data)
        report = error_report(fmodel, qmodel, data.x_test, f"digits MLP, preset {preset_name}")
        report.to_html(args.out / f"report_{preset_name}.html")
        rows.append(
            dict(
                preset=preset_name,
                accuracy=acc,
                drop=float_acc - acc,
                bytes=path.stat().st_size,
                sqnr=report.tensors["logits"].sqnr_db,
                ms=1000 * seconds,
            )
        )

    print(
        f"\nfloat model: accuracy {100 * float_acc:.2f}% on {len(data.y_test)} test digits, {(args.out / 'digits_float.onnx').stat().st_size} bytes"
    )
    print(f"{'preset':<16}{'accuracy':>10}{'drop':>8}{'logit SQNR':>12}{'bytes':>8}{'ms/batch':>10}")
    for r in rows:
        print(
            f"{r['preset']:<16}{100 * r['accuracy']:>9.2f}%{100 * r['drop']:>7.2f}p{r['sqnr']:>10.1f}dB{r['bytes']:>8}{r['ms']:>10.2f}"
        )
    print(
        f"int8 models, reports: {args.out}/ (digits_<preset>.onnx, report_<preset>.html); every model passed the rq format validator"
    )
    return rows


if __name__ == "__main__":
    main()
