"""Adaptive rounding (Nagel et al. 2020) against independent truths: the moment-based loss is the
layer's output error computed from the patches themselves; on small rows, exhaustive search over
every floor / ceil choice gives the best rounding there is, and AdaRound's is never worse than
nearest rounding's and reaches most of what exhaustive search gains."""

import itertools

import numpy as np
import pytest

from rq_common import get_preset
from rq_common.pipeline import Layer, ModelView, Weight, finalize, weight_qparams
from rq_common.qmath import fake_quantize, quantize
from rq_common.qmath.adaround import AdaptiveRounding, AdaRoundConfig, MomentAccumulator, adaround, row_losses, rows


def correlated_patches(rng, count, width, groups=1):
    """Inputs whose features move together (neighbouring pixels do): where the errors of two
    weights cancel, nearest rounding's choice is not the best one."""
    mixing = rng.standard_normal((groups, width, width)) * 0.5 + np.eye(width) * 0.2 + 0.6
    return np.matmul(rng.standard_normal((groups, count, width)), mixing)


def moments(patches):
    accumulator = MomentAccumulator()
    for part in np.array_split(patches, 3, axis=1):  # streamed in batches, as calibration does
        accumulator.add(part)
    return accumulator.result()


def test_the_moments_loss_is_the_output_error_over_the_patches():
    rng = np.random.default_rng(0)
    patches = correlated_patches(rng, 500, 7, groups=2)
    delta = rng.standard_normal((6, 7))  # 3 output channels per group
    got = row_losses(delta, moments(patches).gram)
    errors = np.concatenate([patches[g] @ delta[3 * g : 3 * g + 3].T for g in range(2)], axis=1)  # (P, O)
    np.testing.assert_allclose(got, (errors**2).mean(axis=0), rtol=1e-5)
    accumulated = moments(patches)
    np.testing.assert_allclose(accumulated.mean, patches.mean(axis=1), rtol=1e-5, atol=1e-6)
    centered = patches - patches.mean(axis=1, keepdims=True)
    np.testing.assert_allclose(accumulated.centered(), np.matmul(centered.transpose(0, 2, 1), centered) / 500, atol=1e-5)


def exhaustive_best(w_row, scale, gram, low, high):
    """The lowest loss of any floor / ceil choice for one row (2^K of them)."""
    floor = np.floor(w_row / scale)
    best = np.inf
    for bits in itertools.product((0.0, 1.0), repeat=w_row.size):
        q = np.clip(floor + np.array(bits), low, high)
        best = min(best, float(row_losses((scale * q - w_row)[None], gram[None])[0]))
    return best


@pytest.mark.parametrize("preset_name", ["cpu", "npu_cnn"])  # per channel; power-of-two per tensor
def test_adaround_is_never_worse_than_nearest_and_gains_most_of_the_exhaustive_optimum(preset_name):
    rng = np.random.default_rng(1)
    width, out_channels = 8, 12
    weight = rng.standard_normal((out_channels, width)) * np.linspace(0.2, 1.0, out_channels)[:, None]
    gram = moments(correlated_patches(rng, 2000, width)).gram
    preset = get_preset(preset_name)
    qp = weight_qparams(weight, 0, preset)
    rounded, ratio = adaround(weight, qp, 0, gram)

    w = rows(weight, 0)
    scale = np.broadcast_to(qp.scale.astype(np.float64).reshape(-1, 1), w.shape)[:, :1]
    nearest_loss = row_losses(fake_quantize(weight, qp).astype(np.float64) - w, gram)
    ada_loss = row_losses(rounded.astype(np.float64) - w, gram)
    best = np.array([exhaustive_best(w[o], scale[o, 0], gram[0], qp.qmin, qp.qmax) for o in range(out_channels)])

    assert np.all(ada_loss <= nearest_loss * (1 + 1e-9))  # never worse, row by row
    gained = (nearest_loss - ada_loss).sum() / (nearest_loss - best).sum()
    assert gained > 0.6, f"AdaRound recovers {gained:.0%} of what exhaustive search gains over nearest"
    assert ratio == pytest.approx(ada_loss.sum() / nearest_loss.sum(), rel=1e-4) and ratio < 0.9
    # on the grid: the values quantize back to themselves, each one floor or ceil of w / s
    q = quantize(rounded, qp).astype(np.float64)
    np.testing.assert_array_equal(fake_quantize(rounded, qp), rounded)
    assert np.all(np.abs(q - w / scale) < 1.0)


def test_grouped_weights_round_against_their_own_groups_moments():
    """A depthwise-like layer: 4 groups, one output channel each, its own 9x9 moments; a channel
    axis that is not the first (a MatMul's (K, N) weight) comes back in its own layout."""
    rng = np.random.default_rng(2)
    gram = moments(correlated_patches(rng, 1000, 9, groups=4)).gram
    weight = rng.standard_normal((4, 1, 3, 3))
    qp = weight_qparams(weight, 0, get_preset("npu_transformer"))
    rounded, _ = adaround(weight, qp, 0, gram)
    assert rounded.shape == weight.shape
    each = [adaround(weight[g : g + 1], qp, 0, gram[g : g + 1])[0] for g in range(4)]
    np.testing.assert_array_equal(rounded, np.concatenate(each))

    matmul = rng.standard_normal((9, 5))  # (K, N), output channels on axis 1
    qp = weight_qparams(matmul, 1, get_preset("cpu"))
    by_columns, _ = adaround(matmul, qp, 1, gram[:1])
    by_rows, _ = adaround(matmul.T, weight_qparams(matmul.T, 0, get_preset("cpu")), 0, gram[:1])
    np.testing.assert_array_equal(by_columns, by_rows.T)


def test_finalize_rounds_layers_with_moments_and_corrects_their_bias_from_the_rounded_weight():
    rng = np.random.default_rng(3)
    patches = correlated_patches(rng, 1000, 6) + 1.0  # a non-zero mean: the bias absorbs it
    weight = rng.standard_normal((5, 6))
    bias = rng.standard_normal(5)
    preset = get_preset("npu_transformer")
    from rq_common.qmath import compute_qparams

    source = compute_qparams(-4.0, 4.0, preset.activation)
    found = moments(patches)
    view = ModelView(
        activations={"x": source},
        weights={"w": Weight(weight, 0)},
        layers=[Layer("fc", "w", "x", None, bias, shifted=False, input_mean=found.mean[0], input_moments=found)],
    )
    plain = finalize(view, preset)
    rounded = finalize(view, preset, AdaptiveRounding(AdaRoundConfig(iterations=300)))
    assert not plain.rounded_weights and set(rounded.rounded_weights) == {"w"}
    assert any(note.startswith("adaptive rounding: 1 layer(s)") for note in rounded.notes)
    w_q = rounded.rounded_weights["w"].astype(np.float64)
    np.testing.assert_allclose(rounded.corrected_biases["fc"], bias - (w_q - weight) @ found.mean[0], rtol=1e-5, atol=1e-6)
    # with its bias corrected, the layer was rounded against the centered moments: its output error
    # up to the mean is no worse than nearest rounding's
    nearest = fake_quantize(weight, rounded.weights["w"]).astype(np.float64)
    centered = found.centered()
    assert row_losses(w_q - weight, centered).sum() <= row_losses(nearest - weight, centered).sum()


def test_finalize_again_reuses_each_weights_rounding(monkeypatch):
    """rq-onnx finalizes again after keeping an op in float: a weight whose QParams did not change
    is not optimized twice."""
    from rq_common.qmath import adaround as module

    calls = []
    real = module.adaround
    monkeypatch.setattr(module, "adaround", lambda *args, **kwargs: calls.append(1) or real(*args, **kwargs))
    rng = np.random.default_rng(4)
    found = moments(correlated_patches(rng, 500, 6))
    view = ModelView(
        activations={}, weights={"w": Weight(rng.standard_normal((4, 6)), 0)}, layers=[Layer("fc", "w", input_moments=found)]
    )
    rounding = AdaptiveRounding(AdaRoundConfig(iterations=50))
    first = finalize(view, get_preset("cpu"), rounding)
    second = finalize(view, get_preset("cpu"), rounding)
    assert len(calls) == 1
    np.testing.assert_array_equal(first.rounded_weights["w"], second.rounded_weights["w"])
    finalize(view, get_preset("npu_transformer"), rounding)  # other QParams: rounded again
    assert len(calls) == 2


def test_a_layer_too_costly_to_optimize_keeps_nearest_rounding_and_says_so():
    rng = np.random.default_rng(5)
    found = moments(correlated_patches(rng, 200, 6))
    view = ModelView(
        activations={}, weights={"w": Weight(rng.standard_normal((4, 6)), 0)}, layers=[Layer("fc", "w", input_moments=found)]
    )
    result = finalize(view, get_preset("cpu"), AdaptiveRounding(AdaRoundConfig(max_step_cost=4 * 6 * 6 - 1)))
    assert result.rounded_weights == {}
    assert "adaptive rounding: fc keeps nearest rounding: one step costs 1.4e+02 multiply-adds" in " ".join(result.notes)
