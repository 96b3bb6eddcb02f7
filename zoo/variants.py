"""rq's accuracy algorithms as zoo columns: a preset's name and the algorithms turned on for it,
joined by '+' ("npu_cnn+cle", "npu_cnn+adaround", "npu_transformer+adaround+bias_correction", "cpu+mixed"), so
that one run measures each beside the defaults and ONNX Runtime's quantizer. Where a framework
package does not offer an algorithm yet (OFFERED_BY), its column is n/a."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any

from rq_common import get_preset
from rq_common.pipeline.accuracy_loop import AccuracyTarget
from rq_common.pipeline.mixed_precision import MixedPrecision
from rq_common.spec import Preset
from zoo.kinds import Framework


class Algorithm(str, Enum):
    CLE = "cle"  # equalization=True: cross-layer equalization (on by default for per-tensor weights)
    NO_CLE = "nocle"  # equalization=False: the defaults without it
    BIAS_CORRECTION = "bias_correction"  # quantize_static(bias_correction=True)
    ADAROUND = "adaround"  # quantize_static(rounding="adaround")
    INT16 = "int16"  # get_preset(name, activation_dtype="int16")
    INT_KERNELS = "intkernels"  # get_preset(name, qdq="integer_kernels"): Q/DQ only at ONNX Runtime's CPU int8 kernels
    MIXED = "mixed"  # quantize_static(mixed_precision=MixedPrecision()): the most sensitive activations in 16 bits
    AUTO = "auto"  # quantize_static(target=AccuracyTarget(max_drop=LOOP_DROPS[preset])): the accuracy loop


# the accuracy loop's goal per preset, as output agreement with float (issue 14: within 0.5 / 1.0 / 1.5 points)
LOOP_DROPS = {"cpu": 0.005, "npu_transformer": 0.01, "npu_a16w8": 0.01, "npu_cnn": 0.015}


EQUALIZATION = {Algorithm.CLE: True, Algorithm.NO_CLE: False}

# the packages that offer each algorithm; rq-onnx offers them all (INT_KERNELS: the framework
# packages place the same quantizers on CNNs, but keep a Linear's output Q/DQ in a transformer)
OFFERED_BY: dict[Algorithm, frozenset[Framework]] = {
    **dict.fromkeys(Algorithm, frozenset({Framework.ONNX})),
    **dict.fromkeys(EQUALIZATION, frozenset(Framework)),
    **dict.fromkeys((Algorithm.BIAS_CORRECTION, Algorithm.ADAROUND), frozenset({Framework.ONNX, Framework.TORCH})),
}


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
        """Each algorithm where its package offers it (OFFERED_BY); 16-bit activations in rq-onnx
        alone (the framework packages export 8-bit fake-quant ops)."""
        sixteen_bits = get_preset(self.preset).activation.dtype.bits == 16 or Algorithm.INT16 in self.algorithms
        offered = all(framework in OFFERED_BY[a] for a in self.algorithms)
        return offered and (framework is Framework.ONNX or not sixteen_bits)

    def framework_arguments(self) -> dict[str, Any]:
        """rq-torch's, rq-tf2's and rq-tf1's quantize call's preset and options for this variant."""
        return {"preset": self._preset(), **self._equalization()}

    def _preset(self) -> str | Preset:
        """The preset's name, or the preset with the fields the variant changes."""
        overrides: dict[str, str] = {}
        if Algorithm.INT16 in self.algorithms:
            overrides["activation_dtype"] = "int16"
        if Algorithm.INT_KERNELS in self.algorithms:
            overrides["qdq"] = "integer_kernels"
        return get_preset(self.preset, **overrides) if overrides else self.preset

    def _equalization(self) -> dict[str, bool]:
        """equalization= where the name asks for it or against it (the last one counts), else nothing."""
        chosen = [EQUALIZATION[a] for a in self.algorithms if a in EQUALIZATION]
        return {"equalization": chosen[-1]} if chosen else {}

    def onnx_arguments(self) -> dict[str, Any]:
        """quantize_static's preset and options for this variant."""
        arguments: dict[str, Any] = {"preset": self._preset()}
        arguments.update(self._equalization())
        if Algorithm.BIAS_CORRECTION in self.algorithms:
            arguments["bias_correction"] = True
        if Algorithm.ADAROUND in self.algorithms:
            arguments["rounding"] = "adaround"
        if Algorithm.MIXED in self.algorithms:
            arguments["mixed_precision"] = MixedPrecision()
        if Algorithm.AUTO in self.algorithms:
            arguments["target"] = AccuracyTarget(max_drop=LOOP_DROPS[get_preset(self.preset).name])
        return arguments
