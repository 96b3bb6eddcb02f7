"""What every framework package's export_onnx returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import onnx

from rq_common.format.validate import Violation


@dataclass
class ExportResult:
    """The int8 model written to ``path``, the format violations found in it (empty: it is in the
    format) and the canonicalizer's log of what it rewrote."""

    path: Path
    model: onnx.ModelProto
    violations: list[Violation]
    log: list[str] = field(default_factory=list)
