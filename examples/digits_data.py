"""Digits data for the example: scikit-learn's bundled 1,797 images, split once, the same for everyone.

The evaluation split (600 images, stratified, seed 0) is never used for training or calibration.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

SIZE = 32
EVAL_SAMPLES = 600


def _interp_matrix(n_out: int, n_in: int) -> np.ndarray:
    """Bilinear interpolation (align_corners=False) as a matrix, so upsampling is plain numpy."""
    m = np.zeros((n_out, n_in), dtype=np.float64)
    scale = n_in / n_out
    for i in range(n_out):
        x = max((i + 0.5) * scale - 0.5, 0.0)
        lo = min(int(np.floor(x)), n_in - 1)
        hi = min(lo + 1, n_in - 1)
        w = x - lo
        m[i, lo] += 1 - w
        m[i, hi] += w
    return m


def upsample(images: np.ndarray) -> np.ndarray:
    """(N, 8, 8) in 0..16 -> (N, 1, 32, 32) float32 in 0..1."""
    a = _interp_matrix(SIZE, images.shape[-1])
    out = np.einsum("ij,njk,lk->nil", a, images.astype(np.float64) / 16.0, a)
    return out[:, None].astype(np.float32)


@lru_cache(maxsize=1)
def splits() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x_train, x_eval, y_train, y_eval = train_test_split(
        digits.images, digits.target, test_size=EVAL_SAMPLES, stratify=digits.target, random_state=0
    )
    return {"train": (upsample(x_train), y_train.astype(np.int64)), "eval": (upsample(x_eval), y_eval.astype(np.int64))}


def calibration() -> dict[str, np.ndarray]:
    """Training images only: calibration must not see the evaluation split."""
    x, y = splits()["train"]
    return {"image": x, "labels": y}


def evaluation() -> dict[str, np.ndarray]:
    x, y = splits()["eval"]
    return {"image": x, "labels": y}
