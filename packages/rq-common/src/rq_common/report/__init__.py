"""Per-tensor error statistics and their JSON / HTML rendering."""

from rq_common.report.report import QuantReport, render_html
from rq_common.report.stats import TensorErrorStats

__all__ = ["QuantReport", "TensorErrorStats", "render_html"]
