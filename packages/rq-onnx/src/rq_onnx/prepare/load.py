"""Loading a model from a path or a ModelProto, with errors that say what is wrong."""

from __future__ import annotations

from pathlib import Path

import onnx
from google.protobuf.message import DecodeError

from rq_onnx.errors import ModelLoadError


def load_model(model_input: str | Path | onnx.ModelProto) -> onnx.ModelProto:
    """A private copy of the model (the caller's object and file are never modified)."""
    if isinstance(model_input, onnx.ModelProto):
        model = onnx.ModelProto()
        model.CopyFrom(model_input)
        return model
    path = Path(model_input)
    if not path.is_file():
        raise ModelLoadError(f"{path}: no such model file")
    try:
        model = onnx.load(str(path))
    except (DecodeError, RuntimeError, ValueError, OSError) as error:
        raise ModelLoadError(f"{path} is not an ONNX model ({type(error).__name__}: {error}); pass a .onnx file") from None
    if not model.graph.node:
        raise ModelLoadError(f"{path} holds no graph nodes; is it an ONNX model?")
    return model
