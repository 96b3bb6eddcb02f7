"""Bad input: one clear error each, and no output file."""

import os

import nets
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from rq_common.errors import CalibrationDataError, RqError
from rq_onnx import quantize_static
from rq_onnx.errors import CalibrationReaderError, ModelLoadError

from conftest import ArrayReader


def data(n=4):
    return np.random.default_rng(0).standard_normal((n, 3, 16, 16)).astype(np.float32)


@pytest.fixture
def model_path(tmp_path):
    path = tmp_path / "float.onnx"
    onnx.save(nets.resnet_block_net(), path)
    return path


def expect_error(tmp_path, error_type, match, model, reader, **kw):
    out = tmp_path / "out" / "int8.onnx"
    with pytest.raises(error_type, match=match):
        quantize_static(model, out, reader, quiet=True, **kw)
    assert not out.exists() and not (out.parent.exists() and any(out.parent.iterdir()))


def test_not_an_onnx_file(tmp_path):
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"this is not a protobuf \x00\xff\x13" * 10)
    expect_error(tmp_path, ModelLoadError, "is not an ONNX model", bad, ArrayReader("input", data()))


def test_missing_file(tmp_path):
    expect_error(tmp_path, ModelLoadError, "no such model file", tmp_path / "nope.onnx", ArrayReader("input", data()))


def test_reader_keys_do_not_match(tmp_path, model_path):
    expect_error(
        tmp_path,
        CalibrationReaderError,
        r"gives inputs \['image'\], the model's inputs are \['input'\]",
        model_path,
        ArrayReader("image", data()),
    )


def test_reader_yields_nothing(tmp_path, model_path):
    expect_error(tmp_path, CalibrationReaderError, "yielded no batches", model_path, ArrayReader("input", data()[:0]))


def test_nan_in_calibration_data(tmp_path, model_path):
    bad = data()
    bad[2, 0, 3, 3] = np.nan
    expect_error(tmp_path, CalibrationDataError, "input: calibration batch holds 1 NaN", model_path, ArrayReader("input", bad))


def test_wrong_shape(tmp_path, model_path):
    expect_error(tmp_path, CalibrationReaderError, "has shape", model_path, ArrayReader("input", data()[:, :, :8]))


def test_opset_below_7(tmp_path):
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "old",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    old = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 6)], ir_version=3)
    expect_error(
        tmp_path, ModelLoadError, "opset 6; rq-onnx reads opset 7 and later", old, ArrayReader("x", np.ones((2, 4), np.float32))
    )


def test_unknown_preset_and_override(tmp_path, model_path):
    expect_error(tmp_path, RqError, "unknown preset", model_path, ArrayReader("input", data()), preset="int4")
    expect_error(
        tmp_path, RqError, "weight.granularity", model_path, ArrayReader("input", data()), preset="npu_cnn", per_channel=True
    )


def test_unsupported_op_stays_float_and_is_reported(tmp_path):
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((4, 4)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["m"], name="mm"), helper.make_node("Sin", ["m"], ["y"], name="sin")],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        [w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    result = quantize_static(model, tmp_path / "q.onnx", ArrayReader("x", np.ones((3, 4), np.float32)), preset="cpu", quiet=True)
    assert [(f.node, f.op) for f in result.float_ops] == [("sin", "Sin")]
    assert "kept in float: sin (Sin): no quantization rule for Sin" in result.report.notes[0]
    assert (tmp_path / "q.onnx").exists()


def test_already_quantized_model_is_rejected(tmp_path, model_path):
    result = quantize_static(model_path, tmp_path / "q.onnx", ArrayReader("input", data()), preset="cpu", quiet=True)
    expect_error(tmp_path / "again", ModelLoadError, "already quantized", result.path, ArrayReader("input", data()))


def test_input_file_is_not_modified(tmp_path, model_path):
    before = model_path.read_bytes()
    quantize_static(model_path, tmp_path / "q.onnx", ArrayReader("input", data()), quiet=True)
    assert model_path.read_bytes() == before


class CountingReader(ArrayReader):
    """Counts the batches it served: a check "before calibration" serves none."""

    served = 0

    def get_next(self):
        CountingReader.served += 1
        return super().get_next()


@pytest.mark.parametrize("case", ["over the input", "a folder", "under a file"])
def test_output_path_checked_before_calibration(tmp_path, model_path, case):
    from rq_common.errors import OutputPathError

    before = model_path.read_bytes()
    (tmp_path / "folder.onnx").mkdir()
    out = {"over the input": model_path, "a folder": tmp_path / "folder.onnx", "under a file": model_path / "int8.onnx"}[case]
    CountingReader.served = 0
    with pytest.raises(
        OutputPathError,
        match={"over the input": "is the input model", "a folder": "is a folder", "under a file": "is a file, not a folder"}[
            case
        ],
    ):
        quantize_static(model_path, out, CountingReader("input", data()), quiet=True)
    assert CountingReader.served == 0 and model_path.read_bytes() == before


def test_infinities_stop_calibration_unless_the_policy_ignores_them(tmp_path):
    """A float input that holds -inf on purpose (a float attention bias): by default one line that
    names the tensor and the option; with nonfinite="ignore_inf" the range comes from the finite
    values and ONNX Runtime saturates the infinities to its ends."""
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "bias"], ["s"], name="add"), helper.make_node("Sigmoid", ["s"], ["y"], name="sigmoid")],
        "inf",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [4, 6]) for n in ("x", "bias")],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 6])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    rng = np.random.default_rng(0)
    x = rng.standard_normal((32, 6)).astype(np.float32)
    bias = np.zeros((32, 6), np.float32)
    bias[:, -2:] = -np.inf
    from rq_onnx import ArrayReader as Reader

    with pytest.raises(CalibrationDataError, match=r"bias: calibration batch holds 0 NaN and 8 infinite.*--nonfinite ignore_inf"):
        quantize_static(model, tmp_path / "q.onnx", Reader({"x": x, "bias": bias}, 4), preset="cpu", quiet=True)
    assert not (tmp_path / "q.onnx").exists()
    result = quantize_static(model, None, Reader({"x": x, "bias": bias}, 4), preset="cpu", quiet=True, nonfinite="ignore_inf")
    from conftest import run

    y = run(result.model, {"x": x[:4], "bias": bias[:4]})[0]
    assert np.isfinite(y).all() and np.abs(y[:, :-2] - 1 / (1 + np.exp(-x[:4, :-2]))).max() < 0.02
    with pytest.raises(RqError, match="nonfinite: 'skip' is not a policy; use one of: raise, ignore_inf"):
        quantize_static(model, None, Reader({"x": x, "bias": bias}, 4), quiet=True, nonfinite="skip")


# -- the bad-input corpus through the command line: one line, exit 2, the reader's own error, nothing written
def _corrupt_npz(folder):
    (folder / "calib.npz").write_bytes(np.random.default_rng(1).bytes(300))
    return folder / "calib.npz"


def _corrupt_image(folder):
    from PIL import Image

    (folder / "images").mkdir()
    Image.new("RGB", (20, 20)).save(folder / "images" / "a.png")
    (folder / "images" / "b.jpg").write_bytes(np.random.default_rng(2).bytes(300))
    return folder / "images"


def _corrupt_npy(folder):
    (folder / "samples").mkdir()
    np.save(folder / "samples" / "a.npy", data(1)[0])
    (folder / "samples" / "b.npy").write_bytes(b"\x93NUMPY broken")
    return folder / "samples"


def _npz_of(values):
    def make(folder):
        np.savez(folder / "calib.npz", input=values)
        return folder / "calib.npz"

    return make


BAD_DATA = {
    "corrupt npz": (_corrupt_npz, r"calib.npz is not an .npz file \(not a zip archive of arrays\); save it with np.savez"),
    "corrupt image": (_corrupt_image, r"b.jpg is not a readable image \(cannot identify image file\); replace it or remove it"),
    "corrupt npy": (_corrupt_npy, r"b.npy is not a readable .npy file .*; save each sample with np.save"),
    "strings": (_npz_of(data().astype(np.str_)), r"input 'input' holds <U\d+ values, not numbers; .*give numeric arrays"),
    "uint8": (
        _npz_of((np.abs(data()) * 60).astype(np.uint8)),
        r"input 'input' is uint8 data, the model takes tensor\(float\); convert it as the model's preprocessing does",
    ),
    "missing path": (lambda folder: folder / "nope.npz", r"the calibration data \S*nope.npz does not exist; give an existing"),
}


@pytest.mark.parametrize("case", BAD_DATA)
def test_bad_calibration_data_is_one_line_and_writes_nothing(tmp_path, model_path, capsys, case):
    from rq_onnx.cli import main
    from rq_onnx.prepare import load_model
    from rq_onnx.readers import open_calibration_data

    make, message = BAD_DATA[case]
    calib = make(tmp_path)
    out = tmp_path / "out" / "int8.onnx"
    with pytest.raises(RqError, match=message) as info:  # the API: the reader's own error class
        quantize_static(model_path, out, open_calibration_data(calib, load_model(model_path)), quiet=True)
    assert type(info.value) is CalibrationReaderError and "\n" not in str(info.value)
    args = ["quantize", str(model_path), str(out), "--calib-data", str(calib), "--preset", "cpu", "--quiet"]
    assert main(args) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("rq-onnx: error: ") and captured.err.count("\n") == 1 and "Traceback" not in captured.err
    assert __import__("re").search(message, captured.err)
    assert not out.exists() and not out.parent.exists()


def test_uint8_is_refused_before_any_batch_is_calibrated(tmp_path, model_path):
    """Raw pixels for a float input are refused at batch 1, not cast (their range is not the model's)."""
    from rq_onnx import ArrayReader as Reader

    reader = Reader({"input": (np.abs(data()) * 60).astype(np.uint8)}, 1)
    with pytest.raises(CalibrationReaderError, match="batch 1: input 'input' is uint8 data"):
        quantize_static(model_path, tmp_path / "q.onnx", reader, quiet=True)
    assert reader.position == 1 and not (tmp_path / "q.onnx").exists()


@pytest.mark.parametrize("rewinds", [True, False])
def test_float64_data_is_converted_with_a_note(tmp_path, model_path, rewinds):
    """float64 (numpy's default) feeds a float32 input as float32, in calibration and in the report
    (the report step read a rewound reader's float64 batches and failed in ONNX Runtime)."""
    from rq_onnx import ArrayReader as Reader

    x = data().astype(np.float64)
    reader = Reader({"input": x}, 2) if rewinds else ArrayReader("input", x, 2)
    expected = quantize_static(model_path, None, ArrayReader("input", x.astype(np.float32), 2), preset="cpu", quiet=True)
    result = quantize_static(model_path, tmp_path / "q.onnx", reader, preset="cpu", quiet=True)
    note = "calibration input 'input': float64 data converted to float32, the model's input type"
    assert note in result.notes and note in result.report.notes and result.path.exists()
    assert result.model.SerializeToString() == expected.model.SerializeToString()
    assert result.report.tensors and all(np.isfinite(t.sqnr_db) for t in result.report.tensors.values())


def test_float64_through_the_cli_prints_the_note(tmp_path, model_path, capsys):
    from rq_onnx.cli import main

    np.savez(tmp_path / "calib.npz", input=data().astype(np.float64))
    args = ["quantize", str(model_path), str(tmp_path / "q.onnx"), "--calib-data", str(tmp_path / "calib.npz"), "--quiet"]
    assert main([*args, "--preset", "cpu"]) == 0
    assert "note: calibration input 'input': float64 data converted to float32" in capsys.readouterr().out
    assert (tmp_path / "q.onnx").exists()


def test_integer_inputs_take_integers_that_fit(tmp_path):
    from rq_onnx.calibrate import check_feed

    class Input:
        name, type, shape = "ids", "tensor(int64)", ["N", 3]

    notes: list[str] = []
    fed = check_feed({"ids": np.array([[1, 2, 3]], np.int32)}, [Input()], 1, notes)
    assert fed["ids"].dtype == np.int64 and notes == [
        "calibration input 'ids': int32 data converted to int64, the model's input type"
    ]
    with pytest.raises(
        CalibrationReaderError, match="'ids' is float32 data, the model takes tensor\\(int64\\): give integer arrays"
    ):
        check_feed({"ids": np.ones((1, 3), np.float32)}, [Input()], 1)
    Input.type = "tensor(int8)"
    with pytest.raises(CalibrationReaderError, match="holds values that int8, the model's type, cannot hold"):
        check_feed({"ids": np.array([[1, 2, 300]])}, [Input()], 1)


def _read_only_output_case(tmp_path, model_path, capsys):
    from rq_common.errors import OutputPathError
    from rq_onnx.cli import main

    np.savez(tmp_path / "calib.npz", input=data())
    out = tmp_path / "locked" / "int8.onnx"
    CountingReader.served = 0
    with pytest.raises(OutputPathError, match=r"the folder \S*locked is not writable; choose another output path"):
        quantize_static(model_path, out, CountingReader("input", data()), quiet=True)
    assert CountingReader.served == 0
    assert main(["quantize", str(model_path), str(out), "--calib-data", str(tmp_path / "calib.npz"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rq-onnx: error: cannot write") and "is not writable" in err and err.count("\n") == 1
    assert not out.exists() and not any((tmp_path / "locked").iterdir())


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a 0o555 folder; the os.access case below runs instead")
def test_read_only_output_folder(tmp_path, model_path, capsys):
    (tmp_path / "locked").mkdir()
    (tmp_path / "locked").chmod(0o555)
    try:
        _read_only_output_case(tmp_path, model_path, capsys)
    finally:
        (tmp_path / "locked").chmod(0o755)


def test_read_only_output_folder_as_the_os_reports_it(tmp_path, model_path, capsys, monkeypatch):
    """The same check where the tests run as root: os.access says the folder is not writable."""
    import rq_common.io

    (tmp_path / "locked").mkdir()
    real = os.access
    monkeypatch.setattr(rq_common.io.os, "access", lambda path, mode: real(path, mode) and "locked" not in str(path))
    _read_only_output_case(tmp_path, model_path, capsys)
