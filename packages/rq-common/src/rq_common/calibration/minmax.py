"""MinMax (float or power-of-two spec) and power-of-two NonOverflow: the whole observed range."""

from __future__ import annotations

from dataclasses import dataclass

from rq_common.calibration.base import RangeChooser, register_chooser
from rq_common.observers import MinMaxObserver, NonFinitePolicy, Observer
from rq_common.qmath.qparams import QParams, compute_qparams
from rq_common.spec.methods import CalibrationMethod
from rq_common.spec.quant_spec import QuantSpec


@register_chooser
@dataclass(frozen=True)
class MinMaxChooser(RangeChooser):
    """Range = [min, max] of everything seen; per channel when the spec is."""

    method = CalibrationMethod.MINMAX

    def make_observer(self, spec: QuantSpec, name: str = "tensor", nonfinite=NonFinitePolicy.RAISE) -> Observer:
        return MinMaxObserver(name=name, axis=spec.axis if spec.per_channel else None, nonfinite=nonfinite)

    def choose(self, observer: Observer, spec: QuantSpec) -> QParams:
        self._check_spec(spec)
        rmin, rmax = observer.range()
        return compute_qparams(rmin, rmax, spec)


@register_chooser
@dataclass(frozen=True)
class Pow2NonOverflowChooser(MinMaxChooser):
    """The smallest power-of-two scale that holds the whole range (vai_q method 0)."""

    method = CalibrationMethod.POT_NONOVERFLOW
