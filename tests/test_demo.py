"""The README's main job, run as a test: every package's int8 model is in the format, keeps the
accuracy, the QAT branch runs where PTQ lost more than the threshold, and the same run gives the
same bytes."""

import numpy as np
import onnxruntime as ort
import pytest
import same_network

from rq_common.format import validate

import digits_demo


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    first, second = tmp_path_factory.mktemp("a"), tmp_path_factory.mktemp("b")
    rows = digits_demo.main(["--out", str(first), "--quiet"])
    digits_demo.main(["--out", str(second), "--quiet"])
    return rows, first, second


def test_every_framework_and_preset_keeps_accuracy(runs):
    rows, out, _ = runs
    assert {(r["framework"], r["preset"]) for r in rows} == {(f, p) for f in digits_demo.FRAMEWORKS for p in digits_demo.PRESETS}
    data = digits_demo.load_data()
    session = ort.InferenceSession(str(out / "digits_float.onnx"), providers=["CPUExecutionProvider"])
    float_accuracy = np.mean(np.concatenate([session.run(None, {"x": x[None]})[0] for x in data.x_test]).argmax(1) == data.y_test)
    assert float_accuracy > 0.95
    for row in rows:
        assert row["drop"] <= 0.015, row
        assert validate(row["path"], row["preset"]) == [], row
        # the table's accuracy, checked here with a session of our own (NHWC for Keras and TF1)
        session = ort.InferenceSession(str(row["path"]), providers=["CPUExecutionProvider"])
        x = same_network.to_nhwc(data.x_test) if row["framework"] in ("tf2", "tf1") else data.x_test
        name = session.get_inputs()[0].name
        logits = np.concatenate([session.run(None, {name: x[i : i + 1]})[0] for i in range(len(x))])
        assert np.mean(logits.argmax(1) == data.y_test) == pytest.approx(row["accuracy"])
        assert row["size"] < 0.6 * (out / "digits_float.onnx").stat().st_size


def test_qat_runs_where_ptq_lost_more_than_the_threshold(runs):
    rows, _, _ = runs
    trained = [r for r in rows if r["step"] == "PTQ + QAT"]
    assert trained and {r["framework"] for r in trained} <= digits_demo.TRAINS
    assert (runs[1] / "report_npu_cnn.html").read_text().count("<rect") >= 3


def test_same_run_gives_byte_identical_files(runs):
    _, first, second = runs
    names = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
    assert names == sorted(p.relative_to(second) for p in second.rglob("*") if p.is_file())
    for name in names:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name
