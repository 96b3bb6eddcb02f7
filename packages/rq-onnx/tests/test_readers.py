import nets
import numpy as np
import pytest
from onnx import TensorProto, helper
from PIL import Image

from rq_onnx import ImageFolderReader, NpyFolderReader, NpzReader, RandomDataReader, open_calibration_data, quantize_static
from rq_onnx.errors import CalibrationReaderError


def drain(reader):
    out = []
    while (batch := reader.get_next()) is not None:
        out.append(batch)
    return out


def test_npz_batches_and_rewind(tmp_path):
    x = np.arange(10 * 2, dtype=np.float32).reshape(10, 2)
    np.savez(tmp_path / "d.npz", x=x)
    reader = NpzReader(tmp_path / "d.npz", batch_size=4, input_names=["x"])
    assert len(reader) == 3
    batches = drain(reader)
    assert [b["x"].shape[0] for b in batches] == [4, 4, 2]
    np.testing.assert_array_equal(np.concatenate([b["x"] for b in batches]), x)
    reader.rewind()
    assert len(drain(reader)) == 3
    with pytest.raises(CalibrationReaderError, match=r"holds arrays \['x'\]; the model's inputs are \['y'\]"):
        NpzReader(tmp_path / "d.npz", 1, ["y"])


def test_npy_folder_single_and_multi_input(tmp_path):
    for i in range(5):
        np.save(tmp_path / f"s{i:02d}.npy", np.full((3, 2), i, np.float32))
    reader = NpyFolderReader(tmp_path, [("x", ["N", 3, 2])], batch_size=2)
    batches = drain(reader)
    assert [b["x"].shape for b in batches] == [(2, 3, 2), (2, 3, 2), (1, 3, 2)]
    assert batches[2]["x"][0, 0, 0] == 4
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        for i in range(3):
            np.save(tmp_path / name / f"{i}.npy", np.full((1, 4), i, np.float32))
    multi = NpyFolderReader(tmp_path, [("a", ["N", 4]), ("b", ["N", 4])], batch_size=3)
    assert drain(multi)[0]["b"].shape == (3, 4)


def test_image_folder_resize_crop_normalize(tmp_path):
    Image.new("RGB", (40, 30), (255, 0, 128)).save(tmp_path / "a.png")
    Image.new("RGB", (30, 30), (0, 0, 0)).save(tmp_path / "b.png")
    nchw = drain(ImageFolderReader(tmp_path, "img", [1, 3, 16, 16], batch_size=2))[0]["img"]
    assert nchw.shape == (2, 3, 16, 16) and nchw.dtype == np.float32
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    expected = (np.array([1.0, 0.0, 128 / 255]) - mean) / std  # a constant colour survives resize and crop
    np.testing.assert_allclose(nchw[0, :, 5, 5], expected, rtol=1e-5)
    np.testing.assert_allclose(nchw[1, :, 0, 0], -mean / std, rtol=1e-5)
    nhwc = drain(ImageFolderReader(tmp_path, "img", ["N", 16, 16, 3]))[0]["img"]
    assert nhwc.shape == (1, 16, 16, 3)


def test_open_calibration_data_dispatch_and_errors(tmp_path):
    model = nets.resnet_block_net()
    np.savez(tmp_path / "c.npz", input=np.zeros((2, 3, 16, 16), np.float32))
    assert isinstance(open_calibration_data(tmp_path / "c.npz", model), NpzReader)
    (tmp_path / "imgs").mkdir()
    Image.new("RGB", (20, 20)).save(tmp_path / "imgs" / "x.jpg")
    assert isinstance(open_calibration_data(tmp_path / "imgs", model), ImageFolderReader)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CalibrationReaderError, match="neither .npy files nor images"):
        open_calibration_data(tmp_path / "empty", model)
    (tmp_path / "c.txt").write_text("1 2 3")
    with pytest.raises(CalibrationReaderError, match="must be an .npz file"):
        open_calibration_data(tmp_path / "c.txt", model)
    with pytest.raises(CalibrationReaderError, match=r"the calibration data \S*c.npy does not exist"):
        open_calibration_data(tmp_path / "c.npy", model)


def test_random_data_is_announced_in_the_report_first_line():
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    result = quantize_static(model, None, RandomDataReader([("x", ["N", 4])], num_samples=4), preset="cpu", quiet=True)
    assert result.report.notes[0].startswith("WARNING: calibrated on random data")
    assert "WARNING: calibrated on random data" in result.report.to_html().split("<svg")[0]


def test_an_onnxruntime_reader_works_unchanged(tmp_path):
    from onnxruntime.quantization import CalibrationDataReader

    class OrtStyleReader(CalibrationDataReader):  # as users of ORT's quantize_static write them
        def __init__(self):
            self.data = iter([{"input": np.full((1, 3, 16, 16), v, np.float32)} for v in (-1.0, 0.5, 2.0)])

        def get_next(self):
            return next(self.data, None)

    result = quantize_static(nets.resnet_block_net(), tmp_path / "q.onnx", OrtStyleReader(), preset="cpu", quiet=True)
    assert result.violations == [] and result.path.exists()
    lo, hi = result.qparams["input"].representable_range()
    assert lo <= -1.0 and hi >= 2.0 - float(result.qparams["input"].scale)


def test_external_data_for_large_models(tmp_path):
    data = np.random.default_rng(0).standard_normal((4, 3, 16, 16)).astype(np.float32)
    from conftest import ArrayReader, run

    written = quantize_static(
        nets.resnet_block_net(),
        tmp_path / "big.onnx",
        ArrayReader("input", data),
        preset="cpu",
        use_external_data=True,
        quiet=True,
    )
    assert written.path == tmp_path / "big.onnx"
    assert (tmp_path / "big.onnx.data").stat().st_size > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.onnx", "big.onnx.data"]
    inline = quantize_static(nets.resnet_block_net(), None, ArrayReader("input", data), preset="cpu", quiet=True)
    np.testing.assert_array_equal(
        run(str(tmp_path / "big.onnx"), {"input": data[:1]})[0], run(inline.model, {"input": data[:1]})[0]
    )


def test_models_over_the_protobuf_limit_go_through_external_data(monkeypatch):
    """The 2 GB path, exercised on a small model by lowering the limit."""
    import rq_common.io

    from conftest import ArrayReader

    data = np.random.default_rng(0).standard_normal((2, 3, 16, 16)).astype(np.float32)
    expected = quantize_static(nets.resnet_block_net(), None, ArrayReader("input", data), preset="cpu", quiet=True)
    monkeypatch.setattr(rq_common.io, "PROTOBUF_LIMIT", 1000)
    large = quantize_static(nets.resnet_block_net(), None, ArrayReader("input", data), preset="cpu", quiet=True)
    assert large.violations == []
    assert large.model.SerializeToString(deterministic=True) == expected.model.SerializeToString(deterministic=True)


def test_a_damaged_npz_member_names_the_file_and_the_fix(tmp_path):
    """A zip whose directory is intact but whose compressed array is not (a copy cut short in the
    middle): one CalibrationReaderError, not zlib's or zipfile's own exception."""
    np.savez_compressed(tmp_path / "d.npz", x=np.random.default_rng(0).standard_normal((64, 64)).astype(np.float32))
    raw = bytearray((tmp_path / "d.npz").read_bytes())
    raw[200:1200] = bytes(1000)  # inside the member's data; the central directory at the end survives
    (tmp_path / "d.npz").write_bytes(bytes(raw))
    with pytest.raises(CalibrationReaderError, match=r"d.npz: a damaged .npz \(\w+: .*\); save it with np.savez") as info:
        NpzReader(tmp_path / "d.npz", 1, ["x"])
    assert type(info.value) is CalibrationReaderError
