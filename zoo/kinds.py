"""The words a zoo model is described in: its framework, the two sample splits, the samples
themselves, and a TF1 frozen graph's handle. Imports nothing of the zoo (zoo.core and
zoo.frameworks both read it)."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


class Framework(enum.Enum):
    ONNX = "onnx"
    TORCH = "torch"
    TF2 = "tf2"
    TF1 = "tf1"


class Split(enum.Enum):
    """Calibration and evaluation samples never overlap: each split has its own seed."""

    CALIBRATION = 1
    EVALUATION = 2


@dataclass(frozen=True)
class Samples:
    """Model inputs, one sample per entry (batch 1, in the model's input order), and the ground
    truth of each sample where the data has one (``None`` where the metric is agreement with float)."""

    inputs: list[tuple[np.ndarray, ...]]
    truth: list[Any] | None = None

    def __len__(self) -> int:
        return len(self.inputs)


@dataclass(frozen=True)
class FrozenGraph:
    """A TF1 frozen GraphDef as vai_q_tensorflow users bring it: the .pb and its input and output
    nodes, input shapes with ``None`` for the batch."""

    path: Path
    input_nodes: list[str]
    output_nodes: list[str]
    input_shapes: list[tuple[int | None, ...]]
