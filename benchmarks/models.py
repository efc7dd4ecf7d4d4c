"""Reference architectures built in code for the benchmarks (torchvision is not a dependency).

mobilenet_v3_small follows the published configuration (Howard et al., 2019, table 2) and
torchvision's layer layout: inverted residuals, depthwise convolutions, squeeze-excitation with
hard-sigmoid, hard-swish. Weights are random (seeded): latency does not depend on them.
"""

from __future__ import annotations

import torch
from torch import nn


def _divisible(v: float, d: int = 8) -> int:
    new = max(d, int(v + d / 2) // d * d)
    return new + d if new < 0.9 * v else new


class _SE(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        sq = _divisible(ch // 4)
        self.fc1, self.fc2 = nn.Conv2d(ch, sq, 1), nn.Conv2d(sq, ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = torch.relu(self.fc1(x.mean((2, 3), keepdim=True)))
        return x * nn.functional.hardsigmoid(self.fc2(s))


def _cna(cin: int, cout: int, k: int, stride: int, groups: int, act: type[nn.Module] | None) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    ]
    if act is not None:
        layers.append(act())
    return nn.Sequential(*layers)


class _InvertedResidual(nn.Module):
    def __init__(self, cin: int, k: int, exp: int, cout: int, se: bool, act: type[nn.Module], stride: int):
        super().__init__()
        layers: list[nn.Module] = []
        if exp != cin:
            layers.append(_cna(cin, exp, 1, 1, 1, act))
        layers.append(_cna(exp, exp, k, stride, exp, act))
        if se:
            layers.append(_SE(exp))
        layers.append(_cna(exp, cout, 1, 1, 1, None))
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(x)
        return x + y if self.residual else y


# kernel, expanded, out, squeeze-excite, activation, stride
_SMALL = [
    (3, 16, 16, True, nn.ReLU, 2),
    (3, 72, 24, False, nn.ReLU, 2),
    (3, 88, 24, False, nn.ReLU, 1),
    (5, 96, 40, True, nn.Hardswish, 2),
    (5, 240, 40, True, nn.Hardswish, 1),
    (5, 240, 40, True, nn.Hardswish, 1),
    (5, 120, 48, True, nn.Hardswish, 1),
    (5, 144, 48, True, nn.Hardswish, 1),
    (5, 288, 96, True, nn.Hardswish, 2),
    (5, 576, 96, True, nn.Hardswish, 1),
    (5, 576, 96, True, nn.Hardswish, 1),
]


class MobileNetV3Small(nn.Module):
    def __init__(self, classes: int = 1000):
        super().__init__()
        layers: list[nn.Module] = [_cna(3, 16, 3, 2, 1, nn.Hardswish)]
        cin = 16
        for k, exp, cout, se, act, stride in _SMALL:
            layers.append(_InvertedResidual(cin, k, exp, cout, se, act, stride))
            cin = cout
        layers.append(_cna(cin, 576, 1, 1, 1, nn.Hardswish))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Linear(576, 1024), nn.Hardswish(), nn.Linear(1024, classes))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(image).mean((2, 3)))


def mobilenet_v3_small() -> MobileNetV3Small:
    torch.manual_seed(0)
    model = MobileNetV3Small()
    # Non-trivial BatchNorm statistics, so activations have realistic ranges for calibration.
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return model.eval()


def mobilenet_v3_small_calibrated(samples: int = 64, seed: int = 0) -> MobileNetV3Small:
    """mobilenet_v3_small whose outputs depend on its input, so fidelity can be measured on random weights.

    With PyTorch's default initialisation and made-up BatchNorm statistics the activations of this
    30-layer network shrink to nothing and the logits are the classifier's biases for every input
    (measured: standard deviation across inputs 3e-9). Here: torchvision's initialisation (Kaiming
    normal, fan-out; Linear N(0, 0.01)), then BatchNorm statistics from `samples` seeded random
    images, as BN recalibration does, so every layer sees normalised activations.
    """
    torch.manual_seed(seed)
    model = MobileNetV3Small()
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            m.momentum = None  # cumulative average over the calibration batches
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)
    gen = torch.Generator().manual_seed(seed + 1)
    model.train()
    with torch.no_grad():
        for _ in range(samples // 16):
            model(torch.randn(16, 3, 224, 224, generator=gen))
    return model.eval()
