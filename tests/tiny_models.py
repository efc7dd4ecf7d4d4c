"""Tiny real architectures built in code (no torchvision): residual, depthwise-separable,
squeeze-excitation and concat blocks, small enough that a full build takes seconds."""

from __future__ import annotations

import torch
from torch import nn


class SqueezeExcite(nn.Module):
    def __init__(self, ch: int, reduced: int = 4):
        super().__init__()
        self.fc1 = nn.Conv2d(ch, reduced, 1)
        self.fc2 = nn.Conv2d(reduced, ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean(dim=(2, 3), keepdim=True)
        return x * torch.sigmoid(self.fc2(torch.relu(self.fc1(s))))


class TinyNet(nn.Module):
    """stem -> residual block -> depthwise-separable + SE -> two-branch concat -> head."""

    def __init__(self, classes: int = 5):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.res = nn.Sequential(
            nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1)
        )
        self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.pw = nn.Conv2d(16, 24, 1)
        self.se = SqueezeExcite(24)
        self.branch_a = nn.Conv2d(24, 8, 1)
        self.branch_b = nn.Conv2d(24, 8, 3, padding=1)
        self.head = nn.Linear(16, classes)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = self.stem(image)
        x = torch.relu(x + self.res(x))
        x = self.se(torch.relu(self.pw(torch.relu(self.dw(x)))))
        x = torch.cat([self.branch_a(x), self.branch_b(x)], dim=1)
        return self.head(torch.relu(x).mean(dim=(2, 3)))


def build_tiny() -> TinyNet:
    torch.manual_seed(0)
    return TinyNet()


class TinyStudent(nn.Module):
    """A user-supplied student for TinyNet: same input and output, a plain narrow stack."""

    def __init__(self, classes: int = 5):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1, stride=2), nn.ReLU()
        )
        self.head = nn.Linear(8, classes)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(image).mean(dim=(2, 3)))


def build_tiny_student() -> TinyStudent:
    torch.manual_seed(1)
    return TinyStudent()


def matmul_onnx(size: int = 16, relu: bool = False, opset: int = 17, seed: int | None = None):
    """A real, checker-clean ONNX model: x [1, size] @ weight [size, size] (then Relu), a few KB.
    seed=None gives an all-ones weight; a seed gives a seeded normal one."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    values = np.ones((size, size), np.float32)
    if seed is not None:
        values = np.random.default_rng(seed).standard_normal((size, size)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "weight"], ["h" if relu else "y"])]
    if relu:
        nodes.append(helper.make_node("Relu", ["h"], ["y"]))
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, size])],
        [numpy_helper.from_array(values, "weight")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8 if opset <= 17 else 9
    onnx.checker.check_model(model)
    return model
