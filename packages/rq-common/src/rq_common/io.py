"""Writing output files whole or not at all, and ONNX models byte for byte deterministically."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import onnx

from rq_common.errors import OutputPathError


def check_output_path(path: str | Path, inputs: tuple = (), folder: bool = False) -> Path:
    """Before any work: ``path`` can be written (a file, or a folder with ``folder``) without
    overwriting one of ``inputs``, in a folder that exists or can be made, and that is writable.
    Raises OutputPathError naming what is wrong and what to do."""
    path = Path(path)
    for source in inputs:
        if isinstance(source, (str, Path)) and path.resolve() == Path(source).resolve():
            raise OutputPathError(f"the output {path} is the input model; write the int8 model to another path")
    if path.exists() and path.is_dir() != folder:
        kind = "a folder" if path.is_dir() else "a file"
        raise OutputPathError(f"the output {path} is {kind}; give a {'folder' if folder else 'file'} path")
    existing = path.parent if not folder else path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise OutputPathError(f"cannot write {path}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK):
        raise OutputPathError(f"cannot write {path}: the folder {existing} is not writable; choose another output path")
    return path


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


PROTOBUF_LIMIT = 2**31 - 2**24  # a serialized ModelProto must stay under 2 GB; keep a margin


def is_over_protobuf_limit(model: onnx.ModelProto) -> bool:
    return model.ByteSize() > PROTOBUF_LIMIT


def save_with_external_data(model: onnx.ModelProto, folder: str | Path, name: str = "model.onnx") -> Path:
    """Save ``model`` as ``folder/name`` + ``folder/name.data`` (for models over the 2 GB limit).

    onnx moves the tensors of the proto it saves out to the file, so a copy is saved: the
    caller's model keeps its data."""
    path = Path(folder) / name
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    onnx.save_model(
        copy, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location=f"{name}.data", size_threshold=1024
    )
    return path


def save_onnx(model: onnx.ModelProto, path: str | Path) -> Path:
    """Serialize deterministically (the same model gives the same bytes) and write atomically."""
    return atomic_write_bytes(path, model.SerializeToString(deterministic=True))
