import pytest

from rq_common import (
    BiasScaleRule,
    CalibrationMethod,
    Granularity,
    QuantDType,
    QuantSpec,
    ScaleType,
    SpecError,
    get_preset,
)
from rq_common.spec import PRESETS


def test_presets_match_the_architecture_table():
    cnn = get_preset("npu_cnn")
    assert cnn.activation.dtype is QuantDType.UINT8 and cnn.activation.symmetric
    assert cnn.activation.fixed_zero_point == 128
    assert cnn.weight.dtype is QuantDType.INT8 and cnn.weight.fixed_zero_point == 0
    assert all(s.scale_type is ScaleType.POWER_OF_TWO for s in (cnn.activation, cnn.weight, cnn.bias))
    assert cnn.bias.dtype is QuantDType.INT8 and cnn.bias_rule is BiasScaleRule.OWN_POWER_OF_TWO
    assert cnn.activation_method is CalibrationMethod.POT_MINMSE

    a8w8 = get_preset("npu_transformer")
    assert a8w8.activation.dtype is QuantDType.INT8 and not a8w8.activation.symmetric
    assert a8w8.weight.symmetric and a8w8.bias.dtype is QuantDType.INT32
    assert a8w8.activation.scale_type is ScaleType.FLOAT and a8w8.activation_method is CalibrationMethod.MINMAX

    cpu = get_preset("cpu")
    assert cpu.activation.dtype is QuantDType.UINT8 and not cpu.activation.symmetric
    assert cpu.weight.granularity is Granularity.PER_CHANNEL and cpu.weight.axis == 0
    assert cpu.bias_rule is BiasScaleRule.PRODUCT


@pytest.mark.parametrize(
    ("alias", "name"),
    [("XINT8", "npu_cnn"), ("IPU_CNN", "npu_cnn"), ("A8W8", "npu_transformer"), ("U8S8", "cpu"), ("Cpu", "cpu")],
)
def test_aliases(alias, name):
    assert get_preset(alias) == PRESETS[name]


def test_specs_are_frozen():
    spec = QuantSpec()
    with pytest.raises(AttributeError):
        spec.dtype = QuantDType.UINT8


def test_overrides_change_only_the_named_fields():
    p = get_preset("cpu", per_channel=False, activation_dtype="int8", activation_method="percentile")
    assert p.weight.granularity is Granularity.PER_TENSOR and p.weight.axis is None
    assert p.activation.dtype is QuantDType.INT8 and not p.activation.symmetric
    assert p.activation_method is CalibrationMethod.PERCENTILE
    assert p.bias == PRESETS["cpu"].bias
    whole = get_preset("npu_transformer", weight=QuantSpec(dtype="int8", narrow_range=True))
    assert whole.weight.narrow_range


@pytest.mark.parametrize(
    ("preset", "overrides", "field"),
    [
        ("npu_cnn", {"per_channel": True}, "weight.granularity"),
        ("npu_cnn", {"scale_type": "float"}, "activation.scale_type"),
        ("npu_cnn", {"weight_scale_type": "float"}, "weight.scale_type"),
        ("cpu", {"activation_zero_point": 300}, "activation.zero_point"),
        ("npu_cnn", {"activation_zero_point": 300}, "activation.zero_point"),
        ("npu_cnn", {"activation_zero_point": -1}, "activation.zero_point"),
        ("cpu", {"activation_dtype": "int32"}, "activation.dtype"),
        ("cpu", {"activation_dtype": "int4"}, "activation.dtype"),
        ("cpu", {"activation_method": "pot_minmse"}, "activation_method"),
        ("npu_cnn", {"activation_method": "mse"}, "activation_method"),
        ("cpu", {"weight_method": "entropy"}, "weight_method"),
        ("cpu", {"bias_dtype": "int8"}, "bias.dtype"),
        ("npu_cnn", {"activation_round_mode": "half_up"}, "activation.round_mode"),
        ("cpu", {"activation_granularity": "per_channel", "activation_axis": 1}, "activation.granularity"),
        ("cpu", {"unknown_option": 1}, "unknown_option"),
        ("nonsense", {}, "preset"),
    ],
)
def test_impossible_overrides_name_the_field(preset, overrides, field):
    with pytest.raises(SpecError) as info:
        get_preset(preset, **overrides)
    assert info.value.field == field
    assert str(info.value).startswith(field)


def test_spec_checks():
    with pytest.raises(SpecError, match="axis"):
        QuantSpec(granularity="per_channel")
    with pytest.raises(SpecError, match="zero_point"):
        QuantSpec(symmetric=False, zero_point=3)
    assert QuantSpec(dtype="uint8", narrow_range=True).qmin == 1
    assert QuantSpec(dtype="int8", narrow_range=True).fixed_zero_point == 0
    assert QuantSpec(dtype="uint8").fixed_zero_point == 128
    assert QuantSpec(dtype="int16").fixed_zero_point == 0
