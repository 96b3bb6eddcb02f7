"""The state of a simulated quantizer in a framework package (rq-torch, rq-tf2)."""

from enum import Enum


class Mode(Enum):
    OFF = 0  # the float values pass through
    OBSERVE = 1  # calibration: the observer sees the values, which pass through
    QUANTIZE = 2  # fake-quantized with the calibrated scale
