"""CI's subset of the zoo (one small model per package, few samples): every loader, data generator,
metric and the runner keep working on the real wheels. What rq does on them is measured, not
asserted here: a preset that fails is a FAILED row with its reason (the later issues fix those)."""

from pathlib import Path

import pytest

from zoo import run
from zoo.registry import get


@pytest.fixture(scope="module")
def ci_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("zoo")
    report = work / "zoo_ci.md"
    runs = run.main(["--ci", "--work", str(work), "--out", str(report)])
    return runs, report


def test_the_subset_covers_every_framework():
    assert {get(name).framework.value for name in run.CI_MODELS} == {"onnx", "torch", "tf2", "tf1"}


@pytest.mark.parametrize("name", run.CI_MODELS)
def test_float_model_loads_and_reaches_its_metric(ci_run, name):
    runs, _ = ci_run
    model_run = next(r for r in runs if r.entry.name == name)
    assert model_run.ok("float"), model_run.failure("float")
    assert model_run.ok("evaluate"), model_run.failure("evaluate")
    assert model_run.entry.float_floor is not None, f"{name} declares no float_floor"
    metric, least = model_run.entry.float_floor
    assert model_run.steps["evaluate"]["metrics"]["float.onnx"][metric] >= least


@pytest.mark.parametrize("name", run.CI_MODELS)
def test_every_quantizer_gives_a_row(ci_run, name):
    runs, report = ci_run
    model_run = next(r for r in runs if r.entry.name == name)
    assert model_run.ok("ort"), model_run.failure("ort")  # ONNX Runtime's quantizer takes every float export
    assert run._headline(model_run, "ort_int8.onnx") is not None
    for preset in model_run.entry.presets:
        step = model_run.steps[f"rq_{preset}"]
        assert step["ok"] or step["error"], step  # a file, or a reason
        if step["ok"]:
            assert (Path(report).parent / name / f"rq_{preset}.onnx").exists()
    text = Path(report).read_text()
    assert f"| {name} |" in text
