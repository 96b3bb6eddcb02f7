"""Calibration data readers in ONNX Runtime's protocol (get_next() -> dict or None, plus rewind()).

- ArrayReader: arrays already in memory, {input name: samples stacked on axis 0}.
- FeedListReader: batches already in memory, one {input name: array} dict each.
- NpzReader: one .npz whose keys are the model's input names, samples stacked on axis 0.
- NpyFolderReader: a folder of .npy files, one sample each (single-input models), or one
  sub-folder per input name holding the same number of files.
- ImageFolderReader: a folder of images: resize the short side, center crop, scale to [0, 1],
  normalize by mean/std, NCHW or NHWC as the model's input says.
- RandomDataReader: only when asked for; the report's first line says so.
"""

from __future__ import annotations

import zipfile
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx

from rq_onnx.calibrate import batches
from rq_onnx.errors import CalibrationReaderError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".webp")


def model_inputs(model: onnx.ModelProto) -> list[tuple[str, list[int | str | None]]]:
    """(name, shape) of each real input (initializers listed as inputs are not inputs)."""
    initializers = {t.name for t in model.graph.initializer}
    out = []
    for value in model.graph.input:
        if value.name in initializers:
            continue
        dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in value.type.tensor_type.shape.dim]
        out.append((value.name, dims))
    return out


class ArrayReader:
    """Serves {input name: array[N, ...]} in batches of ``batch_size`` along axis 0; rewindable.
    The base of every reader here, and the reader for data already in memory."""

    is_random = False

    def __init__(self, arrays: dict[str, np.ndarray], batch_size: int):
        if batch_size < 1:
            raise CalibrationReaderError(f"batch size must be at least 1, got {batch_size}")
        counts = {name: len(a) for name, a in arrays.items()}
        if len(set(counts.values())) > 1:
            raise CalibrationReaderError(f"inputs hold different sample counts: {counts}")
        self.arrays = arrays
        self.batch_size = batch_size
        self.samples = next(iter(counts.values()), 0)
        if self.samples == 0:
            raise CalibrationReaderError("the calibration data holds no samples")
        self.position = 0

    def __len__(self) -> int:
        return -(-self.samples // self.batch_size)

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.position >= self.samples:
            return None
        start, self.position = self.position, self.position + self.batch_size
        return {name: a[start : self.position] for name, a in self.arrays.items()}

    def rewind(self) -> None:
        self.position = 0


class FeedListReader:
    """Serves a list of feeds ({input name: array} each) in order; rewindable."""

    def __init__(self, feeds: Sequence[dict[str, np.ndarray]]):
        self.feeds, self.position = list(feeds), 0

    def __len__(self) -> int:
        return len(self.feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.position >= len(self.feeds):
            return None
        self.position += 1
        return self.feeds[self.position - 1]

    def rewind(self) -> None:
        self.position = 0


def peek(reader, count: int) -> tuple[list[dict[str, np.ndarray]], object]:
    """The reader's first ``count`` batches, and a reader that still gives every batch: the same
    one, rewound, where it can rewind, else one that gives the peeked batches first."""
    peeked = list(batches(reader, count))
    if callable(getattr(reader, "rewind", None)):
        reader.rewind()
        return peeked, reader
    return peeked, _Replaying(peeked, reader)


class _Replaying:
    """``peeked``, then the rest of ``reader`` (which cannot rewind)."""

    def __init__(self, peeked: list[dict[str, np.ndarray]], reader):
        self.peeked, self.reader = list(peeked), reader

    def get_next(self) -> dict[str, np.ndarray] | None:
        return self.peeked.pop(0) if self.peeked else self.reader.get_next()


class NpzReader(ArrayReader):
    def __init__(self, path: str | Path, batch_size: int = 1, input_names: Sequence[str] | None = None):
        path = Path(path)
        fix = "save it with np.savez(path, **{input name: samples})"
        if not zipfile.is_zipfile(path):  # np.load would try it as a pickle and suggest allow_pickle
            raise CalibrationReaderError(f"{path} is not an .npz file (not a zip archive of arrays); {fix}")
        try:
            with np.load(path) as data:
                arrays = {k: data[k] for k in data.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as error:
            raise CalibrationReaderError(
                f"{path}: a damaged .npz ({type(error).__name__}: {_first_line(error)}); {fix}"
            ) from None
        if input_names is not None and set(arrays) != set(input_names):
            raise CalibrationReaderError(
                f"{path} holds arrays {sorted(arrays)}; the model's inputs are {sorted(input_names)}. "
                "Save one array per input, keyed by the input name (np.savez(path, **{name: samples}))"
            )
        super().__init__(arrays, batch_size)


def _first_line(error: BaseException) -> str:
    return str(error).splitlines()[0] if str(error) else ""


def _load_npy(path: Path) -> np.ndarray:
    """One .npy file; a damaged one names the file (np.load's own error suggests allow_pickle)."""
    try:
        return np.load(path)
    except (OSError, ValueError, EOFError) as error:
        raise CalibrationReaderError(
            f"{path} is not a readable .npy file ({_first_line(error)}); save each sample with np.save, or remove the file"
        ) from None


def _stack_files(files: list[Path], add_batch_axis: bool) -> np.ndarray:
    arrays = [_load_npy(f) for f in files]
    return np.stack(arrays) if add_batch_axis else np.concatenate(arrays)


class NpyFolderReader(ArrayReader):
    def __init__(self, folder: str | Path, inputs: list[tuple[str, list]], batch_size: int = 1):
        folder = Path(folder)
        arrays = {}
        if len(inputs) == 1:
            sources = {inputs[0][0]: folder}
        else:
            sources = {name: folder / name for name, _ in inputs}
            missing = [str(p) for p in sources.values() if not p.is_dir()]
            if missing:
                raise CalibrationReaderError(
                    f"a model with inputs {sorted(sources)} needs one sub-folder of .npy per input; missing {missing}"
                )
        for (name, shape), source in zip(inputs, sources.values(), strict=True):
            files = sorted(source.glob("*.npy"))
            if not files:
                raise CalibrationReaderError(f"{source} holds no .npy files")
            first = _load_npy(files[0])
            arrays[name] = _stack_files(files, add_batch_axis=first.ndim == len(shape) - 1)
        super().__init__(arrays, batch_size)


class ImageFolderReader(ArrayReader):
    """Images -> float32 tensors the way torchvision/Keras classifiers are usually fed."""

    def __init__(
        self,
        folder: str | Path,
        input_name: str,
        input_shape: list,
        batch_size: int = 1,
        mean: Sequence[float] = (0.485, 0.456, 0.406),
        std: Sequence[float] = (0.229, 0.224, 0.225),
        crop_fraction: float = 0.875,
        layout: str | None = None,
    ):
        from PIL import Image

        folder = Path(folder)
        files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise CalibrationReaderError(f"{folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
        layout = layout or _layout(input_shape)
        height, width = (input_shape[2], input_shape[3]) if layout == "NCHW" else (input_shape[1], input_shape[2])
        if not all(isinstance(d, int) and d > 0 for d in (height, width)):
            raise CalibrationReaderError(
                f"input '{input_name}' has no fixed height and width ({input_shape}); give the model a static image size"
            )
        mean_arr, std_arr = np.asarray(mean, np.float32), np.asarray(std, np.float32)
        images = []
        for path in files:
            try:
                with Image.open(path) as image:
                    image = image.convert("RGB")
                    short = min(height, width) / crop_fraction
                    scale = short / min(image.size)
                    image = image.resize(
                        (max(width, round(image.width * scale)), max(height, round(image.height * scale))), Image.BILINEAR
                    )
                    left, top = (image.width - width) // 2, (image.height - height) // 2
                    pixels = np.asarray(image.crop((left, top, left + width, top + height)), np.float32) / 255.0
            except (OSError, ValueError, SyntaxError) as error:  # PIL's errors for unreadable or truncated files
                reason = _first_line(error).replace(f" '{path}'", "")  # PIL's text repeats the path
                raise CalibrationReaderError(
                    f"{path} is not a readable image ({reason}); replace it or remove it from the folder"
                ) from None
            pixels = (pixels - mean_arr) / std_arr
            images.append(pixels.transpose(2, 0, 1) if layout == "NCHW" else pixels)
        super().__init__({input_name: np.stack(images).astype(np.float32)}, batch_size)


def _layout(shape: list) -> str:
    if len(shape) != 4:
        raise CalibrationReaderError(f"an image input needs rank 4 (NCHW or NHWC), the model's input has shape {shape}")
    if shape[1] == 3:
        return "NCHW"
    if shape[3] == 3:
        return "NHWC"
    raise CalibrationReaderError(f"cannot tell NCHW from NHWC for input shape {shape}; pass layout='NCHW' or 'NHWC'")


class RandomDataReader(ArrayReader):
    """Standard-normal data in the model's input shapes (dynamic dims become 1). Never a default."""

    is_random = True

    def __init__(self, inputs: list[tuple[str, list]], num_samples: int = 16, batch_size: int = 1, seed: int = 0):
        rng = np.random.default_rng(seed)
        arrays = {}
        for name, shape in inputs:
            dims = [d if isinstance(d, int) and d > 0 else 1 for d in shape[1:]]
            arrays[name] = rng.standard_normal([num_samples, *dims]).astype(np.float32)
        super().__init__(arrays, batch_size)


def open_calibration_data(path: str | Path, model: onnx.ModelProto, batch_size: int = 1) -> ArrayReader:
    """The reader for ``path``: an .npz file, a folder of .npy files, or a folder of images."""
    path = Path(path)
    if not path.exists():
        raise CalibrationReaderError(
            f"the calibration data {path} does not exist; give an existing .npz file, folder of .npy files or folder of images"
        )
    inputs = model_inputs(model)
    if path.is_file() and path.suffix == ".npz":
        return NpzReader(path, batch_size, [name for name, _ in inputs])
    if path.is_dir():
        if any(path.rglob("*.npy")):
            return NpyFolderReader(path, inputs, batch_size)
        if any(p.suffix.lower() in IMAGE_SUFFIXES for p in path.rglob("*")):
            if len(inputs) != 1:
                raise CalibrationReaderError(
                    "an image folder feeds a single-input model; this model has inputs " + ", ".join(n for n, _ in inputs)
                )
            return ImageFolderReader(path, inputs[0][0], inputs[0][1], batch_size)
        raise CalibrationReaderError(f"{path} holds neither .npy files nor images")
    raise CalibrationReaderError(f"{path}: calibration data must be an .npz file, a folder of .npy files or a folder of images")
