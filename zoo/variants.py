"""rq's accuracy algorithms as zoo columns: a preset's name and the algorithms turned on for it,
joined by '+' ("npu_cnn+cle", "npu_cnn+adaround", "npu_transformer+adaround+bias_correction", "cpu+mixed"), so
that one run measures each beside the defaults and ONNX Runtime's quantizer. The framework
packages do not offer these options yet: their columns are n/a."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any

from rq_common import get_preset
from rq_common.pipeline.accuracy_loop import AccuracyTarget
from rq_common.pipeline.mixed_precision import MixedPrecision
from zoo.kinds import Framework


class Algorithm(str, Enum):
    CLE = "cle"  # quantize_static(equalization=True): cross-layer equalization
    BIAS_CORRECTION = "bias_correction"  # quantize_static(bias_correction=True)
    ADAROUND = "adaround"  # quantize_static(rounding="adaround")
    INT16 = "int16"  # get_preset(name, activation_dtype="int16")
    MIXED = "mixed"  # quantize_static(mixed_precision=MixedPrecision()): the most sensitive activations in 16 bits
    AUTO = "auto"  # quantize_static(target=AccuracyTarget(max_drop=LOOP_DROPS[preset])): the accuracy loop


# the accuracy loop's goal per preset, as output agreement with float (issue 14: within 0.5 / 1.0 / 1.5 points)
LOOP_DROPS = {"cpu": 0.005, "npu_transformer": 0.01, "npu_a16w8": 0.01, "npu_cnn": 0.015}


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
        """The algorithms are rq-onnx's options, and the framework packages export 8-bit
        activations only (their fake-quant ops): both are columns of the ONNX models alone."""
        sixteen_bits = get_preset(self.preset).activation.dtype.bits == 16 or Algorithm.INT16 in self.algorithms
        return framework in FRAMEWORKS_WITH_ALGORITHMS or not (self.algorithms or sixteen_bits)

    def onnx_arguments(self) -> dict[str, Any]:
        """quantize_static's preset and options for this variant."""
        overrides = {"activation_dtype": "int16"} if Algorithm.INT16 in self.algorithms else {}
        arguments: dict[str, Any] = {"preset": get_preset(self.preset, **overrides) if overrides else self.preset}
        if Algorithm.CLE in self.algorithms:
            arguments["equalization"] = True
        if Algorithm.BIAS_CORRECTION in self.algorithms:
            arguments["bias_correction"] = True
        if Algorithm.ADAROUND in self.algorithms:
            arguments["rounding"] = "adaround"
        if Algorithm.MIXED in self.algorithms:
            arguments["mixed_precision"] = MixedPrecision()
        if Algorithm.AUTO in self.algorithms:
            arguments["target"] = AccuracyTarget(max_drop=LOOP_DROPS[get_preset(self.preset).name])
        return arguments
