"""Integer types a tensor can be quantized to, with their ranges and ONNX/numpy types."""

from __future__ import annotations

from enum import Enum

import numpy as np
from onnx import TensorProto

from rq_common.errors import SpecError


class QuantDType(Enum):
    INT8 = "int8"
    UINT8 = "uint8"
    INT16 = "int16"
    INT32 = "int32"

    @property
    def np_dtype(self) -> np.dtype:
        return _NP_DTYPES[self]

    @property
    def min(self) -> int:
        return _RANGES[self][0]

    @property
    def max(self) -> int:
        return _RANGES[self][1]

    @property
    def bits(self) -> int:
        return self.np_dtype.itemsize * 8

    @property
    def signed(self) -> bool:
        return self.min < 0

    @property
    def onnx_type(self) -> int:
        return _ONNX_TYPES[self]

    @classmethod
    def from_onnx(cls, elem_type: int) -> QuantDType:
        for dtype, onnx_type in _ONNX_TYPES.items():
            if onnx_type == elem_type:
                return dtype
        raise SpecError("dtype", f"ONNX element type {TensorProto.DataType.Name(elem_type)} is not a quantized type")

    @classmethod
    def from_numpy(cls, dtype: np.dtype) -> QuantDType:
        return cls(np.dtype(dtype).name)


_ONNX_TYPES = {
    QuantDType.INT8: TensorProto.INT8,
    QuantDType.UINT8: TensorProto.UINT8,
    QuantDType.INT16: TensorProto.INT16,
    QuantDType.INT32: TensorProto.INT32,
}
# looked up on every QParams: computed once
_NP_DTYPES = {d: np.dtype(d.value) for d in QuantDType}
_RANGES = {d: (int(np.iinfo(d.value).min), int(np.iinfo(d.value).max)) for d in QuantDType}
