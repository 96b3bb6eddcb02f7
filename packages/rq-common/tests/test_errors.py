"""rq's error contract for command lines (rq_common.errors.run_command): one line, never a traceback."""

import pytest

from rq_common.errors import CalibrationDataError, FormatError, NotCalibratedError, RqError, SpecError, run_command


@pytest.mark.parametrize(
    "error,code",
    [
        (SpecError("preset", "unknown preset 'x'; known: cpu"), 2),
        (CalibrationDataError("batch 3 holds NaN; clean the data"), 2),
        (FileNotFoundError(2, "No such file or directory", "calib.npz"), 2),
        (PermissionError(13, "Permission denied", "out/model.onnx"), 2),
    ],
)
def test_errors_are_one_line_with_the_message(capsys, error, code):
    def command():
        raise error

    assert run_command("rq-x", command) == code
    err = capsys.readouterr().err
    assert err == f"rq-x: error: {error}\n"


def test_ctrl_c_exits_130_and_says_nothing_was_written(capsys):
    def command():
        raise KeyboardInterrupt

    assert run_command("rq-x", command) == 130
    assert capsys.readouterr().err == "rq-x: interrupted; nothing was written\n"


def test_a_bug_is_not_hidden():
    def command():
        raise ZeroDivisionError("a bug in rq: the traceback must reach the report")

    with pytest.raises(ZeroDivisionError):
        run_command("rq-x", command)


def test_every_user_error_is_an_rq_error():
    for kind in (SpecError, CalibrationDataError, FormatError, NotCalibratedError):
        assert issubclass(kind, RqError)
    assert issubclass(NotCalibratedError, RuntimeError) and issubclass(SpecError, ValueError)
