"""Bring the default-domain opset to rq's (DEFAULT_OPSET, 17; 21 for 16-bit tensors) with onnx's version converter.

The classic ONNX Model Zoo CNNs are opset 7 to 9; the converter upgrades them with the same outputs
(Upsample becomes Resize, BatchNormalization loses its spatial attribute). Older opsets predate
the ops' current forms and are refused, as is anything the converter cannot convert.
"""

from __future__ import annotations

import onnx
from onnx import version_converter

from rq_common.format.canonicalize import DEFAULT_OPSET, SIXTEEN_BIT_OPSET, stores_sixteen_bits
from rq_common.spec import Preset
from rq_onnx.errors import ModelLoadError

TARGET_OPSET = DEFAULT_OPSET
OLDEST_OPSET = 7


def default_opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def opset_for(preset: Preset) -> int:
    """The opset a preset's quantized model needs: 21 where a tensor is stored in 16 bits."""
    return SIXTEEN_BIT_OPSET if stores_sixteen_bits(preset) else TARGET_OPSET


def upgrade_opset(model: onnx.ModelProto, notes: list[str], target: int = TARGET_OPSET) -> onnx.ModelProto:
    opset = default_opset(model)
    if opset >= target:
        return model
    if opset < OLDEST_OPSET:
        raise ModelLoadError(
            f"the model uses opset {opset}; rq-onnx reads opset {OLDEST_OPSET} and later. Re-export it with a newer "
            f"opset (torch.onnx.export(..., opset_version={TARGET_OPSET}), tf2onnx --opset {TARGET_OPSET})"
        )
    try:
        converted = version_converter.convert_version(model, target)
    except Exception as error:  # the converter raises bare RuntimeErrors from C++, naming the op
        reason = " ".join(str(error).split())
        raise ModelLoadError(
            f"onnx's version converter cannot bring the model from opset {opset} to {target} ({reason}); "
            f"re-export it with opset {target}"
        ) from None
    # the converter keeps the IR version, and opset 17 or 21 needs a newer one than an opset-7 model has
    needed = onnx.helper.find_min_ir_version_for(list(converted.opset_import), ignore_unknown=True)
    converted.ir_version = max(converted.ir_version, needed)
    notes.append(f"opset upgraded from {opset} to {target}" + (" (16-bit Q/DQ)" if target == SIXTEEN_BIT_OPSET else ""))
    return converted
