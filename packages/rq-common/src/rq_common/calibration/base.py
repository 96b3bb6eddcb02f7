"""The range-chooser interface, its registry, and a per-tensor calibrator built on it.

A chooser says which observer it needs (make_observer) and turns that observer's statistics
into QParams for a spec (choose). Choosers register themselves by CalibrationMethod, so adding
one is a new module, not a new branch in a long if/elif.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import numpy as np

from rq_common.errors import SpecError
from rq_common.observers import HistogramObserver, NonFinitePolicy, Observer
from rq_common.qmath.qparams import QParams
from rq_common.spec.methods import CalibrationMethod
from rq_common.spec.quant_spec import QuantSpec, coerce_enum

CHOOSERS: dict[CalibrationMethod, type[RangeChooser]] = {}


def register_chooser(cls: type[RangeChooser]) -> type[RangeChooser]:
    CHOOSERS[cls.method] = cls
    return cls


class RangeChooser(ABC):
    method: ClassVar[CalibrationMethod]

    def make_observer(self, spec: QuantSpec, name: str = "tensor", nonfinite=NonFinitePolicy.RAISE) -> Observer:
        """A fresh observer of the kind this chooser reads (a histogram unless overridden)."""
        if spec.per_channel:
            raise SpecError(
                "method", f"{self.method.value} chooses one range per tensor; per-channel specs use minmax or pot_nonoverflow"
            )
        return HistogramObserver(name=name, nonfinite=nonfinite)

    @abstractmethod
    def choose(self, observer: Observer, spec: QuantSpec) -> QParams:
        """QParams for ``spec`` from the observer's statistics."""

    def _check_spec(self, spec: QuantSpec) -> None:
        if self.method.needs_power_of_two and not spec.power_of_two:
            raise SpecError("scale_type", f"{self.method.value} needs a power-of-two spec")
        if self.method.needs_float_scale and spec.power_of_two:
            raise SpecError("scale_type", f"{self.method.value} searches float scales; use pot_minmse for power-of-two")


def make_chooser(method: CalibrationMethod | str, **params: Any) -> RangeChooser:
    """The chooser for ``method`` with its parameters (percentile=..., num_candidates=...)."""
    try:
        method = coerce_enum("method", method, CalibrationMethod)
    except SpecError as error:
        raise SpecError("method", f"unknown calibration method: {str(error).partition(': ')[2]}") from None
    return CHOOSERS[method](**params)


class Calibrator:
    """Observer + chooser for one tensor: feed batches, then ask for QParams."""

    def __init__(
        self,
        spec: QuantSpec,
        method: CalibrationMethod | str | RangeChooser,
        name: str = "tensor",
        nonfinite=NonFinitePolicy.RAISE,
    ):
        self.spec = spec
        self.chooser = method if isinstance(method, RangeChooser) else make_chooser(method)
        self.chooser._check_spec(spec)
        self.observer = self.chooser.make_observer(spec, name=name, nonfinite=nonfinite)

    def update(self, x: np.ndarray) -> None:
        self.observer.update(x)

    def merge(self, other: Calibrator) -> Calibrator:
        self.observer.merge(other.observer)
        return self

    def qparams(self) -> QParams:
        return self.chooser.choose(self.observer, self.spec)
