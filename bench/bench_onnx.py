"""rq-onnx against ONNX Runtime's quantize_static, side by side in one run.

Both quantize the same float models with the same calibration data:
- accuracy on the load_digits test set (an MLP trained with scikit-learn);
- output SQNR against float on the three test networks (ResNet-style, MobileNetV2-style,
  transformer encoder), on held-out inputs;
- calibration wall time and peak RSS (each run in a fresh process) at 64, 256 and 1024 samples
  for MinMax, Entropy and Percentile;
- latency in ONNX Runtime, batch 1, median of many runs: float, ORT int8, rq int8.
ORT runs with its CPU settings (QDQ, uint8 activations, int8 per-channel weights); rq with preset
`cpu` (the same U8S8 scheme), plus `npu_cnn` for accuracy and SQNR.

    nox -s bench            (or: python bench/bench_onnx.py)
"""

from __future__ import annotations

import argparse
import datetime
import json
import multiprocessing
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime import quantization as ortq
from onnxruntime.quantization.shape_inference import quant_pre_process

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "packages" / "rq-onnx" / "tests"))
import nets  # noqa: E402  (the test networks)

import rq_onnx  # noqa: E402
from rq_onnx import quantize_static  # noqa: E402

sys.path.insert(0, str(HERE))
from headline import record, write  # noqa: E402

DETAIL = "results/onnx.md"

ORT_METHODS = {
    "minmax": ortq.CalibrationMethod.MinMax,
    "entropy": ortq.CalibrationMethod.Entropy,
    "percentile": ortq.CalibrationMethod.Percentile,
}


class Reader(ortq.CalibrationDataReader):
    """ORT's reader protocol over an array, one sample per batch (what both tools receive)."""

    def __init__(self, name: str, data: np.ndarray, batch: int = 1):
        self.name, self.data, self.batch, self.i = name, data, batch, 0

    def get_next(self):
        if self.i >= len(self.data):
            return None
        self.i += self.batch
        return {self.name: self.data[self.i - self.batch : self.i]}


def session(path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def ort_quantize(model_path, out, name, data, method="minmax", batch=1, preprocess=True):
    """ORT's documented flow: quant_pre_process (shape inference, BN folding), then quantize_static."""
    source = Path(str(out) + ".pre.onnx")
    if preprocess:
        quant_pre_process(str(model_path), str(source))
    else:
        source = Path(model_path)
    ortq.quantize_static(
        str(source),
        str(out),
        Reader(name, data, batch),
        quant_format=ortq.QuantFormat.QDQ,
        activation_type=ortq.QuantType.QUInt8,
        weight_type=ortq.QuantType.QInt8,
        per_channel=True,
        calibrate_method=ORT_METHODS[method],
    )


def rq_quantize(model_path, out, name, data, method="minmax", batch=1, preset="cpu"):
    quantize_static(
        str(model_path),
        str(out),
        Reader(name, data, batch),
        preset=preset,
        calibrate_method=method if preset == "cpu" else None,
        quiet=True,
        report_batches=1,
    )


def sqnr(ref, approx) -> float:
    ref = ref.astype(np.float64)
    return float(10 * np.log10(np.sum(ref**2) / np.sum((approx - ref) ** 2)))


def digits_model(folder: Path):
    model, x_train, x_test, _, y_test = nets.digits_mlp()
    path = folder / "digits.onnx"
    onnx.save(model, path)
    return path, x_train[:256], x_test, y_test


def accuracy(path, x, y) -> float:
    s = session(path)
    logits = np.concatenate([s.run(None, {"x": x[i : i + 1]})[0] for i in range(len(x))])
    return float(np.mean(logits.argmax(1) == y))


def calibration_worker(tool, model_path, out, name, shape, samples, method) -> None:
    """Runs in its own process (see measure_calibration): prints seconds and peak RSS as JSON.
    ORT's quant_pre_process runs before the clock starts: only calibration + quantization is timed."""
    data = np.random.default_rng(0).standard_normal((samples, *shape)).astype(np.float32)
    if tool == "ORT":
        quant_pre_process(str(model_path), str(out) + ".pre.onnx")
    start = time.perf_counter()
    if tool == "ORT":
        ort_quantize(str(out) + ".pre.onnx", out, name, data, method, preprocess=False)
    else:
        rq_quantize(model_path, out, name, data, method)
    seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, "rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def measure_calibration(tool, model_path, out, name, shape, samples, method) -> tuple[float, float]:
    """(seconds, peak RSS MiB) of one quantization in a fresh Python process."""
    spec = json.dumps([tool, str(model_path), str(out), name, list(shape), samples, method])
    done = subprocess.run([sys.executable, __file__, "--worker", spec], capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        raise RuntimeError(f"{tool} {method} {samples}: worker failed\n{done.stderr[-2000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return result["seconds"], result["rss_mib"]


def latency_ms(path, feed, runs: int) -> float:
    s = session(path)
    for _ in range(20):
        s.run(None, feed)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        s.run(None, feed)
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, nargs="+", default=[64, 256, 1024])
    parser.add_argument("--runs", type=int, default=300, help="latency runs per model")
    parser.add_argument("--calib-size", type=int, default=32, help="input height/width of the calibration benchmark")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "onnx.md")
    args = parser.parse_args(argv)
    lines = [
        "# rq-onnx vs ONNX Runtime quantize_static",
        "",
        f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}; machine: {platform.machine()}, {multiprocessing.cpu_count()} cores, python {platform.python_version()}",
        f"- versions: rq-onnx {rq_onnx.__version__}, onnxruntime {ort.__version__}, onnx {onnx.__version__}, numpy {np.__version__}",
        "- ORT: quant_pre_process, then quantize_static with QDQ, QUInt8 activations, QInt8 per-channel weights; rq: preset `cpu` (the same U8S8 scheme) unless named",
        "- rerun: `nox -s bench` (or `python bench/bench_onnx.py`)",
        "",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        # 1. accuracy on digits
        path, calib, x_test, y_test = digits_model(tmp)
        ort_quantize(path, tmp / "d_ort.onnx", "x", calib)
        rq_quantize(path, tmp / "d_rq.onnx", "x", calib)
        rq_quantize(path, tmp / "d_rq_npu.onnx", "x", calib, preset="npu_cnn")
        lines += ["## Accuracy, load_digits test set (540 digits)", "", "| model | accuracy |", "|---|---:|"]
        accuracies = {}
        for label, p in (
            ("float", path),
            ("ORT int8", tmp / "d_ort.onnx"),
            ("rq int8 (cpu)", tmp / "d_rq.onnx"),
            ("rq int8 (npu_cnn)", tmp / "d_rq_npu.onnx"),
        ):
            accuracies[label] = 100 * accuracy(p, x_test, y_test)
            lines.append(f"| {label} | {accuracies[label]:.2f}% |")
        rq_acc, ort_acc = accuracies["rq int8 (cpu)"], accuracies["ORT int8"]
        record("rq-onnx", "digits accuracy, U8S8", f"{rq_acc:.2f}%", f"{ort_acc:.2f}%", f"{rq_acc - ort_acc:+.2f} points", DETAIL)
        print("\n".join(lines[-6:]), flush=True)

        # 2. output SQNR on the test networks
        lines += [
            "",
            "## Output SQNR against float (dB, 32 held-out inputs)",
            "",
            "| network | ORT int8 | rq cpu | rq npu_cnn |",
            "|---|---:|---:|---:|",
        ]
        for label, build, name, shape in (
            ("ResNet-style", nets.resnet_block_net, "input", (3, 16, 16)),
            ("MobileNetV2-style", nets.mobilenet_v2_net, "input", (3, 32, 32)),
            ("transformer encoder", nets.transformer_encoder_net, "tokens", (8, 32)),
        ):
            model_path = tmp / f"{label}.onnx"
            onnx.save(build(), model_path)
            rng = np.random.default_rng(1)
            calib, test = (
                rng.standard_normal((64, *shape)).astype(np.float32),
                rng.standard_normal((32, *shape)).astype(np.float32),
            )
            ort_quantize(model_path, tmp / "o.onnx", name, calib)
            rq_quantize(model_path, tmp / "r.onnx", name, calib)
            rq_quantize(model_path, tmp / "n.onnx", name, calib, preset="npu_cnn")
            outs = {}
            for key, p in (("float", model_path), ("ort", tmp / "o.onnx"), ("rq", tmp / "r.onnx"), ("npu", tmp / "n.onnx")):
                s = session(p)
                outs[key] = np.concatenate([s.run(None, {name: test[i : i + 1]})[0] for i in range(len(test))])
            lines.append(
                f"| {label} | {sqnr(outs['float'], outs['ort']):.1f} | {sqnr(outs['float'], outs['rq']):.1f} | {sqnr(outs['float'], outs['npu']):.1f} |"
            )
            rq_db, ort_db = sqnr(outs["float"], outs["rq"]), sqnr(outs["float"], outs["ort"])
            record(
                "rq-onnx",
                f"output SQNR, {label}, U8S8",
                f"{rq_db:.1f} dB",
                f"{ort_db:.1f} dB",
                f"{rq_db - ort_db:+.1f} dB",
                DETAIL,
            )
            print(lines[-1], flush=True)

        # 3. calibration time and peak RSS
        model_path = tmp / "resnet.onnx"
        size = args.calib_size
        onnx.save(nets.resnet_block_net(size=size), model_path)
        lines += [
            "",
            f"## Calibration + quantization of the ResNet-style network (input 3x{size}x{size}), fresh process per cell",
            "",
            "| method | samples | ORT time (s) | rq time (s) | ORT / rq | ORT peak RSS (MiB) | rq peak RSS (MiB) |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for method in ORT_METHODS:
            for samples in args.samples:
                o_time, o_rss = measure_calibration("ORT", model_path, tmp / "o.onnx", "input", (3, size, size), samples, method)
                r_time, r_rss = measure_calibration("rq", model_path, tmp / "r.onnx", "input", (3, size, size), samples, method)
                lines.append(
                    f"| {method} | {samples} | {o_time:.2f} | {r_time:.2f} | {o_time / r_time:.2f}x | {o_rss:.0f} | {r_rss:.0f} |"
                )
                if samples == max(args.samples):
                    measure = f"{method} calibration + quantization, {samples} samples"
                    record(
                        "rq-onnx",
                        f"{measure}: time",
                        f"{r_time:.2f} s",
                        f"{o_time:.2f} s",
                        f"{o_time / r_time:.2f}x",
                        DETAIL,
                    )
                    record(
                        "rq-onnx",
                        f"{measure}: peak RSS",
                        f"{r_rss:.0f} MiB",
                        f"{o_rss:.0f} MiB",
                        f"{o_rss / r_rss:.2f}x",
                        DETAIL,
                    )
                print(lines[-1], flush=True)

        # 4. latency
        model_path = tmp / "resnet64.onnx"
        onnx.save(nets.resnet_block_net(size=64), model_path)
        calib = np.random.default_rng(2).standard_normal((32, 3, 64, 64)).astype(np.float32)
        ort_quantize(model_path, tmp / "lo.onnx", "input", calib)
        ort_quantize(model_path, tmp / "lraw.onnx", "input", calib, preprocess=False)
        rq_quantize(model_path, tmp / "lr.onnx", "input", calib)
        feed = {"input": calib[:1]}
        paths = (model_path, tmp / "lo.onnx", tmp / "lraw.onnx", tmp / "lr.onnx")
        float_ms, ort_ms, raw_ms, rq_ms = (latency_ms(p, feed, args.runs) for p in paths)
        lines += [
            "",
            f"## Latency, ResNet-style network at 3x64x64, batch 1, 2 threads, median of {args.runs} runs",
            "",
            "| model | ms | vs ORT int8 |",
            "|---|---:|---:|",
            f"| float | {float_ms:.3f} | {float_ms / ort_ms:.2f}x |",
            f"| ORT int8 (quant_pre_process first, as ORT documents) | {ort_ms:.3f} | 1.00x |",
            f"| ORT int8 without quant_pre_process (BatchNormalization left in float) | {raw_ms:.3f} | {raw_ms / ort_ms:.2f}x |",
            f"| rq int8 (cpu) | {rq_ms:.3f} | {rq_ms / ort_ms:.2f}x |",
        ]
        record(
            "rq-onnx",
            "int8 latency, ResNet-style 3x64x64, batch 1",
            f"{rq_ms:.3f} ms",
            f"{ort_ms:.3f} ms",
            f"{ort_ms / rq_ms:.2f}x",
            DETAIL,
        )
        print("\n".join(lines[-4:]), flush=True)
    text = "\n".join(lines) + "\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    write(args.out.with_suffix(".headlines.json"))
    print(f"\nwritten to {args.out}")
    return text


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        calibration_worker(*json.loads(sys.argv[2]))
    else:
        main()
