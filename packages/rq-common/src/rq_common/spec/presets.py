"""Named, typed presets (npu_cnn, npu_transformer, npu_a16w8, cpu) and the checks against their target.

A preset is a target (what the hardware or runtime can run) plus default specs and calibration
methods. Users override any field; the result is checked against the target, so an override the
target cannot run is an error naming the field, never a silently different model.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

from rq_common.errors import SpecError
from rq_common.spec.dtypes import QuantDType
from rq_common.spec.methods import BiasScaleRule, CalibrationMethod, QdqPlacement
from rq_common.spec.quant_spec import Granularity, QuantSpec, RoundMode, ScaleType, coerce_enum


@dataclass(frozen=True)
class Target:
    """What a deployment target can execute."""

    name: str
    description: str
    power_of_two_scales: bool
    per_channel_weights: bool
    activation_dtypes: frozenset[QuantDType]
    weight_dtypes: frozenset[QuantDType]
    bias_dtypes: frozenset[QuantDType]
    requires_quantized_compute: bool = False  # its weighted ops (Conv, Gemm, MatMul) cannot run in float
    fixed_point_rules: bool = False  # the NPU's shift limits and fusions (rq_common.qmath.npu_rules)


NPU_CNN_TARGET = Target(
    name="npu_cnn",
    description="Ryzen AI NPU, CNN path (XINT8 / IPU_CNN)",
    power_of_two_scales=True,
    per_channel_weights=False,
    activation_dtypes=frozenset({QuantDType.UINT8, QuantDType.INT8}),
    weight_dtypes=frozenset({QuantDType.INT8}),
    bias_dtypes=frozenset({QuantDType.INT8, QuantDType.INT32}),
    requires_quantized_compute=True,
    fixed_point_rules=True,
)
NPU_TRANSFORMER_TARGET = Target(
    name="npu_transformer",
    description="Ryzen AI NPU, transformer path (A8W8, A16W8)",
    power_of_two_scales=False,
    per_channel_weights=False,
    activation_dtypes=frozenset({QuantDType.INT8, QuantDType.INT16}),
    weight_dtypes=frozenset({QuantDType.INT8}),
    bias_dtypes=frozenset({QuantDType.INT32}),
    requires_quantized_compute=True,
)
CPU_TARGET = Target(
    name="cpu",
    description="ONNX Runtime on the CPU (U8S8)",
    power_of_two_scales=False,
    per_channel_weights=True,
    activation_dtypes=frozenset({QuantDType.UINT8, QuantDType.INT8, QuantDType.INT16}),
    weight_dtypes=frozenset({QuantDType.INT8, QuantDType.UINT8}),
    bias_dtypes=frozenset({QuantDType.INT32}),
)


@dataclass(frozen=True)
class Preset:
    """Everything a quantizer needs to know to quantize a model for one target."""

    name: str
    target: Target
    activation: QuantSpec
    weight: QuantSpec
    bias: QuantSpec
    bias_rule: BiasScaleRule
    activation_method: CalibrationMethod
    weight_method: CalibrationMethod
    qdq: QdqPlacement = QdqPlacement.EVERY_OP

    def __post_init__(self) -> None:
        for name, enum_type in (
            ("bias_rule", BiasScaleRule),
            ("activation_method", CalibrationMethod),
            ("weight_method", CalibrationMethod),
            ("qdq", QdqPlacement),
        ):
            object.__setattr__(self, name, coerce_enum(name, getattr(self, name), enum_type))
        _check_against_target(self)

    @property
    def integer_kernels_only(self) -> bool:
        """Q/DQ only where ONNX Runtime's CPU int8 kernels read or write them (QdqPlacement)."""
        return self.qdq is QdqPlacement.INTEGER_KERNELS

    def override(self, **changes: Any) -> Preset:
        """A copy with fields changed, checked against the target.

        Keys: a Preset field (``activation=QuantSpec(...)``, ``activation_method="percentile"``),
        ``<kind>_<spec field>`` for kind in activation/weight/bias (``activation_dtype="int8"``,
        ``weight_narrow_range=True``), ``per_channel`` (weights), ``scale_type`` (all three specs).
        """
        if not changes:
            return self
        updated: dict[str, Any] = {}
        specs = {"activation": self.activation, "weight": self.weight, "bias": self.bias}
        spec_changes: dict[str, dict[str, Any]] = {kind: {} for kind in specs}
        spec_fields = {f.name for f in fields(QuantSpec)}
        preset_fields = {f.name for f in fields(Preset)} - {"name", "target"}
        for key, value in changes.items():
            if value is None:
                continue
            if key in specs:
                specs[key] = value
            elif key in preset_fields:
                updated[key] = value
            elif key == "per_channel":
                spec_changes["weight"].update(
                    granularity=Granularity.PER_CHANNEL if value else Granularity.PER_TENSOR,
                    axis=(self.weight.axis or 0) if value else None,
                )
            elif key == "scale_type":
                for kind in specs:
                    spec_changes[kind]["scale_type"] = value
            else:
                kind, _, spec_field = key.partition("_")
                if kind not in specs or spec_field not in spec_fields:
                    raise SpecError(key, f"unknown override; valid keys: {override_keys()}")
                spec_changes[kind][spec_field] = value
        for kind, kind_changes in spec_changes.items():
            if not kind_changes:
                continue
            if not isinstance(specs[kind], QuantSpec):
                break
            try:
                specs[kind] = specs[kind].replace(**kind_changes)
            except SpecError as error:
                raise SpecError(f"{kind}.{error.field}", str(error).partition(": ")[2]) from None
        for kind, spec in specs.items():
            if not isinstance(spec, QuantSpec):
                raise SpecError(kind, f"expected a QuantSpec, got {type(spec).__name__}")
        return replace(self, **specs, **updated)

    @property
    def power_of_two(self) -> bool:
        return self.target.power_of_two_scales


def override_keys() -> str:
    spec_keys = [f"{k}_{f.name}" for k in ("activation", "weight", "bias") for f in fields(QuantSpec)]
    preset_keys = [f.name for f in fields(Preset) if f.name not in ("name", "target")]
    return ", ".join(preset_keys + ["per_channel", "scale_type"] + spec_keys)


def _check_against_target(p: Preset) -> None:
    t = p.target
    for kind, spec, allowed in (
        ("activation", p.activation, t.activation_dtypes),
        ("weight", p.weight, t.weight_dtypes),
        ("bias", p.bias, t.bias_dtypes),
    ):
        if spec.dtype not in allowed:
            names = ", ".join(sorted(d.value for d in allowed))
            raise SpecError(
                f"{kind}.dtype", f"{spec.dtype.value} is not run by target '{t.name}' ({t.description}); use one of: {names}"
            )
        if t.power_of_two_scales and not spec.power_of_two:
            raise SpecError(
                f"{kind}.scale_type",
                f"target '{t.name}' needs power-of-two scales; a float scale cannot run there "
                "(keep scale_type=power_of_two or choose preset 'cpu' / 'npu_transformer')",
            )
        if spec.round_mode is not RoundMode.HALF_TO_EVEN:
            raise SpecError(f"{kind}.round_mode", "ONNX QuantizeLinear rounds half to even; other modes cannot be exported")
    if t.requires_quantized_compute and p.qdq is not QdqPlacement.EVERY_OP:
        raise SpecError("qdq", f"target '{t.name}' ({t.description}) runs quantized ops only; keep qdq=every_op")
    if p.activation.per_channel:
        raise SpecError("activation.granularity", "activations are quantized per tensor in the int8 format")
    if p.weight.per_channel and not t.per_channel_weights:
        raise SpecError(
            "weight.granularity",
            f"target '{t.name}' ({t.description}) runs per-tensor weights only; set per_channel=False",
        )
    if not p.bias.symmetric or p.bias.fixed_zero_point != 0:
        raise SpecError("bias.zero_point", "bias is stored with zero point 0; use a symmetric signed bias spec")
    if p.bias.per_channel:
        raise SpecError("bias.granularity", "the bias spec is per tensor; a per-channel bias scale follows the weights")
    if p.bias_rule is BiasScaleRule.PRODUCT and p.bias.dtype is not QuantDType.INT32:
        raise SpecError("bias.dtype", "bias_rule=product (input x weight scale) needs an int32 bias")
    if p.bias_rule is BiasScaleRule.OWN_POWER_OF_TWO and not p.bias.power_of_two:
        raise SpecError("bias.scale_type", "bias_rule=own_power_of_two needs scale_type=power_of_two")
    if p.bias_rule is BiasScaleRule.OWN_POWER_OF_TWO and p.bias.dtype is QuantDType.INT32:
        raise SpecError("bias.dtype", "bias_rule=own_power_of_two stores an int8/int16 bias; int32 bias uses bias_rule=product")
    for kind, spec, method in (
        ("activation_method", p.activation, p.activation_method),
        ("weight_method", p.weight, p.weight_method),
    ):
        if method.needs_power_of_two and not spec.power_of_two:
            raise SpecError(
                kind,
                f"{method.value} chooses power-of-two scales; the spec has scale_type=float (use minmax, mse, percentile or entropy)",
            )
        if method.needs_float_scale and spec.power_of_two:
            raise SpecError(kind, f"{method.value} searches float scales; with power-of-two scales use pot_minmse")
    if p.weight.per_channel and p.weight_method not in (CalibrationMethod.MINMAX, CalibrationMethod.POT_NONOVERFLOW):
        raise SpecError("weight_method", f"{p.weight_method.value} is per tensor; per-channel weights use minmax")


_POT = ScaleType.POWER_OF_TWO

PRESETS: dict[str, Preset] = {
    "npu_cnn": Preset(
        name="npu_cnn",
        target=NPU_CNN_TARGET,
        activation=QuantSpec(dtype=QuantDType.UINT8, symmetric=True, scale_type=_POT),
        weight=QuantSpec(dtype=QuantDType.INT8, symmetric=True, scale_type=_POT),
        bias=QuantSpec(dtype=QuantDType.INT8, symmetric=True, scale_type=_POT),
        bias_rule=BiasScaleRule.OWN_POWER_OF_TWO,
        activation_method=CalibrationMethod.POT_MINMSE,
        # weights never clipped: one per-tensor power-of-two grid serves every channel, and MinMSE's
        # half range saturates the widest channels (zoo ddddocr_ocr exact match 0.40 with MinMSE,
        # 0.83 with NonOverflow; the other models within half a point either way: docs/calibration.md)
        weight_method=CalibrationMethod.POT_NONOVERFLOW,
    ),
    "npu_transformer": Preset(
        name="npu_transformer",
        target=NPU_TRANSFORMER_TARGET,
        activation=QuantSpec(dtype=QuantDType.INT8, symmetric=False),
        weight=QuantSpec(dtype=QuantDType.INT8, symmetric=True),
        bias=QuantSpec(dtype=QuantDType.INT32, symmetric=True),
        bias_rule=BiasScaleRule.PRODUCT,
        activation_method=CalibrationMethod.MINMAX,
        weight_method=CalibrationMethod.MINMAX,
    ),
    "npu_a16w8": Preset(
        name="npu_a16w8",
        target=NPU_TRANSFORMER_TARGET,
        activation=QuantSpec(dtype=QuantDType.INT16, symmetric=True),
        weight=QuantSpec(dtype=QuantDType.INT8, symmetric=True),
        bias=QuantSpec(dtype=QuantDType.INT32, symmetric=True),
        bias_rule=BiasScaleRule.PRODUCT,
        activation_method=CalibrationMethod.MINMAX,
        weight_method=CalibrationMethod.MINMAX,
    ),
    "cpu": Preset(
        name="cpu",
        target=CPU_TARGET,
        activation=QuantSpec(dtype=QuantDType.UINT8, symmetric=False),
        weight=QuantSpec(dtype=QuantDType.INT8, symmetric=True, granularity=Granularity.PER_CHANNEL, axis=0),
        bias=QuantSpec(dtype=QuantDType.INT32, symmetric=True),
        bias_rule=BiasScaleRule.PRODUCT,
        activation_method=CalibrationMethod.MINMAX,
        weight_method=CalibrationMethod.MINMAX,
    ),
}

ALIASES: dict[str, str] = {
    "xint8": "npu_cnn",
    "ipu_cnn": "npu_cnn",
    "a8w8": "npu_transformer",
    "a16w8": "npu_a16w8",
    "u8s8": "cpu",
}


def widened_activation(preset: Preset) -> QuantSpec | None:
    """The spec a sensitive activation is widened to in mixed precision: A16W8's symmetric int16
    with the preset's scale type, where the target runs 16-bit activations; None where it does not
    (the NPU's CNN path) or where the preset's activations are 16-bit already."""
    if QuantDType.INT16 not in preset.target.activation_dtypes or preset.activation.dtype.bits >= 16:
        return None
    return QuantSpec(dtype=QuantDType.INT16, symmetric=True, scale_type=preset.activation.scale_type)


def get_preset(preset: str | Preset, **overrides: Any) -> Preset:
    """The preset by name or alias (case-insensitive), with overrides applied and checked."""
    if isinstance(preset, Preset):
        return preset.override(**overrides)
    key = str(preset).lower()
    key = ALIASES.get(key, key)
    if key not in PRESETS:
        names = ", ".join(list(PRESETS) + [a.upper() for a in ALIASES])
        raise SpecError("preset", f"unknown preset {preset!r}; known: {names}")
    return PRESETS[key].override(**overrides)


def require_eight_bit_activations(preset: Preset, package: str) -> None:
    """For the packages whose exporters write 8-bit fake-quant ops only (rq-tf1, rq-tf2): a 16-bit
    activation preset is an error naming the way that works, never a silently 8-bit model."""
    if preset.activation.dtype.bits > 8:
        raise SpecError(
            "activation.dtype",
            f"{package} exports 8-bit activations only; for {preset.activation.dtype.value} activations "
            f"(preset '{preset.name}') export the float model to ONNX and quantize it with rq-onnx",
        )
