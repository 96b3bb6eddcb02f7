"""rq's accuracy algorithms as zoo columns: a preset's name and the algorithms turned on for it,
joined by '+' ("npu_cnn+adaround", "npu_transformer+adaround+bias_correction", "cpu+int16"), so
that one run measures each beside the defaults and ONNX Runtime's quantizer. The framework
packages do not offer these options yet: their columns are n/a."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any

from rq_common import get_preset
from zoo.kinds import Framework


class Algorithm(str, Enum):
    BIAS_CORRECTION = "bias_correction"  # quantize_static(bias_correction=True)
    ADAROUND = "adaround"  # quantize_static(rounding="adaround")
    INT16 = "int16"  # get_preset(name, activation_dtype="int16")


FRAMEWORKS_WITH_ALGORITHMS = frozenset({Framework.ONNX})


@dataclass(frozen=True)
class Variant:
    preset: str
    algorithms: tuple[Algorithm, ...] = ()

    @classmethod
    def parse(cls, name: str) -> Variant:
        preset, *algorithms = name.split("+")
        try:
            return cls(preset, tuple(Algorithm(a) for a in algorithms))
        except ValueError:
            choices = ", ".join(a.value for a in Algorithm)
            raise ValueError(f"{name!r}: an algorithm after '+' is one of {choices}") from None

    def offered_by(self, framework: Framework) -> bool:
        return not self.algorithms or framework in FRAMEWORKS_WITH_ALGORITHMS

    def onnx_arguments(self) -> dict[str, Any]:
        """quantize_static's preset and options for this variant."""
        overrides = {"activation_dtype": "int16"} if Algorithm.INT16 in self.algorithms else {}
        arguments: dict[str, Any] = {"preset": get_preset(self.preset, **overrides) if overrides else self.preset}
        if Algorithm.BIAS_CORRECTION in self.algorithms:
            arguments["bias_correction"] = True
        if Algorithm.ADAROUND in self.algorithms:
            arguments["rounding"] = "adaround"
        return arguments
