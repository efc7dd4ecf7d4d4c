"""Images with known boxes for the detector example: circles, squares and triangles on textured ground.

Rendered here with Pillow (no download), seeded, so every machine gets the same pictures and the
same ground truth. Each image holds 1-4 objects of 20-80 px that overlap little, on a background
of a colour gradient plus noise, so the detector has to look at shape rather than colour alone.
Labels are [N, MAX_OBJECTS, 5] rows of [class, x0, y0, x1, y1] in pixels, padded with all-NaN rows
(npz files load without pickle, so ragged lists cannot be stored there).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw

SIZE = 256
CLASSES = ("circle", "square", "triangle")
MAX_OBJECTS = 4
CALIBRATION_SEED, EVALUATION_SEED = 1, 2  # training uses seeds from 100 on (examples/train_detector.py)


def _iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def _background(rng: np.random.Generator) -> np.ndarray:
    base = rng.uniform(40, 215, 3)
    tilt = rng.uniform(-60, 60, (2, 3))
    yy, xx = np.mgrid[0:SIZE, 0:SIZE] / SIZE - 0.5
    img = base + xx[..., None] * tilt[0] + yy[..., None] * tilt[1] + rng.normal(0, 12, (SIZE, SIZE, 3))
    return np.clip(img, 0, 255)


def _colour(rng: np.random.Generator, ground: np.ndarray) -> tuple[int, int, int]:
    """A fill that stands out from the ground under it (at least 90 apart in RGB distance)."""
    while True:
        c = rng.integers(0, 256, 3)
        if np.linalg.norm(c - ground) > 90:
            return int(c[0]), int(c[1]), int(c[2])


def render_one(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One image (H, W, 3) uint8 and its boxes (k, 5)."""
    ground = _background(rng)
    img = Image.fromarray(ground.astype(np.uint8))
    draw = ImageDraw.Draw(img)
    boxes: list[tuple[float, ...]] = []
    rows = []
    for _ in range(int(rng.integers(1, MAX_OBJECTS + 1))):
        for _attempt in range(20):
            size = float(rng.uniform(20, 80))
            x0, y0 = rng.uniform(2, SIZE - size - 2, 2)
            box = (float(x0), float(y0), float(x0 + size), float(y0 + size))
            if all(_iou(box, b) < 0.1 for b in boxes):
                break
        else:
            continue
        cls = int(rng.integers(0, len(CLASSES)))
        cx, cy = int((box[0] + box[2]) / 2), int((box[1] + box[3]) / 2)
        fill = _colour(rng, ground[min(cy, SIZE - 1), min(cx, SIZE - 1)])
        if cls == 0:
            draw.ellipse(box, fill=fill)
        elif cls == 1:
            draw.rectangle(box, fill=fill)
        else:
            draw.polygon([(box[0], box[3]), (box[2], box[3]), ((box[0] + box[2]) / 2, box[1])], fill=fill)
        boxes.append(box)
        rows.append([cls, *box])
    return np.asarray(img), np.asarray(rows, np.float32).reshape(-1, 5)


def render(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n images as float32 [n, 3, SIZE, SIZE] in 0..1 (the app divides by 255) and NaN-padded labels."""
    rng = np.random.default_rng(seed)
    images = np.empty((n, 3, SIZE, SIZE), np.float32)
    labels = np.full((n, MAX_OBJECTS, 5), np.nan, np.float32)
    for i in range(n):
        img, rows = render_one(rng)
        images[i] = img.transpose(2, 0, 1) / 255.0
        labels[i, : len(rows)] = rows
    return images, labels


@lru_cache(maxsize=2)
def _split(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    return render(n, seed)


def calibration() -> dict[str, np.ndarray]:
    """Images never used for evaluation (their own seed); labels are not needed to calibrate."""
    images, _ = _split(256, CALIBRATION_SEED)
    return {"images": images}


def evaluation() -> dict[str, np.ndarray]:
    """The held-out set with ground-truth boxes, judged with mAP@0.5 (metric: {task: detection})."""
    images, labels = _split(200, EVALUATION_SEED)
    return {"images": images, "labels": labels}
