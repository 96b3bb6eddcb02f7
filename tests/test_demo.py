"""The README's main job, run as a test: every preset's int8 model is valid, accurate, deterministic."""

import numpy as np
import onnxruntime as ort
import pytest

from rq_common.format import validate

import digits_demo

PRESETS = ("npu_cnn", "npu_transformer", "cpu")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    first, second = tmp_path_factory.mktemp("a"), tmp_path_factory.mktemp("b")
    rows = digits_demo.main(["--out", str(first), "--quiet"])
    digits_demo.main(["--out", str(second), "--quiet"])
    return rows, first, second


def test_every_preset_keeps_accuracy(runs):
    rows, out, _ = runs
    data = digits_demo.load_data()
    float_session = ort.InferenceSession(str(out / "digits_float.onnx"), providers=["CPUExecutionProvider"])
    (float_logits,) = float_session.run(None, {"x": data.x_test})
    float_accuracy = np.mean(float_logits.argmax(1) == data.y_test)
    assert float_accuracy > 0.95
    for preset in PRESETS:
        session = ort.InferenceSession(str(out / f"digits_{preset}.onnx"), providers=["CPUExecutionProvider"])
        batch = 1 if preset == "npu_cnn" else len(data.x_test)  # the NPU model has batch 1
        logits = np.concatenate(
            [session.run(None, {"x": data.x_test[i : i + batch]})[0] for i in range(0, len(data.x_test), batch)]
        )
        accuracy = np.mean(logits.argmax(1) == data.y_test)
        assert float_accuracy - accuracy <= 0.010, preset
        row = next(r for r in rows if r["preset"] == preset)
        assert row["accuracy"] == pytest.approx(accuracy)


def test_outputs_are_in_the_format_and_smaller(runs):
    _, out, _ = runs
    float_size = (out / "digits_float.onnx").stat().st_size
    for preset in PRESETS:
        path = out / f"digits_{preset}.onnx"
        assert validate(path, preset) == []
        assert path.stat().st_size < 0.5 * float_size
        assert (out / f"report_{preset}.html").read_text().count("<rect") >= 3  # x, hidden, logits at least


def test_same_inputs_give_byte_identical_files(runs):
    _, first, second = runs
    names = sorted(p.name for p in first.iterdir())
    assert names == sorted(p.name for p in second.iterdir())
    for name in names:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name
