"""Streaming, mergeable, bounded-memory statistics of tensors seen during calibration."""

from rq_common.observers.base import NonFinitePolicy, Observer
from rq_common.observers.histogram import HistogramObserver
from rq_common.observers.minmax import MinMaxObserver, MovingAverageMinMaxObserver

__all__ = ["HistogramObserver", "MinMaxObserver", "MovingAverageMinMaxObserver", "NonFinitePolicy", "Observer"]
