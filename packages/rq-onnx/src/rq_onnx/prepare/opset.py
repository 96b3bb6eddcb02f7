"""Bring the default-domain opset to rq's (DEFAULT_OPSET, 17) from 10 or later; older models are rejected."""

from __future__ import annotations

import onnx
from onnx import version_converter

from rq_common.format import DEFAULT_OPSET
from rq_onnx.errors import ModelLoadError

TARGET_OPSET = DEFAULT_OPSET
OLDEST_OPSET = 10


def default_opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def upgrade_opset(model: onnx.ModelProto, notes: list[str]) -> onnx.ModelProto:
    opset = default_opset(model)
    if opset >= TARGET_OPSET:
        return model
    if opset < OLDEST_OPSET:
        raise ModelLoadError(
            f"the model uses opset {opset}; rq-onnx reads opset {OLDEST_OPSET} and later. Re-export it with a newer "
            f"opset (torch.onnx.export(..., opset_version={TARGET_OPSET}), tf2onnx --opset {TARGET_OPSET})"
        )
    try:
        converted = version_converter.convert_version(model, TARGET_OPSET)
    except Exception as error:  # the converter raises bare RuntimeErrors from C++
        raise ModelLoadError(
            f"could not convert the model from opset {opset} to {TARGET_OPSET}: {error}; re-export it with opset {TARGET_OPSET}"
        ) from None
    notes.append(f"opset upgraded from {opset} to {TARGET_OPSET}")
    return converted
