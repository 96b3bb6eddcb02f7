"""Typed configuration: tensor specs, calibration method names, presets and their targets."""

from rq_common.spec.dtypes import QuantDType
from rq_common.spec.methods import BiasScaleRule, CalibrationMethod, QdqPlacement
from rq_common.spec.presets import (
    ALIASES,
    PRESETS,
    Preset,
    Target,
    get_preset,
    require_eight_bit_activations,
    widened_activation,
)
from rq_common.spec.quant_spec import Granularity, QuantSpec, RoundMode, ScaleType
from rq_common.spec.serialize import preset_from_config, preset_to_config, spec_from_config, spec_to_config

__all__ = [
    "ALIASES",
    "PRESETS",
    "BiasScaleRule",
    "CalibrationMethod",
    "Granularity",
    "Preset",
    "QdqPlacement",
    "QuantDType",
    "QuantSpec",
    "RoundMode",
    "ScaleType",
    "Target",
    "get_preset",
    "require_eight_bit_activations",
    "widened_activation",
    "preset_from_config",
    "preset_to_config",
    "spec_from_config",
    "spec_to_config",
]
