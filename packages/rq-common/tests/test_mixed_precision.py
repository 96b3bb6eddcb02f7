"""Mixed precision's search and its numbers, against hand-computed truths."""

from __future__ import annotations

import numpy as np
import pytest

from rq_common.errors import SpecError
from rq_common.pipeline.mixed_precision import MixedPrecision, choose_widened, output_agreement
from rq_common.qmath import compute_qparams, widen
from rq_common.qmath.reference import fake_quantize
from rq_common.spec import QuantDType, QuantSpec, get_preset, widened_activation


def additive(gains: dict[str, float], base: float = 0.5):
    """A model whose score is base + the sum of its widened candidates' gains, counting its trials."""
    calls = []

    def evaluate(widened: frozenset[str]) -> float:
        calls.append(widened)
        return base + sum(gains[name] for name in widened)

    return evaluate, calls


def test_the_most_sensitive_are_widened_first_and_the_search_stops_at_the_target():
    evaluate, calls = additive({"a": 0.05, "b": 0.3, "c": 0.0, "d": 0.2, "e": -0.1})
    result = choose_widened("abcde", evaluate, MixedPrecision(target=0.95))
    assert result.widened == ["b", "d"]  # 0.5 + 0.3 + 0.2 = 1.0 >= 0.95: "a" is not needed
    assert result.before == 0.5 and result.after == pytest.approx(1.0)
    assert result.gains == pytest.approx({"a": 0.05, "b": 0.3, "c": 0.0, "d": 0.2, "e": -0.1})
    assert len(calls) == 1 + 5 + 2  # the base, one trial per candidate, one per prefix until the target held


def test_nothing_that_gains_nothing_is_widened_and_the_budget_holds():
    evaluate, _ = additive({"a": 0.01, "b": 0.02, "c": 0.0, "d": -0.2})
    result = choose_widened("abcd", evaluate, MixedPrecision(target=0.99, max_tensors=1))
    assert result.widened == ["b"] and result.after == pytest.approx(0.52)
    result = choose_widened("abcd", evaluate, MixedPrecision(target=0.99, max_tensors=10))
    assert result.widened == ["b", "a"]  # c gains nothing, d loses: never widened


def test_a_prefix_that_scores_worse_together_is_not_kept():
    scores = {frozenset(): 0.5, frozenset("a"): 0.7, frozenset("b"): 0.6, frozenset("ab"): 0.55}
    result = choose_widened("ab", scores.__getitem__, MixedPrecision(target=0.99))
    assert result.widened == ["a"] and result.after == 0.7


def test_a_model_at_its_target_runs_one_trial_only():
    evaluate, calls = additive({"a": 0.3}, base=0.995)
    result = choose_widened("a", evaluate, MixedPrecision(target=0.99))
    assert result.widened == [] and len(calls) == 1
    assert "no activation widened" in result.note("int16")


def test_output_agreement_is_the_mean_cosine_over_batches():
    a, b = np.array([[1.0, 0.0]]), np.array([[1.0, 1.0]])
    assert output_agreement([[a], [a]], [[a], [b]]) == pytest.approx((1 + 1 / np.sqrt(2)) / 2)
    assert output_agreement([[a, 2 * a]], [[a, 2 * a]]) == pytest.approx(1.0)
    with pytest.raises(SpecError):
        MixedPrecision(max_tensors=0)


def test_widening_keeps_the_calibrated_range_in_finer_steps():
    narrow = compute_qparams(-1.0, 3.0, QuantSpec(dtype=QuantDType.UINT8, symmetric=False))
    wide = widen(narrow, widened_activation(get_preset("cpu")))
    low, high = narrow.representable_range()
    assert wide.spec.dtype is QuantDType.INT16 and int(wide.zero_point) == 0
    assert float(wide.scale) == pytest.approx(max(-low, high) / 32767, rel=1e-6)
    x = np.linspace(low, high, 1001, dtype=np.float32)  # what the 8-bit pair represents (3.0 is just outside)
    assert np.abs(fake_quantize(x, wide) - x).max() <= float(wide.scale) / 2 + 1e-7
    assert np.abs(fake_quantize(x, wide) - x).max() < np.abs(fake_quantize(x, narrow) - x).max() / 100


def test_which_presets_can_widen():
    assert widened_activation(get_preset("npu_cnn")) is None  # the NPU's CNN path runs 8-bit activations
    assert widened_activation(get_preset("npu_a16w8")) is None  # 16 bits already
    for name in ("cpu", "npu_transformer"):
        spec = widened_activation(get_preset(name))
        assert spec.dtype is QuantDType.INT16 and spec.symmetric and not spec.power_of_two


def test_a16w8_is_quarks_a16w8():
    """Quark's A16W8 for the Ryzen AI NPU: symmetric int16 activations, symmetric int8 weights, int32
    bias, float scales (per tensor)."""
    preset = get_preset("A16W8")
    assert preset.name == "npu_a16w8" and preset.target.name == "npu_transformer"
    assert (preset.activation.dtype, preset.activation.symmetric) == (QuantDType.INT16, True)
    assert (preset.weight.dtype, preset.weight.symmetric, preset.weight.per_channel) == (QuantDType.INT8, True, False)
    assert preset.bias.dtype is QuantDType.INT32 and not preset.activation.power_of_two


def test_where_candidates_outnumber_the_trials_the_noisiest_by_the_prior_are_tried():
    evaluate, calls = additive({"a": 0.3, "b": 0.2, "c": 0.1})
    prior = {"a": 1e-5, "b": 1e-2, "c": 1e-3}
    result = choose_widened("abc", evaluate, MixedPrecision(target=0.99, max_trials=2), prior=prior)
    assert {frozenset("a")} & set(calls) == set()  # the quietest by its own error gets no trial
    assert result.widened == ["b", "c"] and set(result.gains) == {"b", "c"}
    with pytest.raises(SpecError, match="trial_batches"):
        MixedPrecision(trial_batches=0)
