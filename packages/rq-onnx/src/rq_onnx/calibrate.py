"""Calibration: run the float model in ONNX Runtime one batch at a time, with the tensors to
quantize as extra outputs, and feed each to a streaming rq_common Calibrator. Nothing is kept
between batches except the observers' fixed-size state (and, for the report, at most
``keep_batches`` input batches when the reader cannot rewind)."""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper
from tqdm import tqdm

from rq_common import Calibrator, NonFinitePolicy
from rq_common.calibration import ScaleGroups
from rq_common.errors import RqError
from rq_common.io import is_over_protobuf_limit, save_with_external_data
from rq_common.qmath import QParams
from rq_common.qmath.adaround import InputMoments, MomentAccumulator
from rq_common.spec import Preset
from rq_onnx.errors import CalibrationReaderError


class CalibrationDataReader(Protocol):
    """ONNX Runtime's protocol: get_next() returns {input name: array} or None at the end."""

    def get_next(self) -> dict[str, np.ndarray] | None: ...


_ORT_TYPES = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(float16)": np.float16,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(uint8)": np.uint8,
    "tensor(int8)": np.int8,
    "tensor(bool)": np.bool_,
}


def make_session(model: onnx.ModelProto, threads: int = 0, as_written: bool = False) -> ort.InferenceSession:
    """An ORT session on the CPU; models over protobuf's 2 GB limit go through external data.
    ``as_written``: no graph optimizations (each op computed as the graph says, quick to build)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    if as_written:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        if not is_over_protobuf_limit(model):
            return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        with tempfile.TemporaryDirectory() as folder:
            path = save_with_external_data(model, folder)
            return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as error:  # ORT raises its own exception types for unsupported ops
        raise RqError(f"ONNX Runtime cannot run the model: {str(error).splitlines()[0]}") from None


def with_outputs(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    """A copy of ``model`` whose graph outputs also include ``names``."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    existing = {o.name for o in out.graph.output} | {i.name for i in out.graph.input}
    out.graph.output.extend(helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None) for n in names if n not in existing)
    return out


def _fit_dtype(value: np.ndarray, name: str, want: str, batch_number: int) -> tuple[np.ndarray, str | None]:
    """``value`` in the input's type ``want`` ('tensor(float)'), and a note when it was converted.

    Like ONNX Runtime, rq feeds arrays in the model's types; what converts without changing the
    values rq converts (float64 -> float32, int32 -> int64), with a note. Integers for a float input
    are refused, not cast: raw uint8 pixels are not what a float model was trained on (it needs the
    model's preprocessing), and calibrating on them gives scales for the wrong range."""
    dtype = _ORT_TYPES.get(want)
    if dtype is None or value.dtype == dtype:
        return value, None
    where = f"batch {batch_number}: input '{name}'"
    target = np.dtype(dtype)
    if value.dtype.kind not in "biuf":
        raise CalibrationReaderError(
            f"{where} holds {value.dtype} values, not numbers; the model takes {want}: give numeric arrays of dtype {target.name}"
        )
    if target.kind == "f" and value.dtype.kind != "f":
        raise CalibrationReaderError(
            f"{where} is {value.dtype} data, the model takes {want}; convert it as the model's preprocessing does "
            f"(e.g. x.astype(np.{target.name}) / 255 for pixels), or give a folder of images"
        )
    if target.kind != "f" and value.dtype.kind == "f":
        raise CalibrationReaderError(
            f"{where} is {value.dtype} data, the model takes {want}: give integer arrays of dtype {target.name}"
        )
    cast = value.astype(dtype)
    if target.kind != "f" and not np.array_equal(cast, value):
        raise CalibrationReaderError(f"{where} holds values that {target.name}, the model's type, cannot hold; check the data")
    return cast, f"calibration input '{name}': {value.dtype} data converted to {target.name}, the model's input type"


def check_feed(feed, inputs: Sequence[ort.NodeArg], batch_number: int, notes: list[str] | None = None) -> dict[str, np.ndarray]:
    """The batch with arrays in the model's input types (a note in ``notes`` for each conversion);
    a clear error when it does not fit. ``inputs``: the session's get_inputs()."""
    if not isinstance(feed, dict):
        raise CalibrationReaderError(
            f"batch {batch_number}: get_next() returned {type(feed).__name__}; it must return a dict of input name to array, or None at the end"
        )
    expected = {i.name: i for i in inputs}
    if set(feed) != set(expected):
        raise CalibrationReaderError(
            f"batch {batch_number}: the reader gives inputs {sorted(feed)}, the model's inputs are {sorted(expected)}; "
            "make get_next() return one array per model input, keyed by the input's name"
        )
    out = {}
    for name, value in feed.items():
        want = expected[name]
        value, note = _fit_dtype(np.asarray(value), name, want.type, batch_number)
        if note is not None and notes is not None and note not in notes:
            notes.append(note)
        if len(value.shape) != len(want.shape) or any(isinstance(d, int) and d != v for d, v in zip(want.shape, value.shape)):
            raise CalibrationReaderError(
                f"batch {batch_number}: input '{name}' has shape {list(value.shape)}, the model expects {want.shape}"
            )
        out[name] = value
    return out


def batches(reader: CalibrationDataReader, limit: int | None = None) -> Iterator[dict]:
    count = 0
    while limit is None or count < limit:
        feed = reader.get_next()
        if feed is None:
            return
        count += 1
        yield feed


def _length(reader) -> int | None:
    """Batches the reader will give, when it knows (ORT's base class raises NotImplementedError)."""
    try:
        return len(reader)
    except (TypeError, NotImplementedError):
        return None


@dataclass
class CalibrationResult:
    qparams: dict[str, QParams]
    num_batches: int
    kept_batches: list[dict[str, np.ndarray]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # the inputs' dtype conversions
    inputs: list[ort.NodeArg] = field(default_factory=list)
    channel_means: dict[str, np.ndarray] = field(default_factory=dict)  # tensor -> mean per channel (float64)
    input_moments: dict[str, InputMoments] = field(default_factory=dict)  # layer -> its input patches' moments

    def checked(self, feeds: Iterable[dict]) -> Iterator[dict[str, np.ndarray]]:
        """``feeds`` (read again from a rewound reader) converted as calibration converted them."""
        for number, feed in enumerate(feeds, start=1):
            yield check_feed(feed, self.inputs, number)


def calibrate(
    model: onnx.ModelProto,
    tensors: list[str],
    groups: ScaleGroups,
    preset: Preset,
    reader: CalibrationDataReader,
    *,
    max_batches: int | None = None,
    keep_batches: int = 0,
    quiet: bool = False,
    nonfinite: NonFinitePolicy = NonFinitePolicy.RAISE,
    channel_axes: dict[str, int] | None = None,
    patch_inputs: dict[str, tuple[str, Callable[[np.ndarray], np.ndarray]]] | None = None,
) -> CalibrationResult:
    """QParams for every tensor in ``tensors``, one per scale group (the group's statistics merged);
    for each tensor in ``channel_axes`` (a subset of ``tensors``) its mean per channel of that axis;
    for each layer in ``patch_inputs`` (layer -> its input tensor, and how that input becomes the
    patches its weight multiplies, rq_onnx.patches) the patches' moments."""
    inputs = {i.name for i in model.graph.input}
    extra = [t for t in tensors if t not in inputs]
    session = make_session(with_outputs(model, extra))
    output_names = [o.name for o in session.get_outputs()]
    calibrators = {t: Calibrator(preset.activation, preset.activation_method, name=t, nonfinite=nonfinite) for t in tensors}
    kept: list[dict[str, np.ndarray]] = []
    notes: list[str] = []
    means = _ChannelMeans()
    moments = {layer: MomentAccumulator() for layer in patch_inputs or {}}
    total = _length(reader)
    count = 0
    for feed in tqdm(batches(reader, max_batches), desc="calibrating", unit="batch", total=total, disable=quiet, file=sys.stderr):
        count += 1
        feed = check_feed(feed, session.get_inputs(), count, notes)
        values = dict(zip(output_names, session.run(None, feed), strict=True))
        values.update(feed)
        for name, calibrator in calibrators.items():
            calibrator.update(values[name])
        for name, axis in (channel_axes or {}).items():
            means.add(name, values[name], axis)
        for layer, (name, to_patches) in (patch_inputs or {}).items():
            moments[layer].add(to_patches(values[name]))
        if len(kept) < keep_batches:
            kept.append(feed)
    if count == 0:
        raise CalibrationReaderError("the calibration data reader yielded no batches; give it at least one sample")
    qparams: dict[str, QParams] = {}
    for members in groups.members().values():
        present = [m for m in members if m in calibrators]
        if not present:
            continue
        merged = calibrators[present[0]]
        for other in present[1:]:
            merged.merge(calibrators[other])
        chosen = merged.qparams()
        for m in present:
            qparams[m] = chosen
    input_moments = {layer: accumulator.result() for layer, accumulator in moments.items()}
    return CalibrationResult(qparams, count, kept, notes, session.get_inputs(), means.result(), input_moments)


class _ChannelMeans:
    """Running per-channel sums over every batch, in float64: the mean of all values seen."""

    def __init__(self) -> None:
        self.sums: dict[str, np.ndarray] = {}
        self.counts: dict[str, int] = {}

    def add(self, name: str, value: np.ndarray, axis: int) -> None:
        value = np.asarray(value, np.float64)
        channels = np.moveaxis(value, axis, 0).reshape(value.shape[axis], -1)
        self.sums[name] = self.sums.get(name, 0) + channels.sum(axis=1)
        self.counts[name] = self.counts.get(name, 0) + channels.shape[1]

    def result(self) -> dict[str, np.ndarray]:
        return {name: total / self.counts[name] for name, total in self.sums.items()}
