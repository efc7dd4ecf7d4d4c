"""A YOLOv8-style detector built in code: the head users ship, whose output concatenates unlike quantities.

Backbone of strided Conv-BN-SiLU and C2f blocks (split, bottlenecks with residuals, concat, 1x1),
two detection levels (stride 8 and 16), decoupled box and class branches, and YOLOv8's exported
output: Concat(boxes as centre x, y, width, height in *pixels* (0..256), class probabilities
(0..1)) along the channel axis, [N, 4 + classes, anchors]. One INT8 scale over that tensor has a
step of about 1.0, so every class score rounds to 0 or 1: the reason this example exists
(exporter/quant/concat_parts.py). Weights: examples/train_detector.py on examples/shapes_data.py.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

WEIGHTS = Path(__file__).parent / "weights" / "shapes_detector.safetensors"
SIZE = 256
STRIDES = (8, 16)
CLASSES = 3


class ConvBN(nn.Sequential):
    def __init__(self, cin: int, cout: int, k: int = 3, stride: int = 1):
        super().__init__(nn.Conv2d(cin, cout, k, stride, k // 2, bias=False), nn.BatchNorm2d(cout), nn.SiLU())


class Bottleneck(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.a, self.b = ConvBN(c, c), ConvBN(c, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.b(self.a(x))


class C2f(nn.Module):
    """YOLOv8's block: split in two, a bottleneck on one half, concat all three, fuse with a 1x1."""

    def __init__(self, c: int):
        super().__init__()
        self.cv1, self.m, self.cv2 = ConvBN(c, c, 1), Bottleneck(c // 2), ConvBN(c + c // 2, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.cv1(x).chunk(2, 1)
        return self.cv2(torch.cat([a, b, self.m(b)], 1))


def _anchors() -> tuple[torch.Tensor, torch.Tensor]:
    """Cell centres in pixels [2, A] and each anchor's stride [1, A], level by level."""
    points, strides = [], []
    for s in STRIDES:
        n = SIZE // s
        ys, xs = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
        points.append(torch.stack([xs.flatten(), ys.flatten()]).float() * s + s / 2)
        strides.append(torch.full((1, n * n), float(s)))
    return torch.cat(points, 1), torch.cat(strides, 1)


class ShapesDetector(nn.Module):
    def __init__(self, classes: int = CLASSES, head: int = 32):
        super().__init__()
        self.stem = nn.Sequential(ConvBN(3, 16, 3, 2), ConvBN(16, 32, 3, 2), C2f(32))
        self.p3 = nn.Sequential(ConvBN(32, 64, 3, 2), C2f(64))
        self.p4 = nn.Sequential(ConvBN(64, 96, 3, 2), C2f(96))
        self.box = nn.ModuleList(nn.Sequential(ConvBN(c, head), nn.Conv2d(head, 4, 1)) for c in (64, 96))
        self.cls = nn.ModuleList(nn.Sequential(ConvBN(c, head), nn.Conv2d(head, classes, 1)) for c in (64, 96))
        points, strides = _anchors()
        self.register_buffer("points", points, persistent=False)
        self.register_buffer("strides", strides, persistent=False)

    def raw(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Box distances (left, top, right, bottom) in pixels [N, 4, A] and class logits [N, C, A]."""
        f3 = self.p3(self.stem(images))
        levels = (f3, self.p4(f3))
        dist = torch.cat([b(f).flatten(2) for b, f in zip(self.box, levels)], 2)
        logits = torch.cat([c(f).flatten(2) for c, f in zip(self.cls, levels)], 2)
        return F.softplus(dist) * self.strides, logits

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        dist, logits = self.raw(images)
        lt, rb = dist[:, :2], dist[:, 2:]
        x0y0, x1y1 = self.points - lt, self.points + rb
        boxes = torch.cat([(x0y0 + x1y1) / 2, x1y1 - x0y0], 1)  # centre x, y, width, height in pixels
        return torch.cat([boxes, logits.sigmoid()], 1)  # the exported YOLOv8 head: [N, 4 + C, A]


def build_shapes_detector() -> ShapesDetector:
    """Factory named in examples/detector.yaml (weights are loaded by edgex from the checkpoint)."""
    return ShapesDetector()
