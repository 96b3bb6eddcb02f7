"""Range choosers (calibration methods) on top of the observers, and a per-tensor Calibrator."""

from rq_common.calibration.base import CHOOSERS, Calibrator, RangeChooser, make_chooser, register_chooser
from rq_common.calibration.entropy import EntropyChooser
from rq_common.calibration.groups import ScaleGroups
from rq_common.calibration.minmax import MinMaxChooser, Pow2NonOverflowChooser
from rq_common.calibration.mse import MseChooser
from rq_common.calibration.percentile import PercentileChooser
from rq_common.calibration.pow2 import Pow2MinMseChooser, pow2_candidates
from rq_common.calibration.squared_error import expected_squared_error

__all__ = [
    "CHOOSERS",
    "Calibrator",
    "EntropyChooser",
    "MinMaxChooser",
    "MseChooser",
    "PercentileChooser",
    "Pow2MinMseChooser",
    "Pow2NonOverflowChooser",
    "RangeChooser",
    "ScaleGroups",
    "expected_squared_error",
    "make_chooser",
    "pow2_candidates",
    "register_chooser",
]
