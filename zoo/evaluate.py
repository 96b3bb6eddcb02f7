"""Running ONNX files on zoo samples in ONNX Runtime: outputs for the metric, and latency."""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from zoo.core import Samples

THREADS = 2  # as the zoo table says: batch 1, 2 threads


def session(path: Path, threads: int = THREADS, as_written: bool = False) -> ort.InferenceSession:
    """``as_written``: no graph optimizations, so DequantizeLinear -> op -> QuantizeLinear runs as
    written (float arithmetic on the dequantized values) instead of in ORT's fused integer kernels."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    if as_written:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def feed(sess: ort.InferenceSession, sample: tuple[np.ndarray, ...]) -> dict[str, np.ndarray]:
    return {i.name: a for i, a in zip(sess.get_inputs(), sample, strict=True)}


def run_all(path: Path, samples: Samples, as_written: bool = False) -> list[list[np.ndarray]]:
    sess = session(path, as_written=as_written)
    return [sess.run(None, feed(sess, sample)) for sample in samples.inputs]


def interleaved_latency(
    paths: dict[str, Path], sample: tuple[np.ndarray, ...], rounds: int = 30, warmup: int = 3
) -> dict[str, float]:
    """Median milliseconds of one batch-1 run of each model, the models taking turns in one loop so
    that the machine's noise falls on all of them alike."""
    sessions = {name: session(path) for name, path in paths.items()}
    feeds = {name: feed(s, sample) for name, s in sessions.items()}
    times: dict[str, list[float]] = {name: [] for name in sessions}
    for i in range(warmup + rounds):
        for name, sess in sessions.items():
            start = time.perf_counter()
            sess.run(None, feeds[name])
            if i >= warmup:
                times[name].append(time.perf_counter() - start)
    return {name: 1000 * statistics.median(t) for name, t in times.items()}
