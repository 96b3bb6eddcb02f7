"""khmer-ocr-ocm 0.1.0: the V21 CRNN (7 x Conv-BN-ReLU, 2-layer BiLSTM, CTC over 983 characters + blank)
reading printed Khmer text lines.

Lines are made of common Khmer words, rendered black on white with the wheel's modern Khmer fonts
the way its ``dataset.render_line`` does (Pillow with raqm shapes the clusters), so every sample has its
truth. The wheel's inscription fonts (Angkor0..5, ANG-TRAN, PANGKOR) are left out: they are legacy
8-bit fonts with no glyph in the Unicode Khmer block, so Unicode text drawn with them is not Khmer.
"""

from __future__ import annotations

import json
import unicodedata
from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from zoo.core import Framework, Samples, Split, ZooModel, import_from, rng, wheel_dir
from zoo.metrics import character_error_rate, ctc_greedy_decode, exact_match

WHEEL = "khmer-ocr-ocm==0.1.0"
HEIGHT, WIDTH = 48, 512  # the V21 input: 1 x 48 x 512 gray in [-1, 1]
BLANK = 0  # CTC blank class; characters are 1..983 (vocab.json's char2idx)
FONT_SIZE, PADDING = 32, 12  # dataset.render_line's defaults

# Common words: nouns, verbs, function words, numbers, place names; many with subscript consonants
# (coeng), dependent vowels and signs, so a line exercises the script's stacked clusters.
WORDS = """
កម្ពុជា ភ្នំពេញ អរគុណ ខ្ញុំ យើង គាត់ ទឹក បាយ ផ្ទះ សាលា សៀវភៅ ភាសា ខ្មែរ ប្រទេស រាជធានី ព្រះរាជាណាចក្រ ជាតិ
សាសនា ព្រះមហាក្សត្រ ថ្ងៃ ខែ ឆ្នាំ ម៉ោង ពេល ល្អ ធំ តូច ច្រើន តិច ស្រឡាញ់ ម្តាយ ឪពុក កូន បងប្អូន គ្រួសារ មិត្ត
គ្រូ សិស្ស ការងារ ទីផ្សារ ផ្លូវ ឡាន ទន្លេ សមុទ្រ ព្រៃ ភូមិ ខេត្ត ក្រុង អង្គរវត្ត ប្រាសាទ វប្បធម៌ ប្រវត្តិសាស្ត្រ
សេដ្ឋកិច្ច នយោបាយ រដ្ឋាភិបាល សុខភាព អប់រំ បច្ចេកវិទ្យា កសិកម្ម ពាណិជ្ជកម្ម ប្រជាជន អ្នក និង ដែល នៅ ក្នុង ពី ទៅ មក
មាន ជា បាន នឹង ត្រូវ អាច ចង់ ធ្វើ និយាយ សរសេរ អាន រៀន ដឹង ឃើញ ស្តាប់ ញ៉ាំ ដេក ដើរ រត់ លេង ទិញ លក់ ថ្មី ចាស់
ស្អាត ក្តៅ ត្រជាក់ ពណ៌ ក្រហម ខៀវ បៃតង លឿង ខ្មៅ មួយ ពីរ បី បួន ប្រាំ ដប់ រយ ពាន់ លាន សប្តាហ៍ ព្រឹក ល្ងាច យប់
ថ្ងៃនេះ ស្អែក ម្សិលមិញ សប្បាយ ចិត្ត ពិភពលោក មនុស្ស សត្វ ឆ្កែ ឆ្មា មាន់ ត្រី ដំរី ផ្កា ឈើ ដី មេឃ ភ្លៀង ខ្យល់
ព្រះអាទិត្យ ព្រះច័ន្ទ ផ្កាយ លុយ ប្រាក់ តម្លៃ ទូរស័ព្ទ កុំព្យូទ័រ សារព័ត៌មាន ព័ត៌មាន ច្បាប់ សិទ្ធិ សន្តិភាព អភិវឌ្ឍន៍
សហគមន៍ អង្គការ សាកលវិទ្យាល័យ មន្ទីរពេទ្យ វេជ្ជបណ្ឌិត ថ្នាំ អាហារ បន្លែ ផ្លែឈើ ស្រូវ ការិយាល័យ ក្រសួង លោក
លោកស្រី កញ្ញា នាយករដ្ឋមន្ត្រី ព្រះពុទ្ធ វត្ត ព្រះសង្ឃ បុណ្យ ចូលឆ្នាំ ទេសចរណ៍ ដំណើរ ជីវិត ស្នេហា គំនិត ចំណេះដឹង
ឯកសារ កិច្ចការ គម្រោង បញ្ហា ដំណោះស្រាយ សំខាន់ ពិត ណាស់ ទេ បាទ ចាស អ្វី ហេតុអ្វី ប៉ុន្មាន កន្លែង ខាងជើង ខាងត្បូង
ខាងកើត ខាងលិច
""".split()
KHMER_DIGITS = "០១២៣៤៥៦៧៨៩"


def _assets() -> Path:
    return wheel_dir(WHEEL) / "khmer_ocr_ocm" / "assets"


@cache
def _fonts() -> tuple[ImageFont.FreeTypeFont, ...]:
    """The fonts ``generate_dataset`` uses by default (``assets/fonts/khmer``), at its size."""
    paths = sorted(p for p in (_assets() / "fonts" / "khmer").iterdir() if p.suffix.lower() in {".ttf", ".otf"})
    return tuple(ImageFont.truetype(str(p), FONT_SIZE) for p in paths)


@cache
def _vocab() -> tuple[dict[str, int], dict[int, str]]:
    """vocab.json, the same mapping the checkpoint holds (``char2idx`` / ``idx2char``)."""
    raw = json.loads((_assets() / "vocab.json").read_text(encoding="utf-8"))
    return raw["char2idx"], {int(k): v for k, v in raw["idx2char"].items()}


def _render(text: str, font: ImageFont.FreeTypeFont) -> Image.Image:
    """``dataset.render_line`` before its resize: the text's box plus 12 px padding, drawn at (12, 12)."""
    left, top, right, bottom = ImageDraw.Draw(Image.new("L", (1, 1), 255)).textbbox((0, 0), text, font=font)
    image = Image.new("L", (max(right - left + 2 * PADDING, 1), max(bottom - top + 2 * PADDING, 1)), 255)
    ImageDraw.Draw(image).text((PADDING, PADDING), text, font=font, fill=0)
    return image


def _fit(image: Image.Image) -> Image.Image:
    """Height 48 keeping the aspect (bilinear, as the wheel resizes), white padding to width 512;
    a line wider than that is squeezed to 512, as the wheel's own resize does to every line."""
    width = min(WIDTH, max(1, round(image.width * HEIGHT / image.height)))
    canvas = Image.new("L", (WIDTH, HEIGHT), 255)
    canvas.paste(image.resize((width, HEIGHT), Image.BILINEAR), (0, 0))
    return canvas


def _pieces(generator: np.random.Generator) -> list[str]:
    """2 to 10 words: most run together as Khmer writes them, some after a space (phrase breaks);
    now and then a number in Khmer digits."""
    pieces = []
    for i in range(int(generator.integers(2, 11))):
        word = WORDS[int(generator.integers(len(WORDS)))]
        if generator.random() < 0.08:
            word = "".join(KHMER_DIGITS[int(d)] for d in generator.integers(0, 10, int(generator.integers(1, 5))))
        pieces.append((" " if i and generator.random() < 0.4 else "") + word)
    return pieces


def _sample(generator: np.random.Generator) -> tuple[np.ndarray, str]:
    """One line in one font; words dropped from its end until it fits 512 px at height 48 unsqueezed."""
    fonts = _fonts()
    font = fonts[int(generator.integers(len(fonts)))]
    pieces = _pieces(generator)
    while True:
        text = unicodedata.normalize("NFC", "".join(pieces))
        image = _render(text, font)
        if len(pieces) == 1 or image.width * HEIGHT <= WIDTH * image.height:
            break
        pieces.pop()
    gray = np.asarray(_fit(image), np.float32) / 255.0
    return ((gray - 0.5) / 0.5)[None, None], text


def _fold(text: str) -> str:
    """Subscript TA and subscript DA are one glyph in these fonts (and Khmer writers use either):
    the metric counts them as one character."""
    return text.replace("\u17d2\u178a", "\u17d2\u178f")


class KhmerOcr(ZooModel):
    """Headline: corpus CER against the rendered text (lower is better); exact match of the line; and
    agreement with float (the decoded strings equal). Greedy CTC decoding is in ``score`` on the
    (127 steps, 1, 984) logits, as the wheel's inference.py decodes them."""

    name = "khmer_ocr"
    float_floor = ("exact_match", 0.5)  # what the float model reaches on this data at least
    framework = Framework.TORCH
    wheels = (WHEEL,)
    task = "khmer-ocr-ocm V21 CRNN: printed Khmer text-line reader (7 conv + 2-layer BiLSTM, CTC over 984), 1x48x512"
    higher_is_better = False
    calibration_size = 48  # about 0.15 s a sample on 2 cores (6 GFLOP of conv, 127 LSTM steps): kept small
    evaluation_size = 80
    blank = BLANK

    def load(self):
        import torch

        model_module = import_from(WHEEL, "khmer_ocr_ocm.model")
        checkpoint = torch.load(_assets() / "model.pth", map_location="cpu", weights_only=True)
        if checkpoint["char2idx"] != _vocab()[0]:
            raise ValueError("the checkpoint's char2idx differs from vocab.json")
        model = model_module.CRNN(img_height=HEIGHT, num_classes=int(checkpoint["num_classes"]))
        model.load_state_dict(checkpoint["model_state_dict"])
        return model.eval()

    def samples(self, split: Split, n: int) -> Samples:
        pairs = [_sample(rng(split, f"{self.name}/{i}")) for i in range(n)]
        return Samples([(image,) for image, _ in pairs], [text for _, text in pairs])

    def encode(self, text: str) -> list[int]:
        """Class indices of ``text`` as CTC targets (blank is ``self.blank`` = 0, never in a target);
        an unknown character raises KeyError."""
        char2idx = _vocab()[0]
        return [char2idx[c] for c in text]

    def decode(self, logits: np.ndarray) -> str:
        """Greedy CTC of one sample's (steps, 1, classes) logits into text."""
        idx2char = _vocab()[1]
        return "".join(idx2char.get(i, "") for i in ctc_greedy_decode(np.asarray(logits).reshape(-1, logits.shape[-1]), BLANK))

    def score(self, outputs, reference, samples: Samples) -> dict[str, float]:
        read = [_fold(self.decode(o[0])) for o in outputs]
        truth = [_fold(t) for t in samples.truth]
        return {
            "cer": character_error_rate(read, truth),
            "exact_match": exact_match(read, truth),
            "agreement": exact_match(read, [_fold(self.decode(r[0])) for r in reference]),
        }


MODELS = [KhmerOcr()]
