"""Bad input: one clear error each, and no output file."""

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
