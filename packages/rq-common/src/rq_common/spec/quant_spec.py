"""How one tensor is quantized: a frozen, validated description shared by every package."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from enum import Enum
from typing import Any

from rq_common.errors import SpecError
from rq_common.spec.dtypes import QuantDType


class Granularity(Enum):
    PER_TENSOR = "per_tensor"
    PER_CHANNEL = "per_channel"


class ScaleType(Enum):
    FLOAT = "float"
    POWER_OF_TWO = "power_of_two"


class RoundMode(Enum):
    """How x / scale becomes an integer.

    HALF_TO_EVEN is what ONNX QuantizeLinear does and the only mode the int8 format accepts.
    HALF_UP (floor(x + 0.5)) models TensorFlow's FakeQuant ops, so that their outputs can be compared.
    """

    HALF_TO_EVEN = "half_to_even"
    HALF_UP = "half_up"


@dataclass(frozen=True)
class QuantSpec:
    """The quantization of one tensor kind (activations, weights, bias).

    symmetric=True fixes the zero point: at ``zero_point`` when given, else at the middle of the
    integer range (0 for signed types, 128 for uint8). symmetric=False derives it from the range.
    narrow_range drops the lowest integer (int8 becomes [-127, 127]).
    """

    dtype: QuantDType = QuantDType.INT8
    symmetric: bool = True
    granularity: Granularity = Granularity.PER_TENSOR
    axis: int | None = None
    scale_type: ScaleType = ScaleType.FLOAT
    round_mode: RoundMode = RoundMode.HALF_TO_EVEN
    narrow_range: bool = False
    zero_point: int | None = None

    def __post_init__(self) -> None:
        for f in fields(self):
            object.__setattr__(self, f.name, _coerce(f.name, getattr(self, f.name)))
        if self.granularity is Granularity.PER_CHANNEL and self.axis is None:
            raise SpecError("axis", "per-channel quantization needs the channel axis; set axis=<int>")
        if self.granularity is Granularity.PER_TENSOR and self.axis is not None:
            raise SpecError("axis", "axis is only meaningful with granularity=per_channel; drop it")
        if self.zero_point is not None:
            if not self.symmetric:
                raise SpecError(
                    "zero_point",
                    "a fixed zero point needs symmetric=True; asymmetric specs derive it from the range",
                )
            if not self.qmin <= self.zero_point <= self.qmax:
                raise SpecError(
                    "zero_point",
                    f"{self.zero_point} is outside {self.dtype.value} range [{self.qmin}, {self.qmax}]",
                )

    @property
    def qmin(self) -> int:
        return self.dtype.min + 1 if self.narrow_range else self.dtype.min

    @property
    def qmax(self) -> int:
        return self.dtype.max

    @property
    def fixed_zero_point(self) -> int | None:
        """The zero point a symmetric spec always uses; None for asymmetric specs."""
        if not self.symmetric:
            return None
        if self.zero_point is not None:
            return self.zero_point
        return (self.qmin + self.qmax + 1) // 2

    @property
    def per_channel(self) -> bool:
        return self.granularity is Granularity.PER_CHANNEL

    @property
    def power_of_two(self) -> bool:
        return self.scale_type is ScaleType.POWER_OF_TWO

    def replace(self, **changes: Any) -> QuantSpec:
        unknown = set(changes) - {f.name for f in fields(self)}
        if unknown:
            raise SpecError(", ".join(sorted(unknown)), f"not a QuantSpec field; known: {_field_names()}")
        return replace(self, **changes)


_ENUM_FIELDS = {"dtype": QuantDType, "granularity": Granularity, "scale_type": ScaleType, "round_mode": RoundMode}


def coerce_enum(field: str, value: Any, enum_type: type[Enum]) -> Enum:
    """An enum member from itself or its string value ("int8"); anything else is a SpecError naming the field."""
    if isinstance(value, enum_type):
        return value
    try:
        return enum_type(str(value).lower())
    except ValueError:
        allowed = ", ".join(m.value for m in enum_type)
        raise SpecError(field, f"{value!r} is not one of: {allowed}") from None


def _coerce(name: str, value: Any) -> Any:
    enum_type = _ENUM_FIELDS.get(name)
    return value if enum_type is None else coerce_enum(name, value, enum_type)


def _field_names() -> str:
    return ", ".join(f.name for f in fields(QuantSpec))
