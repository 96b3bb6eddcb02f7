"""What every rq package returns once it has made an int8 model: one type for rq-onnx's
quantize_static, rq-tf1's quantize_frozen_graph and rq-torch's and rq-tf2's export_onnx."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import onnx

from rq_common.format.validate import Violation
from rq_common.pipeline.placement import FloatOp
from rq_common.qmath import QParams
from rq_common.report import QuantReport
from rq_common.spec import Preset


@dataclass
class QuantizeResult:
    """The int8 model, what was quantized and what was not, and what rq noticed on the way.

    ``path``: the int8 ONNX file (None: not written). ``quantized_ops``: the nodes (layers, modules)
    that run quantized; ``float_ops``: those kept in float, with the reason. ``notes``: what rq
    changed or warns about (repaired NPU positions, random calibration data, ...). ``violations``:
    how the model departs from the preset's format (empty: it is in the format). ``qparams``: the
    scale table, each activation quantizer (by tensor or quantizer name) -> its QParams. ``log``:
    the canonicalizer's rewrites of an exporter's graph. ``files``: every file written, by role
    ("onnx", "eval_model", "report"). ``report``: the accuracy report, where the package makes one.
    """

    path: Path | None
    model: onnx.ModelProto
    preset: Preset
    quantized_ops: list[str] = field(default_factory=list)
    float_ops: list[FloatOp] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    violations: list[Violation] = field(default_factory=list)
    qparams: dict[str, QParams] = field(default_factory=dict)
    log: list[str] = field(default_factory=list)
    files: dict[str, Path] = field(default_factory=dict)
    report: QuantReport | None = None
