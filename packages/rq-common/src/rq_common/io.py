"""Writing output files whole or not at all, and ONNX models byte for byte deterministically."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import onnx


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write via a temporary file in the same folder, then rename: never a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def save_onnx(model: onnx.ModelProto, path: str | Path) -> Path:
    """Serialize deterministically (the same model gives the same bytes) and write atomically."""
    return atomic_write_bytes(path, model.SerializeToString(deterministic=True))
