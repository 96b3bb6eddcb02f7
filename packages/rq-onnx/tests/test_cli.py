"""The rq-onnx command line, run in-process through main()."""

import json

import nets
import numpy as np
import onnx
import pytest

from rq_onnx.cli import main


@pytest.fixture
def files(tmp_path):
    onnx.save(nets.resnet_block_net(), tmp_path / "float.onnx")
    np.savez(tmp_path / "calib.npz", input=np.random.default_rng(0).standard_normal((16, 3, 16, 16)).astype(np.float32))
    return tmp_path


def test_quantize_check_compare(files, capsys):
    code = main(
        [
            "quantize",
            str(files / "float.onnx"),
            str(files / "int8.onnx"),
            "--calib-data",
            str(files / "calib.npz"),
            "--preset",
            "cpu",
            "--batch-size",
            "4",
            "--report",
            str(files / "report.json"),
            "--quiet",
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "wrote" in out and "SQNR dB" in out
    report = json.loads((files / "report.json").read_text())
    assert report["tensors"][0]["sqnr_db"] <= report["tensors"][-1]["sqnr_db"]

    assert main(["check", str(files / "int8.onnx"), "--preset", "cpu"]) == 0
    assert "in the rq int8 format" in capsys.readouterr().out
    assert main(["check", str(files / "int8.onnx"), "--preset", "npu_cnn"]) == 1
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines and all(
        line.split(":")[0]
        in (
            "wrong-zero-point",
            "per-channel-not-allowed",
            "not-power-of-two",
            "wrong-dtype",
            "npu-shift-cut",
            "npu-shift-bias",
            "npu-add-positions",
            "npu-shared-scale",
        )
        for line in lines
    )

    assert (
        main(
            [
                "compare",
                str(files / "float.onnx"),
                str(files / "int8.onnx"),
                "--calib-data",
                str(files / "calib.npz"),
                "--batch-size",
                "8",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "top-1 agreement on 'logits'" in out and "output 'logits': SQNR" in out


def test_errors_are_one_line_and_exit_2(files, capsys):
    (files / "junk.onnx").write_bytes(b"\x00junk" * 20)
    assert main(["quantize", str(files / "junk.onnx"), str(files / "o.onnx"), "--calib-data", str(files / "calib.npz")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rq-onnx: error: ") and "is not an ONNX model" in err and "Traceback" not in err
    assert main(["quantize", str(files / "float.onnx"), str(files / "o.onnx")]) == 2
    assert "calibration data is needed" in capsys.readouterr().err
    assert not (files / "o.onnx").exists()


def test_ctrl_c_and_os_errors_are_one_line_and_write_nothing(files, capsys, monkeypatch):
    args = ["quantize", str(files / "float.onnx"), str(files / "o.onnx"), "--calib-data", str(files / "calib.npz"), "--quiet"]
    # the output folder is a file: the OSError comes when the model is saved, after calibration
    blocked = ["quantize", str(files / "float.onnx"), str(files / "calib.npz" / "o.onnx"), *args[3:]]
    assert main(blocked) == 2
    err = capsys.readouterr().err
    assert err.startswith("rq-onnx: error: ") and err.count("\n") == 1 and "Traceback" not in err

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("rq_onnx.api.calibrate", interrupted)
    assert main(args) == 130
    assert capsys.readouterr().err.strip() == "rq-onnx: interrupted; nothing was written"
    assert not (files / "o.onnx").exists()


def test_same_inputs_give_byte_identical_files(files):
    for name in ("a.onnx", "b.onnx"):
        assert (
            main(
                [
                    "quantize",
                    str(files / "float.onnx"),
                    str(files / name),
                    "--calib-data",
                    str(files / "calib.npz"),
                    "--preset",
                    "npu_cnn",
                    "--quiet",
                ]
            )
            == 0
        )
    assert (files / "a.onnx").read_bytes() == (files / "b.onnx").read_bytes()


def test_a_model_that_breaks_the_format_is_written_only_when_asked(files, capsys, monkeypatch):
    """Written means valid: the validator's verdict decides (here made to find one violation)."""
    from rq_common.format import Violation, ViolationKind

    broken = Violation(ViolationKind.MISSING_QDQ, "conv", "x", "input 0 of quantized Conv does not come from a DequantizeLinear")
    monkeypatch.setattr("rq_onnx.api.validate", lambda *args, **kwargs: [broken])
    args = ["quantize", str(files / "float.onnx"), str(files / "o.onnx"), "--calib-data", str(files / "calib.npz"), "--quiet"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "breaks 1 rule(s) of the 'npu_cnn' format, first: missing-qdq" in err and "--allow-violations" in err
    assert not (files / "o.onnx").exists()
    assert main([*args, "--allow-violations"]) == 0
    out = capsys.readouterr().out
    assert "violation: missing-qdq" in out and "written with 1 format violation(s)" in out and (files / "o.onnx").exists()


def test_qdq_placement_on_the_command_line(tmp_path, capsys):
    onnx.save(nets.transformer_encoder_net(), tmp_path / "float.onnx")
    np.savez(tmp_path / "calib.npz", tokens=np.random.default_rng(0).standard_normal((8, 8, 32)).astype(np.float32))
    args = [
        "quantize",
        str(tmp_path / "float.onnx"),
        str(tmp_path / "int8.onnx"),
        "--calib-data",
        str(tmp_path / "calib.npz"),
        "--quiet",
    ]
    assert main([*args, "--preset", "cpu", "--qdq", "integer_kernels"]) == 0
    out = capsys.readouterr().out
    assert "(LayerNormalization): ONNX Runtime has no int8 CPU kernel for it" in out
    assert main(["check", str(tmp_path / "int8.onnx"), "--preset", "cpu"]) == 0
    (tmp_path / "int8.onnx").unlink()
    assert main([*args, "--preset", "npu_transformer", "--qdq", "integer_kernels"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rq-onnx: error: qdq: ") and "keep qdq=every_op" in err and "Traceback" not in err
    assert not (tmp_path / "int8.onnx").exists()
