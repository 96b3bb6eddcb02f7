"""The options of one quantize_static run (everything that is not a preset field), checked."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rq_common.errors import SpecError
from rq_common.observers import NonFinitePolicy
from rq_common.pipeline.mixed_precision import MixedPrecision
from rq_common.qmath.adaround import Rounding
from rq_common.qmath.equalization import Equalization


@dataclass(frozen=True)
class QuantizeOptions:
    """How to run the quantization.

    exclude_op_types / exclude_nodes: ops kept in float on request (by type or node name).
    max_calibration_batches: stop reading after this many batches (None: read to the end).
    report_batches: batches kept for the report when the reader cannot rewind().
    use_external_data: store the weights in ``<output>.data`` beside the model (needed above 2 GB).
    report_path: also write the report there (.html, or .json).
    quiet: no progress bars.
    nonfinite: what calibration does with +-inf in a quantized tensor (NonFinitePolicy): stop and
    say which tensor (``raise``, the default), or leave infinities out of the range
    (``ignore_inf``: they saturate to the range's ends, as QuantizeLinear does in ONNX Runtime).
    Attention masks need neither: rq keeps them in float (rq_onnx/masks.py).
    equalization: cross-layer equalization before calibration (rq_common.qmath.equalization,
    rq_onnx.equalize): pairs of Conv / Gemm / MatMul layers joined through ReLU-like ops rescaled so
    that per-tensor weight grids fit every channel, high biases moved into the next layer; None
    (the default): on where the preset's weights are per tensor (equalization_for); True / an
    Equalization: on (with its settings); False: off.
    bias_correction: correct each Conv / ConvTranspose / Gemm bias for its quantized weight's
    rounding error, from the float inputs' channel means over the calibration data (a MatMul's bias
    is an Add of its own and is left as it is)
    (rq_common.qmath.bias_correction); for per-tensor weights, whose narrow channels round coarsely.
    rounding: how Conv / Gemm / MatMul weights round to their grid (Rounding): to nearest, or
    ``adaround``: up or down per weight, chosen to reconstruct each layer's float output on the
    calibration data (rq_common.qmath.adaround); its input moments are gathered while calibrating.
    mixed_precision: widen the activations that cost the most agreement with float to the preset's
    16-bit spec (rq_common.pipeline.mixed_precision: targets, budget, metric), measured by ORT on
    the report's batches; None (the default): every activation in the preset's type.
    """

    exclude_op_types: tuple[str, ...] = ()
    exclude_nodes: tuple[str, ...] = ()
    max_calibration_batches: int | None = None
    report_batches: int = 16
    use_external_data: bool = False
    report_path: Path | None = None
    quiet: bool = False
    nonfinite: NonFinitePolicy = NonFinitePolicy.RAISE
    equalization: Equalization | bool | None = None
    bias_correction: bool = False
    rounding: Rounding = Rounding.NEAREST
    mixed_precision: MixedPrecision | None = None

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "rounding", Rounding(self.rounding))
        except ValueError:
            choices = ", ".join(r.value for r in Rounding)
            raise SpecError("rounding", f"{self.rounding!r} is not a rounding; use one of: {choices}") from None
        try:
            object.__setattr__(self, "nonfinite", NonFinitePolicy(self.nonfinite))
        except ValueError:
            choices = ", ".join(p.value for p in NonFinitePolicy)
            raise SpecError("nonfinite", f"{self.nonfinite!r} is not a policy; use one of: {choices}") from None
        object.__setattr__(self, "exclude_op_types", tuple(self.exclude_op_types))
        object.__setattr__(self, "exclude_nodes", tuple(self.exclude_nodes))
        if self.report_path is not None:
            object.__setattr__(self, "report_path", Path(self.report_path))
        if self.max_calibration_batches is not None and self.max_calibration_batches < 1:
            raise SpecError("max_calibration_batches", "must be at least 1")
