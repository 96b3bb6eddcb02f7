"""A collection of per-tensor statistics, rendered to JSON and to a self-contained HTML page."""

from __future__ import annotations

import html
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from rq_common.io import atomic_write_text
from rq_common.report.stats import TensorErrorStats


def _json_number(value: float) -> float | str:
    return value if math.isfinite(value) else ("inf" if value > 0 else "-inf")


@dataclass
class QuantReport:
    """Statistics per tensor plus notes shown first (``notes[0]`` is the report's first line)."""

    title: str = "rq quantization report"
    notes: list[str] = field(default_factory=list)
    tensors: dict[str, TensorErrorStats] = field(default_factory=dict)

    def stats(self, name: str) -> TensorErrorStats:
        """The statistics of ``name``, created on first use."""
        if name not in self.tensors:
            self.tensors[name] = TensorErrorStats(name)
        return self.tensors[name]

    def worst_first(self) -> list[TensorErrorStats]:
        """Lowest SQNR first; ties by name, so the order is deterministic."""
        return sorted(self.tensors.values(), key=lambda s: (s.sqnr_db, s.name))

    def to_dict(self) -> dict:
        rows = []
        for s in self.worst_first():
            row = s.as_dict()
            row["sqnr_db"] = _json_number(row["sqnr_db"])
            rows.append(row)
        return {"title": self.title, "notes": list(self.notes), "tensors": rows}

    def to_json(self, path: str | Path | None = None) -> str:
        text = json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"
        if path is not None:
            atomic_write_text(path, text)
        return text

    def to_html(self, path: str | Path | None = None) -> str:
        text = render_html(self)
        if path is not None:
            atomic_write_text(path, text)
        return text


_BAR_HEIGHT = 18
_CHART_WIDTH = 420
_LABEL_WIDTH = 260


def _bar_chart(rows: list[TensorErrorStats]) -> str:
    """Horizontal SVG bars of SQNR (dB), worst first; infinite SQNR drawn full length."""
    finite = [s.sqnr_db for s in rows if math.isfinite(s.sqnr_db)]
    top = max([v for v in finite if v > 0], default=1.0)
    height = _BAR_HEIGHT * len(rows) + 24
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{_LABEL_WIDTH + _CHART_WIDTH + 80}" height="{height}" role="img" aria-label="SQNR per tensor">'
    ]
    for i, s in enumerate(rows):
        y = i * _BAR_HEIGHT
        value = s.sqnr_db
        length = _CHART_WIDTH if value == math.inf else max(0.0, min(value, top)) / top * _CHART_WIDTH
        color = "#c0392b" if value < 20 else "#e67e22" if value < 30 else "#27ae60"
        label = html.escape(s.name if len(s.name) <= 40 else "..." + s.name[-37:])
        shown = "inf" if value == math.inf else f"{value:.1f} dB"
        parts.append(f'<text x="{_LABEL_WIDTH - 6}" y="{y + 13}" text-anchor="end" font-size="12">{label}</text>')
        parts.append(f'<rect x="{_LABEL_WIDTH}" y="{y + 3}" width="{length:.1f}" height="{_BAR_HEIGHT - 6}" fill="{color}"/>')
        parts.append(f'<text x="{_LABEL_WIDTH + length + 4:.1f}" y="{y + 13}" font-size="11">{shown}</text>')
    parts.append("</svg>")
    return "\n".join(parts)


def render_html(report: QuantReport) -> str:
    rows = report.worst_first()
    table = "\n".join(
        "<tr>"
        f"<td>{html.escape(s.name)}</td><td>{s.sqnr_db:.2f}</td><td>{s.max_abs_error:.6g}</td>"
        f"<td>{100 * s.clipped_fraction:.4f}%</td><td>{s.count}</td>"
        "</tr>"
        for s in rows
    )
    notes = "".join(f"<p class='note'>{html.escape(n)}</p>" for n in report.notes)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(report.title)}</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}td:first-child{{text-align:left}}.note{{font-weight:bold}}</style>
</head><body>
<h1>{html.escape(report.title)}</h1>
{notes}
<h2>SQNR per tensor, worst first</h2>
{_bar_chart(rows)}
<h2>Table</h2>
<table><tr><th>tensor</th><th>SQNR (dB)</th><th>max |error|</th><th>clipped</th><th>values</th></tr>
{table}
</table>
</body></html>
"""
