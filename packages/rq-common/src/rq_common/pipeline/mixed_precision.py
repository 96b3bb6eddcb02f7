"""Mixed precision: widen the activations whose 8 bits cost the most accuracy to 16 bits.

Framework-neutral: the search sees candidates (scale groups, by name) and a callable that scores the
model with a set of them widened (each package builds and runs that model its own way). The score
is higher-is-better, 1.0 for the float model's own outputs (``output_agreement``). One trial per
candidate measures what widening it alone gains; the candidates are then widened together in that
order, most sensitive first, until the score reaches the target or the budget of tensors is spent.
A candidate whose trial gains nothing is never widened: 16 bits cost speed (ONNX Runtime's CPU has
no fused int16 kernels; the NPU runs A16W8 slower than A8W8), so only measured gains are paid for.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from rq_common.errors import SpecError

# (quantized outputs, float outputs): per batch, the model's outputs in order -> score, higher is better
Metric = Callable[[Sequence[Sequence[np.ndarray]], Sequence[Sequence[np.ndarray]]], float]


def output_agreement(outputs: Sequence[Sequence[np.ndarray]], reference: Sequence[Sequence[np.ndarray]]) -> float:
    """Mean cosine similarity between each batch's quantized and float outputs (all outputs of a
    batch flattened together): 1.0 when they agree, scale-free, so one target fits every model."""
    cosines = []
    for quantized, float_ in zip(outputs, reference, strict=True):
        a = np.concatenate([np.ravel(x).astype(np.float64) for x in quantized])
        b = np.concatenate([np.ravel(x).astype(np.float64) for x in float_])
        norms = np.linalg.norm(a) * np.linalg.norm(b)
        cosines.append(1.0 if norms == 0 and np.array_equal(a, b) else float(a @ b / norms) if norms > 0 else 0.0)
    return float(np.mean(cosines))


@dataclass(frozen=True)
class MixedPrecision:
    """What mixed precision aims for.

    target: the score to reach (with the default metric, output agreement with float: mean cosine).
    max_tensors: at most this many scale groups widened (each one moves its readers off int8 kernels).
    metric: scores a model's outputs against float's (``Metric``); None: ``output_agreement``.
    max_trials: at most this many candidates get a trial of their own: the noisiest by their own
    8-bit error (the ``prior`` the package measures), where a model has more.
    trial_batches: the batches each trial runs (the first ones the package holds).
    """

    target: float = 0.99
    max_tensors: int = 32
    metric: Metric | None = None
    max_trials: int = 64
    trial_batches: int = 4

    def __post_init__(self) -> None:
        for name in ("max_tensors", "max_trials", "trial_batches"):
            if getattr(self, name) < 1:
                raise SpecError(f"mixed_precision.{name}", f"{getattr(self, name)} must be at least 1")

    def score(self, outputs, reference) -> float:
        return (self.metric or output_agreement)(outputs, reference)


@dataclass
class MixedPrecisionResult:
    """The candidates widened (in the order they were added), the score before and after, and what
    each candidate's own trial gained (every candidate measured)."""

    widened: list[str]
    before: float
    after: float
    gains: dict[str, float] = field(default_factory=dict)

    def note(self, dtype: str, limit: int = 6) -> str:
        if not self.widened:
            why = "the target holds already" if not self.gains else "no activation's trial gains"
            return f"mixed precision: no activation widened (score {self.before:.4f}: {why})"
        shown = ", ".join(f"{name} (+{self.gains[name]:.4f})" for name in self.widened[:limit])
        more = f" and {len(self.widened) - limit} more" if len(self.widened) > limit else ""
        return (
            f"mixed precision: {len(self.widened)} activation group(s) widened to {dtype}, score "
            f"{self.before:.4f} -> {self.after:.4f}: {shown}{more}"
        )


def choose_widened(
    candidates: Iterable[str],
    evaluate: Callable[[frozenset[str]], float],
    config: MixedPrecision,
    progress: Callable[[list[str]], Iterable[str]] = lambda items: items,
    prior: Mapping[str, float] | None = None,
) -> MixedPrecisionResult:
    """The smallest prefix of the candidates, most sensitive first, whose widening reaches
    ``config.target`` (or, where none does within ``config.max_tensors``, the prefix that scored
    best). ``evaluate(widened)`` scores the model with those candidates widened. ``prior``: each
    candidate's own quantization error, which picks the ``config.max_trials`` that get a trial."""
    before = evaluate(frozenset())
    if before >= config.target:
        return MixedPrecisionResult([], before, before)
    candidates = list(dict.fromkeys(candidates))
    if prior is not None and len(candidates) > config.max_trials:
        candidates = sorted(candidates, key=lambda name: (-prior.get(name, 0.0), name))[: config.max_trials]
    gains = {name: evaluate(frozenset({name})) - before for name in progress(candidates)}
    ranked = sorted((name for name in candidates if gains[name] > 0), key=lambda name: (-gains[name], name))
    best, best_score, widened = [], before, []
    for name in ranked[: config.max_tensors]:
        widened.append(name)
        score = evaluate(frozenset(widened))
        if score > best_score:
            best, best_score = list(widened), score
        if score >= config.target:
            break
    return MixedPrecisionResult(best, before, best_score, gains)
