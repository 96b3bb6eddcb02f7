"""ddddocr 1.6.1's two ONNX models: the captcha reader (``common.onnx``, CNN + bidirectional LSTM, CTC
over 8210 characters) and the click-captcha character detector (``common_det.onnx``, YOLOX-style).

Both run on data rendered here with the captcha package's font (DroidSansMono), so every sample has
its truth: the captcha's text, the boxes of the characters drawn."""

from __future__ import annotations

import contextlib
import runpy
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from zoo.core import Framework, Samples, Split, ZooModel, rng, wheel_dir
from zoo.metrics import box_f1, box_iou, character_error_rate, ctc_greedy_decode, exact_match

WHEEL = "ddddocr==1.6.1"


def _package() -> Path:
    return wheel_dir(WHEEL) / "ddddocr"


@cache
def _font_path() -> str:
    import captcha

    return str(Path(captcha.__file__).parent / "data" / "DroidSansMono.ttf")


# -- the captcha reader --------------------------------------------------------------------------------
# Glyphs DroidSansMono draws alike (0/o/O, 1/l/I/i, 9/g/q, ...) are left out, as captcha makers do:
# no reader can tell them apart, and the metric should measure the model, not the font.
ALPHABET = "2345678abcdefhkmnprstuvwxyzABDEFGHKMNPRTY"
CAPTCHA_SIZE = (240, 60)  # width, height as ImageCaptcha draws it; ddddocr resizes to height 64: 256 x 64


@cache
def _charset() -> list[str]:
    """``common.onnx`` is the wheel's "beta" model; its classes are ``CHARSET_BETA`` (index 0: CTC blank)."""
    return runpy.run_path(str(_package() / "charsets.py"))["CHARSET_BETA"]


class _Secrets:
    """What captcha.image calls of the ``secrets`` module, drawn from one seeded generator, so that
    a captcha is a function of its sample's seed."""

    def __init__(self, generator: np.random.Generator):
        self.generator = generator

    def randbelow(self, n: int) -> int:
        return int(self.generator.integers(n))

    def randbits(self, k: int) -> int:
        return int(self.generator.integers(1 << k))

    def choice(self, sequence):
        return sequence[int(self.generator.integers(len(sequence)))]


@cache
def _captcha_maker() -> Any:
    """Milder distortion than ImageCaptcha's defaults (less rotation, warp and overlap), which make
    captchas that the model, trained on real-world ones, mostly cannot read."""
    from captcha.image import ImageCaptcha

    maker = ImageCaptcha(*CAPTCHA_SIZE, fonts=[_font_path()], font_sizes=(42, 48))
    maker.character_rotate = (-15, 15)
    maker.character_warp_dx = maker.character_warp_dy = (0.05, 0.15)
    maker.word_offset_dx = 0.1
    return maker


@contextlib.contextmanager
def _seeded_captcha(generator: np.random.Generator) -> Iterator[Any]:
    """The captcha maker with its randomness (captcha.image's ``secrets``) taken from ``generator``."""
    import captcha.image

    saved = captcha.image.secrets
    captcha.image.secrets = _Secrets(generator)
    try:
        yield _captcha_maker()
    finally:
        captcha.image.secrets = saved


def _captcha(generator: np.random.Generator) -> tuple[Image.Image, str]:
    text = "".join(generator.choice(list(ALPHABET), size=int(generator.integers(4, 7))))
    background = tuple(int(c) for c in generator.integers(238, 256, 3))
    color = (*(int(c) for c in generator.integers(10, 201, 3)), int(generator.integers(220, 256)))
    with _seeded_captcha(generator) as maker:
        image = maker.create_captcha_image(text, color, background)
        maker.create_noise_dots(image, color, number=20)
        maker.create_noise_curve(image, color)
    return image.filter(ImageFilter.SMOOTH), text


def _ocr_input(image: Image.Image) -> np.ndarray:
    """ddddocr's OCREngine preprocessing: height 64 keeping the aspect (Lanczos), grayscale, / 255."""
    width = int(image.width * 64 / image.height)
    gray = image.resize((width, 64), Image.LANCZOS).convert("L")
    return (np.asarray(gray, np.float32) / 255.0)[None, None]


def _read(logits: np.ndarray) -> str:
    """Greedy CTC over the (steps, 1, classes) logits, as OCREngine decodes them."""
    charset = _charset()
    return "".join(charset[i] for i in ctc_greedy_decode(logits.reshape(-1, logits.shape[-1])))


class _DdddocrModel(ZooModel):
    framework = Framework.ONNX
    wheels = (WHEEL,)

    def export_float(self, model, path: Path) -> Path:
        """The files are opset 12 and 11; written here as the zoo's opset (no numeric change).
        ONNX Runtime's quantizer keeps a model's opset and writes per-channel DequantizeLinear (its
        ``axis`` is opset 13) into it: on the files as shipped its output does not load."""
        import onnx
        from onnx import version_converter

        from zoo.frameworks import OPSET

        onnx.save(version_converter.convert_version(model, OPSET), path)
        return path


class DdddocrOcr(_DdddocrModel):
    """Exact match, CER and agreement with float ignore case: the model reads a letter's case
    unreliably (it was trained mostly on lower case and answers either), and ddddocr users compare
    case-folded."""

    name = "ddddocr_ocr"
    float_floor = ("exact_match", 0.75)  # what the float model reaches on this data at least
    task = "ddddocr common.onnx: captcha text reader (CNN + BiLSTM, CTC over 8210 characters), 1x64x256 gray"
    calibration_size = 100
    evaluation_size = 150

    def load(self):
        import onnx

        model = onnx.load(str(_package() / "common.onnx"))
        # The file declares its output (steps, 1, classes) as (1, seqlen): ONNX Runtime warns on every run.
        shape = model.graph.output[0].type.tensor_type.shape
        del shape.dim[:]
        shape.dim.add().dim_param = "steps"
        shape.dim.add().dim_value = 1
        shape.dim.add().dim_value = len(_charset())
        return model

    def samples(self, split: Split, n: int) -> Samples:
        inputs, truth = [], []
        for i in range(n):
            image, text = _captcha(rng(split, f"{self.name}/{i}"))
            inputs.append((_ocr_input(image),))
            truth.append(text)
        return Samples(inputs, truth)

    def score(self, outputs, reference, samples: Samples) -> dict[str, float]:
        read = [_read(o[0]).lower() for o in outputs]
        truth = [t.lower() for t in samples.truth]
        return {
            "exact_match": exact_match(read, truth),
            "cer": character_error_rate(read, truth),
            "agreement": exact_match(read, [_read(r[0]).lower() for r in reference]),
        }


# -- the click-captcha detector ------------------------------------------------------------------------
DET_INPUT = 416
DET_IMAGE = (320, 160)  # width, height of a rendered click captcha; ddddocr scales it by 1.3 into 416 x 416
DET_RATIO = min(DET_INPUT / DET_IMAGE[0], DET_INPUT / DET_IMAGE[1])
DET_TEXT = "2345678ABCDEFGHKMNPRTXYZabdefhkmnprtwxyz"
BACKGROUNDS = ("astronaut.png", "coffee.png", "chelsea.png", "rocket.jpg", "motorcycle_left.png", "hubble_deep_field.jpg",
               "brick.png", "grass.png", "gravel.png")  # fmt: skip


@cache
def _backgrounds() -> list[Image.Image]:
    import skimage

    folder = Path(skimage.__file__).parent / "data"
    return [Image.open(folder / name).convert("RGB") for name in BACKGROUNDS]


def _glyph(generator: np.random.Generator) -> Image.Image:
    """One character's coverage mask, rotated, cropped to its ink."""
    size = int(generator.integers(32, 49))
    font = ImageFont.truetype(_font_path(), size)
    tile = Image.new("L", (2 * size, 2 * size))
    character = DET_TEXT[int(generator.integers(len(DET_TEXT)))]
    ImageDraw.Draw(tile).text((size // 2, size // 2), character, font=font, fill=255, stroke_width=int(generator.integers(1, 3)))
    tile = tile.rotate(float(generator.uniform(-30, 30)), Image.BILINEAR)
    return tile.crop(tile.getbbox())


def _click_captcha(generator: np.random.Generator) -> tuple[Image.Image, np.ndarray]:
    """3 to 5 characters at free places on a crop of a photo, in colours that stand out from it; the
    truth is their ink boxes."""
    backgrounds = _backgrounds()
    photo = backgrounds[int(generator.integers(len(backgrounds)))]
    width, height = DET_IMAGE
    x0, y0 = int(generator.integers(photo.width - width)), int(generator.integers(photo.height - height))
    image = photo.crop((x0, y0, x0 + width, y0 + height))
    boxes: list[tuple[int, int, int, int]] = []
    for _ in range(int(generator.integers(3, 6))):
        for _attempt in range(20):  # a place that keeps 4 px from the characters already drawn
            glyph = _glyph(generator)
            x, y = int(generator.integers(width - glyph.width)), int(generator.integers(height - glyph.height))
            box = (x, y, x + glyph.width, y + glyph.height)
            if all(box[0] >= b[2] + 4 or box[2] + 4 <= b[0] or box[1] >= b[3] + 4 or box[3] + 4 <= b[1] for b in boxes):
                patch = np.asarray(image.crop(box), np.float32).reshape(-1, 3).mean(0)
                colors = generator.integers(256, size=(8, 3))  # the one of 8 that stands out most, as captchas do
                color = tuple(int(c) for c in colors[np.abs(colors - patch).sum(1).argmax()])
                image.paste(Image.new("RGB", glyph.size, color), (x, y), glyph)
                boxes.append(box)
                break
    return image, np.array(boxes, np.float32).reshape(-1, 4)


def _det_input(image: Image.Image) -> np.ndarray:
    """DetectionEngine.preproc: scaled into 416 x 416 at the top left (bilinear, PIL's for cv2's),
    grey 114 around, BGR as cv2 decodes it, 0..255 floats, NCHW."""
    scaled = image.resize((int(image.width * DET_RATIO), int(image.height * DET_RATIO)), Image.BILINEAR)
    padded = np.full((DET_INPUT, DET_INPUT, 3), 114, np.uint8)
    padded[: scaled.height, : scaled.width] = np.asarray(scaled)
    return np.ascontiguousarray(padded[..., ::-1].transpose(2, 0, 1)[None], dtype=np.float32)


@cache
def _grid() -> tuple[np.ndarray, np.ndarray]:
    """Each output row's cell (x, y) and stride: 52 x 52, 26 x 26, 13 x 13 cells at strides 8, 16, 32."""
    cells, strides = [], []
    for stride in (8, 16, 32):
        n = DET_INPUT // stride
        y, x = np.mgrid[:n, :n]
        cells.append(np.stack([x.ravel(), y.ravel()], 1))
        strides.append(np.full((n * n, 1), stride))
    return np.concatenate(cells).astype(np.float32), np.concatenate(strides).astype(np.float32)


def _nms(boxes: np.ndarray, scores: np.ndarray, threshold: float) -> np.ndarray:
    order, kept = np.argsort(-scores, kind="stable"), []
    while order.size:
        kept.append(order[0])
        order = order[1:][box_iou(boxes[order[0]], boxes[order[1:]])[0] <= threshold]
    return boxes[kept]


def _detect(output: np.ndarray, score_threshold: float = 0.1, nms_threshold: float = 0.45) -> np.ndarray:
    """DetectionEngine.get_bbox's post-processing: grid decode, score = objectness x class (one
    class), NMS, back to image pixels, clipped to the image."""
    rows = output.reshape(-1, 6)
    cells, strides = _grid()
    centre, size = (rows[:, :2] + cells) * strides, np.exp(rows[:, 2:4]) * strides
    scores = rows[:, 4] * rows[:, 5]
    keep = scores > score_threshold
    boxes = np.concatenate([centre - size / 2, centre + size / 2], 1)[keep] / DET_RATIO
    boxes = _nms(boxes, scores[keep], nms_threshold)
    return np.clip(boxes, 0, [*DET_IMAGE, *DET_IMAGE])


class DdddocrDet(_DdddocrModel):
    """The headline is box F1 against the drawn characters at IoU 0.5 rather than recall alone:
    recall would not see the extra boxes on the photo that a worse model adds (float finds ~93% of
    the characters, and ~6% of its boxes are such extras). ``agreement_f1`` matches the candidate's
    boxes to float's."""

    name = "ddddocr_det"
    float_floor = ("f1", 0.85)  # what the float model reaches on this data at least
    task = "ddddocr common_det.onnx: click-captcha character detector (YOLOX-style), 3x416x416 BGR"
    calibration_size = 50
    evaluation_size = 50

    def load(self):
        import onnx

        return onnx.load(str(_package() / "common_det.onnx"))

    def samples(self, split: Split, n: int) -> Samples:
        inputs, truth = [], []
        for i in range(n):
            image, boxes = _click_captcha(rng(split, f"{self.name}/{i}"))
            inputs.append((_det_input(image),))
            truth.append(boxes)
        return Samples(inputs, truth)

    def score(self, outputs, reference, samples: Samples) -> dict[str, float]:
        found = [_detect(o[0]) for o in outputs]
        against_truth = box_f1(found, samples.truth)
        return {
            "f1": against_truth["f1"],
            "recall": against_truth["recall"],
            "precision": against_truth["precision"],
            "agreement_f1": box_f1(found, [_detect(r[0]) for r in reference])["f1"],
        }


MODELS = [DdddocrOcr(), DdddocrDet()]
