"""Specs and presets as plain JSON-able dicts, for frameworks that store them in a model file
(Keras layer configs). A preset is its name plus every field, so a loaded model quantizes exactly
as the saved one did even with overrides."""

from __future__ import annotations

from dataclasses import fields
from enum import Enum
from typing import Any

from rq_common.spec.presets import Preset, get_preset
from rq_common.spec.quant_spec import QuantSpec

_SPEC_KINDS = ("activation", "weight", "bias")
_ENUM_FIELDS = ("bias_rule", "activation_method", "weight_method", "qdq")


def spec_to_config(spec: QuantSpec) -> dict[str, Any]:
    return {f.name: _plain(getattr(spec, f.name)) for f in fields(QuantSpec)}


def spec_from_config(config: dict[str, Any]) -> QuantSpec:
    return QuantSpec(**config)


def preset_to_config(preset: Preset) -> dict[str, Any]:
    config: dict[str, Any] = {"name": preset.name}
    config.update({kind: spec_to_config(getattr(preset, kind)) for kind in _SPEC_KINDS})
    config.update({name: getattr(preset, name).value for name in _ENUM_FIELDS})
    return config


def preset_from_config(config: dict[str, Any]) -> Preset:
    """The preset named in ``config`` with every stored field applied (and checked again)."""
    changes: dict[str, Any] = {kind: spec_from_config(config[kind]) for kind in _SPEC_KINDS}
    changes.update({name: config.get(name) for name in _ENUM_FIELDS})  # absent: stored before the field existed
    return get_preset(config["name"], **changes)


def _plain(value: Any) -> Any:
    return value.value if isinstance(value, Enum) else value
