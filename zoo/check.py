"""Quick look at one zoo model in one process: the float metric, then rq per preset (and ONNX
Runtime's quantizer), on few samples. For working on a model; ``zoo.run`` makes the real table.

    python -m zoo.check ddddocr_ocr --presets cpu npu_cnn --n-calib 20 --n-eval 20
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from zoo import frameworks
from zoo.core import CACHE, Split
from zoo.evaluate import run_all
from zoo.registry import get


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--presets", nargs="*", default=None)
    parser.add_argument("--n-calib", type=int, default=20)
    parser.add_argument("--n-eval", type=int, default=20)
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--no-ort", action="store_true", help="skip ONNX Runtime's quantizer")
    args = parser.parse_args(argv)
    entry = get(args.model)
    work = args.work or CACHE / "check" / entry.name
    work.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    model = entry.load()
    float_path = entry.export_float(model, work / "float.onnx")
    print(f"{entry.name}: loaded and exported in {time.perf_counter() - start:.1f} s")
    calibration = entry.samples(Split.CALIBRATION, args.n_calib)
    evaluation = entry.samples(Split.EVALUATION, args.n_eval)
    reference = run_all(float_path, evaluation)
    print(f"  float: {entry.score(reference, reference, evaluation)}")
    candidates = {}
    if not args.no_ort:
        start = time.perf_counter()
        frameworks.ort_quantize(float_path, calibration, work / "ort_int8.onnx")
        candidates["ort"] = (work / "ort_int8.onnx", time.perf_counter() - start)
    for preset in args.presets or entry.presets:
        start = time.perf_counter()
        try:
            summary = frameworks.rq_quantize(entry, model, calibration, preset, work / f"rq_{preset}.onnx", work)
        except Exception as error:  # a look, not the table: show what broke and go on
            print(f"  rq {preset}: FAILED {type(error).__name__}: {error}")
            continue
        candidates[f"rq {preset}"] = (work / f"rq_{preset}.onnx", time.perf_counter() - start)
        print(f"  rq {preset}: {len(summary['violations'])} violations, {len(summary['float_ops'])} float ops")
    for name, (path, seconds) in candidates.items():
        print(f"  {name} ({seconds:.1f} s): {entry.score(run_all(path, evaluation), reference, evaluation)}")


if __name__ == "__main__":
    main()
