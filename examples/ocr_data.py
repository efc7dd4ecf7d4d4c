"""Text images for the PP-OCR examples, rendered here (Pillow) so the data need no download.

Words come from the English of Python's own docs (`pydoc_data.topics`), topic-disjoint between
calibration and evaluation; pages, lines and crops are seeded, so the same arrays come back on
every machine with the same Pillow. Each array has the preprocessing rapidocr-onnxruntime applies
before calling these very files (its config.yaml and ch_ppocr_*/ code):
- images in BGR order (rapidocr reads them with OpenCV), HWC -> CHW, float32 (x / 255 - 0.5) / 0.5;
- det: the page resized to the recipe's shape (rapidocr: a multiple of 32, here fixed);
- rec: the line resized to height 48 keeping its aspect ratio, at most 320 wide, zero-padded to 320;
- cls: the same at 48 x 192; half the lines turned 180 degrees (label 1, rapidocr's '180').
"""

from __future__ import annotations

import math
import re
from functools import lru_cache

import numpy as np

DET_SIZE = 640  # examples/ocr-det.yaml: inputs[0].shape [1, 3, 640, 640]
REC_SHAPE = (48, 320)
CLS_SHAPE = (48, 192)
SAMPLES = {"calibration": 32, "evaluation": 32}


@lru_cache(maxsize=2)
def words(split: str) -> tuple[str, ...]:
    """English words of the docs' topics: even-numbered topics for calibration, odd for evaluation."""
    from pydoc_data.topics import topics

    names = sorted(topics)[split == "evaluation" :: 2]
    found: list[str] = []
    for name in names:
        found += re.findall(r"[A-Za-z][a-z]{1,11}", topics[name])
    return tuple(found)


def _font(size: int):
    from PIL import ImageFont

    return ImageFont.load_default(size=size)  # Pillow's bundled FreeType font: the same on every machine


def _light(rng: np.random.Generator) -> tuple[int, int, int]:
    return tuple(int(v) for v in rng.integers(200, 256, size=3))


def _dark(rng: np.random.Generator) -> tuple[int, int, int]:
    return tuple(int(v) for v in rng.integers(0, 90, size=3))


def _phrase(rng: np.random.Generator, pool: tuple[str, ...], n_words: int) -> str:
    start = int(rng.integers(0, len(pool) - n_words))
    return " ".join(pool[start : start + n_words])


def _noisy(img, rng: np.random.Generator, sigma: float):
    """Camera-like sensor noise on a rendered image."""
    from PIL import Image

    arr = np.asarray(img, dtype=np.float32) + rng.normal(0.0, sigma, size=np.asarray(img).shape)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def normalise(rgb: np.ndarray) -> np.ndarray:
    """HWC uint8 RGB -> CHW float32 BGR, (x / 255 - 0.5) / 0.5: rapidocr's det, rec and cls input."""
    bgr = rgb[..., ::-1].astype(np.float32)
    return np.ascontiguousarray(((bgr / 255.0 - 0.5) / 0.5).transpose(2, 0, 1))


MAX_LINES = 14


def page(rng: np.random.Generator, pool: tuple[str, ...], size: int = DET_SIZE):
    """A light page with up to 14 lines of dark text at several sizes, rendered at 2x and downscaled;
    and each line's ink box (x0, y0, x1, y1) in the page's pixels, the text detector's ground truth."""
    from PIL import Image, ImageDraw

    big = size * 2
    img = Image.new("RGB", (big, big), _light(rng))
    draw = ImageDraw.Draw(img)
    y = int(rng.integers(4, big // 8))
    boxes = []
    for _ in range(int(rng.integers(5, MAX_LINES + 1))):
        font_size = int(rng.choice([20, 24, 28, 36, 48]))
        font = _font(font_size)
        text = _phrase(rng, pool, int(rng.integers(1, 7)))
        width = draw.textlength(text, font=font)
        x = int(rng.integers(0, max(1, int(big - width)))) if width < big else 0
        draw.text((x, y), text, fill=_dark(rng), font=font)
        x0, _, x1, _ = draw.textbbox((x, y), text, font=font)
        ascent, descent = font.getmetrics()  # the line box a labeller draws: full ascent to descent
        boxes.append([max(x0, 0) / 2, y / 2, min(x1, big) / 2, min(y + ascent + descent, big) / 2])
        y += int(font_size * rng.uniform(1.2, 2.2))
        if y > big - font_size:
            break
    img = img.resize((size, size), Image.Resampling.BILINEAR)
    return _noisy(img, rng, 3.0), np.asarray(boxes, np.float32)


def line(rng: np.random.Generator, pool: tuple[str, ...], max_words: int = 5):
    """One line of text, cropped with a small margin as a detector's box would give it; and its string."""
    from PIL import Image, ImageDraw

    font = _font(int(rng.integers(28, 44)))
    text = _phrase(rng, pool, int(rng.integers(2, max_words + 1)))
    left, top, right, bottom = font.getbbox(text)
    pad = int(rng.integers(3, 9))
    img = Image.new("RGB", (right - left + 2 * pad, bottom - top + 2 * pad), _light(rng))
    ImageDraw.Draw(img).text((pad - left, pad - top), text, fill=_dark(rng), font=font)
    return _noisy(img, rng, 3.0), text


def resize_pad(img, height: int, width: int) -> np.ndarray:
    """rapidocr's rec/cls resize: height fixed, aspect kept up to `width`, then zero-padded on the right."""
    from PIL import Image

    w = min(width, int(math.ceil(height * img.width / img.height)))
    chw = normalise(np.asarray(img.resize((w, height), Image.Resampling.BILINEAR)))
    out = np.zeros((3, height, width), dtype=np.float32)
    out[:, :, :w] = chw
    return out


def _seed(split: str, kind: str) -> int:
    return {"calibration": 0, "evaluation": 1}[split] * 100 + {"det": 1, "rec": 2, "cls": 3}[kind]


def det(split: str, n: int | None = None, size: int = DET_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """[n, 3, size, size] pages and [n, MAX_LINES, 4] line boxes in pixels (all-NaN rows pad)."""
    rng = np.random.default_rng(_seed(split, "det"))
    pool = words(split)
    images, labels = [], np.full((n or SAMPLES[split], MAX_LINES, 4), np.nan, np.float32)
    for i in range(len(labels)):
        img, boxes = page(rng, pool, size)
        images.append(normalise(np.asarray(img)))
        labels[i, : len(boxes)] = boxes
    return np.stack(images), labels


def rec(split: str, n: int | None = None) -> tuple[np.ndarray, list[str]]:
    """[n, 3, 48, 320] lines and the strings drawn on them (ground truth for the next issue's metric)."""
    rng = np.random.default_rng(_seed(split, "rec"))
    pool = words(split)
    images, texts = [], []
    for _ in range(n or SAMPLES[split]):
        img, text = line(rng, pool)
        images.append(resize_pad(img, *REC_SHAPE))
        texts.append(text)
    return np.stack(images), texts


def cls(split: str, n: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """[n, 3, 48, 192] lines, every other one turned 180 degrees; labels 0 (upright) / 1 (180)."""
    rng = np.random.default_rng(_seed(split, "cls"))
    pool = words(split)
    images, labels = [], []
    for i in range(n or SAMPLES[split]):
        img, _ = line(rng, pool, max_words=3)
        turned = i % 2 == 1
        images.append(resize_pad(img.rotate(180) if turned else img, *CLS_SHAPE))
        labels.append(int(turned))
    return np.stack(images), np.asarray(labels, dtype=np.int64)


# The recipes' data callables (no arguments): arrays named after the model input `x`.


def det_calibration() -> dict[str, np.ndarray]:
    return {"x": det("calibration")[0]}


def det_evaluation() -> dict[str, np.ndarray]:
    x, boxes = det("evaluation")
    return {"x": x, "labels": boxes}


def rec_calibration() -> dict[str, np.ndarray]:
    return {"x": rec("calibration")[0]}


def rec_evaluation() -> dict[str, np.ndarray]:
    """The rendered lines and the strings drawn on them (the ground truth of `metric: text-recognition`)."""
    images, texts = rec("evaluation")
    return {"x": images, "labels": np.asarray(texts)}


def cls_calibration() -> dict[str, np.ndarray]:
    return dict(zip(("x", "labels"), cls("calibration"), strict=True))


def cls_evaluation() -> dict[str, np.ndarray]:
    return dict(zip(("x", "labels"), cls("evaluation"), strict=True))
