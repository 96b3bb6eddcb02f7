import json
import math
from xml.etree import ElementTree

import numpy as np
import pytest

from rq_common import QParams, QuantSpec, fake_quantize
from rq_common.report import QuantReport, TensorErrorStats


def test_stats_against_hand_computed_values():
    stats = TensorErrorStats("t")
    qp = QParams(np.float32(1.0), 0, QuantSpec(dtype="int8"))
    ref = np.array([3.0, -4.0, 200.0])
    stats.update(ref, np.array([3.0, -4.0, 127.0]), qp)
    # signal 9 + 16 + 40000, error 73^2
    assert stats.sqnr_db == pytest.approx(10 * math.log10(40025 / 5329))
    assert stats.max_abs_error == 73.0
    assert stats.clipped_fraction == pytest.approx(1 / 3)


def test_streaming_equals_one_batch(rng):
    qp = QParams(np.float32(0.05), 0, QuantSpec(dtype="int8"))
    x = rng.standard_normal((10, 1000)) * 3
    streamed, whole = TensorErrorStats("a"), TensorErrorStats("a")
    for row in x:
        streamed.update(row, fake_quantize(row, qp), qp)
    whole.update(x, fake_quantize(x, qp), qp)
    assert streamed.sqnr_db == pytest.approx(whole.sqnr_db, rel=1e-12)
    assert streamed.clipped == whole.clipped == int(np.sum(x > 6.35 + 1e-6) + np.sum(x < -6.4 - 1e-6))
    assert streamed.max_abs_error == whole.max_abs_error


def test_per_channel_clipping():
    spec = QuantSpec(dtype="int8", granularity="per_channel", axis=1)
    qp = QParams(np.float32([1.0, 0.01]), np.int8([0, 0]), spec, axis=1)
    stats = TensorErrorStats("w")
    x = np.array([[5.0, 5.0], [-5.0, 0.5]])
    stats.update(x, x, qp)
    assert stats.clipped == 1  # 5.0 in channel 1 exceeds 1.27


def test_report_json_and_html_worst_first(tmp_path, rng):
    report = QuantReport(notes=["calibrated on random data (requested with --random-data)"])
    report.stats("good").update(np.ones(4), np.ones(4) * 1.001)
    report.stats("bad").update(np.ones(4), np.ones(4) * 1.5)
    report.stats("exact").update(np.ones(4), np.ones(4))
    data = json.loads(report.to_json(tmp_path / "r.json"))
    assert [t["name"] for t in data["tensors"]] == ["bad", "good", "exact"]
    assert data["tensors"][2]["sqnr_db"] == "inf"
    assert data["notes"][0].startswith("calibrated on random data")
    page = report.to_html(tmp_path / "r.html")
    assert (tmp_path / "r.html").read_text() == page
    assert page.index("calibrated on random data") < page.index("<svg")
    assert page.index(">bad<") < page.index(">good<") < page.index(">exact<")
    assert "<script" not in page and "http" not in page.replace("http://www.w3.org/2000/svg", "")
    assert not list(tmp_path.glob(".*tmp"))
    svg = page[page.index("<svg") : page.index("</svg>") + len("</svg>")]
    bars = ElementTree.fromstring(svg).findall("{http://www.w3.org/2000/svg}rect")
    widths = [float(b.get("width")) for b in bars]
    assert len(bars) == 3 and widths[0] < widths[1] <= widths[2]  # worst (shortest bar) first
