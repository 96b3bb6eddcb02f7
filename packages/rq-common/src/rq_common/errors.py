"""Errors that rq raises on bad input: each names the problem and the fix."""

import sys
from collections.abc import Callable


class RqError(Exception):
    """Base class of every error rq raises on purpose."""


class SpecError(RqError, ValueError):
    """An impossible quantization spec or preset override; names the offending field."""

    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(f"{field}: {message}")


class CalibrationDataError(RqError, ValueError):
    """Calibration data that cannot give a range: empty, NaN, or infinite values."""


class FormatError(RqError, ValueError):
    """An ONNX model that cannot be brought into the rq int8 format."""


class OutputPathError(RqError, ValueError):
    """An output path rq cannot write to (over an input, a folder, a read-only place), found before
    any work is done."""


class NotCalibratedError(RqError, RuntimeError):
    """A quantized model was exported (or trained, or observed outside calibration) before
    calibration gave it scales; the message names the call that gives them."""


def run_command(program: str, command: Callable[[], int]) -> int:
    """A CLI command under rq's error contract: an RqError or OSError (a missing file, a full disk)
    or Ctrl-C is one line on stderr naming the problem, and a non-zero exit; never a traceback."""
    try:
        return command()
    except (RqError, OSError) as error:
        if isinstance(error, BrokenPipeError):  # output piped into `head`: stop quietly
            sys.stderr.close()
            return 0
        print(f"{program}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{program}: interrupted; nothing was written", file=sys.stderr)
        return 130
