"""The bundled example model: a VGG-style CNN for scikit-learn's 8x8 digits, upsampled to 32x32.

Upsampling to a camera-like 32x32 and ~85 M MACs makes the example heavy enough (about 1-2 ms
per image on one core) that latency, quantization speed-ups and pruning are measurable,
unlike a toy that runs in microseconds where Python overhead dominates.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

WEIGHTS = Path(__file__).parent / "weights" / "digits_cnn.safetensors"
WIDTHS = (48, 96, 192)


def _block(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class DigitsCNN(nn.Module):
    def __init__(self, widths: tuple[int, int, int] = WIDTHS, classes: int = 10):
        super().__init__()
        a, b, c = widths
        self.features = nn.Sequential(
            *_block(1, a),
            *_block(a, a),
            nn.MaxPool2d(2),
            *_block(a, b),
            *_block(b, b),
            nn.MaxPool2d(2),
            *_block(b, c),
            *_block(c, c),
        )
        self.head = nn.Linear(c, classes)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(image).mean(dim=(2, 3)))


def build_digits_cnn() -> DigitsCNN:
    """Factory named in examples/digits.yaml (weights are loaded by edgex from the checkpoint)."""
    return DigitsCNN()
