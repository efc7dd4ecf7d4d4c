"""The architectures Qualcomm AI Hub publishes device latencies for, rebuilt in plain torch.

Why: the device-latency fit (exporter/bench/device_fit.py) needs each published model's graph to
count its work, and neither torchvision nor timm can be installed here. Each builder follows the
published definition of the architecture (paper + the torchvision configuration AI Hub's model.py
names: depth, widths, groups, kernel sizes, strides, squeeze-excitation); weights are random because
latency does not depend on their values. Classifier heads are kept (they are in the timed graphs).

`export(name, folder)` writes `<folder>/<name>.onnx` at the published input shape once and reuses it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

IMAGE = [1, 3, 224, 224]  # every AI Hub imagenet classifier is timed at 1x3x224x224 (IMAGENET_DIM = 224)


def cbr(cin: int, cout: int, k: int, s: int = 1, g: int = 1, act: type[nn.Module] | None = nn.ReLU) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, s, (k - 1) // 2, groups=g, bias=False), nn.BatchNorm2d(cout)]
    if act is not None:
        layers.append(act())
    return nn.Sequential(*layers)


def _div(v: float, d: int = 8) -> int:
    new = max(d, int(v + d / 2) // d * d)
    return new + d if new < 0.9 * v else new


# ---- ResNet family (He 2016; ResNeXt: Xie 2017; Wide ResNet: Zagoruyko 2016) -------------------------------
class _Basic(nn.Module):
    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int, groups: int, base: int) -> None:
        super().__init__()
        self.body = nn.Sequential(cbr(cin, planes, 3, stride), cbr(planes, planes, 3, act=None))
        self.down = cbr(cin, planes, 1, stride, act=None) if stride != 1 or cin != planes else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.down(x))


class _Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int, groups: int, base: int) -> None:
        super().__init__()
        width = int(planes * base / 64) * groups
        out = planes * 4
        self.body = nn.Sequential(
            cbr(cin, width, 1), cbr(width, width, 3, stride, groups), cbr(width, out, 1, act=None)
        )
        self.down = cbr(cin, out, 1, stride, act=None) if stride != 1 or cin != out else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.down(x))


def resnet(block: type, depths: list[int], groups: int = 1, base: int = 64) -> nn.Module:
    layers: list[nn.Module] = [cbr(3, 64, 7, 2), nn.MaxPool2d(3, 2, 1)]
    cin = 64
    for i, (planes, n) in enumerate(zip([64, 128, 256, 512], depths, strict=True)):
        for j in range(n):
            layers.append(block(cin, planes, 2 if (j == 0 and i > 0) else 1, groups, base))
            cin = planes * block.expansion
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, 1000))


# ---- MobileNetV2 (Sandler 2018), MNASNet (Tan 2019), MobileNetV3 (Howard 2019), EfficientNet (Tan 2019) ------
class _SE(nn.Module):
    def __init__(self, c: int, squeeze: int, gate: type[nn.Module] = nn.Sigmoid, act: type = nn.ReLU) -> None:
        super().__init__()
        self.f = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Conv2d(c, squeeze, 1), act(), nn.Conv2d(squeeze, c, 1), gate()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.f(x)


class _InvRes(nn.Module):
    """Inverted residual: expand 1x1, depthwise kxk, optional squeeze-excitation, project 1x1."""

    def __init__(
        self, cin: int, exp: int, cout: int, k: int, s: int, act: type = nn.ReLU6, se: int | None = None, se_act=None
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [cbr(cin, exp, 1, act=act)] if exp != cin else []
        layers.append(cbr(exp, exp, k, s, exp, act=act))
        if se:
            layers.append(_SE(exp, se, *(se_act or (nn.Sigmoid, nn.ReLU))))
        layers.append(cbr(exp, cout, 1, act=None))
        self.body = nn.Sequential(*layers)
        self.res = s == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x) if self.res else self.body(x)


def mobilenet_v2() -> nn.Module:
    cfg = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]
    layers: list[nn.Module] = [cbr(3, 32, 3, 2, act=nn.ReLU6)]
    cin = 32
    for t, c, n, s in cfg:
        for i in range(n):
            layers.append(_InvRes(cin, cin * t, c, 3, s if i == 0 else 1))
            cin = c
    layers += [cbr(cin, 1280, 1, act=nn.ReLU6), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(1280, 1000)]
    return nn.Sequential(*layers)


def mnasnet(alpha: float = 0.5) -> nn.Module:
    """MNASNet-B1 (torchvision mnasnet0_5): depths scaled by alpha, rounded to multiples of 8 (bias 0.9)."""
    d = [_div(c * alpha) for c in [32, 16, 24, 40, 80, 96, 192, 320]]
    layers: list[nn.Module] = [cbr(3, d[0], 3, 2), cbr(d[0], d[0], 3, 1, d[0]), cbr(d[0], d[1], 1, act=None)]
    cin = d[1]
    for cout, k, s, t, n in zip(d[2:], [3, 5, 5, 3, 5, 3], [2, 2, 2, 1, 2, 1], [3, 3, 6, 6, 6, 6], [3, 3, 3, 2, 4, 1]):
        for i in range(n):
            layers.append(_InvRes(cin, cin * t, cout, k, s if i == 0 else 1, act=nn.ReLU))
            cin = cout
    layers += [cbr(cin, 1280, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2), nn.Linear(1280, 1000)]
    return nn.Sequential(*layers)


def mobilenet_v3(large: bool = True) -> nn.Module:
    hs, re = nn.Hardswish, nn.ReLU
    # (kernel, expanded, out, squeeze-excitation, activation, stride)
    cfg = (
        [
            (3, 16, 16, 0, re, 1), (3, 64, 24, 0, re, 2), (3, 72, 24, 0, re, 1), (5, 72, 40, 1, re, 2),
            (5, 120, 40, 1, re, 1), (5, 120, 40, 1, re, 1), (3, 240, 80, 0, hs, 2), (3, 200, 80, 0, hs, 1),
            (3, 184, 80, 0, hs, 1), (3, 184, 80, 0, hs, 1), (3, 480, 112, 1, hs, 1), (3, 672, 112, 1, hs, 1),
            (5, 672, 160, 1, hs, 2), (5, 960, 160, 1, hs, 1), (5, 960, 160, 1, hs, 1),
        ]
        if large
        else [
            (3, 16, 16, 1, re, 2), (3, 72, 24, 0, re, 2), (3, 88, 24, 0, re, 1), (5, 96, 40, 1, hs, 2),
            (5, 240, 40, 1, hs, 1), (5, 240, 40, 1, hs, 1), (5, 120, 48, 1, hs, 1), (5, 144, 48, 1, hs, 1),
            (5, 288, 96, 1, hs, 2), (5, 576, 96, 1, hs, 1), (5, 576, 96, 1, hs, 1),
        ]
    )  # fmt: skip
    layers: list[nn.Module] = [cbr(3, 16, 3, 2, act=hs)]
    cin = 16
    for k, exp, cout, se, act, s in cfg:
        layers.append(_InvRes(cin, exp, cout, k, s, act, _div(exp / 4) if se else None, (nn.Hardsigmoid, nn.ReLU)))
        cin = cout
    last, hidden = (960, 1280) if large else (576, 1024)
    layers += [cbr(cin, last, 1, act=hs), nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    layers += [nn.Linear(last, hidden), hs(), nn.Dropout(0.2), nn.Linear(hidden, 1000)]
    return nn.Sequential(*layers)


def efficientnet_b0() -> nn.Module:
    # (expand ratio, kernel, stride, in, out, repeats); SiLU everywhere, SE squeeze = in/4
    cfg = [(1, 3, 1, 32, 16, 1), (6, 3, 2, 16, 24, 2), (6, 5, 2, 24, 40, 2), (6, 3, 2, 40, 80, 3),
           (6, 5, 1, 80, 112, 3), (6, 5, 2, 112, 192, 4), (6, 3, 1, 192, 320, 1)]  # fmt: skip
    layers: list[nn.Module] = [cbr(3, 32, 3, 2, act=nn.SiLU)]
    for t, k, s, cin, cout, n in cfg:
        for i in range(n):
            c = cin if i == 0 else cout
            layers.append(
                _InvRes(c, c * t, cout, k, s if i == 0 else 1, nn.SiLU, max(1, c // 4), (nn.Sigmoid, nn.SiLU))
            )
    layers += [cbr(320, 1280, 1, act=nn.SiLU), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(1280, 1000)]
    return nn.Sequential(*layers)


# ---- SqueezeNet 1.1 (Iandola 2016), GoogLeNet (Szegedy 2015), DenseNet-121 (Huang 2017) --------------------
class _Fire(nn.Module):
    def __init__(self, cin: int, sq: int, e1: int, e3: int) -> None:
        super().__init__()
        self.sq = nn.Sequential(nn.Conv2d(cin, sq, 1), nn.ReLU())
        self.e1 = nn.Sequential(nn.Conv2d(sq, e1, 1), nn.ReLU())
        self.e3 = nn.Sequential(nn.Conv2d(sq, e3, 3, padding=1), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.sq(x)
        return torch.cat([self.e1(x), self.e3(x)], 1)


def squeezenet1_1() -> nn.Module:
    pool = nn.MaxPool2d(3, 2, ceil_mode=True)
    return nn.Sequential(
        nn.Conv2d(3, 64, 3, 2), nn.ReLU(), pool, _Fire(64, 16, 64, 64), _Fire(128, 16, 64, 64), pool,
        _Fire(128, 32, 128, 128), _Fire(256, 32, 128, 128), pool, _Fire(256, 48, 192, 192),
        _Fire(384, 48, 192, 192), _Fire(384, 64, 256, 256), _Fire(512, 64, 256, 256),
        nn.Dropout(0.5), nn.Conv2d(512, 1000, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
    )  # fmt: skip


class _Inception(nn.Module):
    def __init__(self, cin: int, c1: int, r3: int, c3: int, r5: int, c5: int, pp: int) -> None:
        super().__init__()
        self.b = nn.ModuleList([
            cbr(cin, c1, 1),
            nn.Sequential(cbr(cin, r3, 1), cbr(r3, c3, 3)),
            nn.Sequential(cbr(cin, r5, 1), cbr(r5, c5, 3)),  # torchvision's GoogLeNet uses 3x3 here
            nn.Sequential(nn.MaxPool2d(3, 1, 1, ceil_mode=True), cbr(cin, pp, 1)),
        ])  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([b(x) for b in self.b], 1)


def googlenet() -> nn.Module:
    pool = nn.MaxPool2d(3, 2, ceil_mode=True)
    cfg = [(192, 64, 96, 128, 16, 32, 32), (256, 128, 128, 192, 32, 96, 64), "p",
           (480, 192, 96, 208, 16, 48, 64), (512, 160, 112, 224, 24, 64, 64), (512, 128, 128, 256, 24, 64, 64),
           (512, 112, 144, 288, 32, 64, 64), (528, 256, 160, 320, 32, 128, 128), "p2",
           (832, 256, 160, 320, 32, 128, 128), (832, 384, 192, 384, 48, 128, 128)]  # fmt: skip
    layers: list[nn.Module] = [cbr(3, 64, 7, 2), pool, cbr(64, 64, 1), cbr(64, 192, 3), pool]
    for c in cfg:
        layers.append(nn.MaxPool2d(2 if c == "p2" else 3, 2, ceil_mode=True) if isinstance(c, str) else _Inception(*c))
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2), nn.Linear(1024, 1000))


class _Dense(nn.Module):
    def __init__(self, cin: int, growth: int = 32) -> None:
        super().__init__()
        self.f = nn.Sequential(
            nn.BatchNorm2d(cin), nn.ReLU(), nn.Conv2d(cin, 4 * growth, 1, bias=False),
            nn.BatchNorm2d(4 * growth), nn.ReLU(), nn.Conv2d(4 * growth, growth, 3, padding=1, bias=False),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.f(x)], 1)


def densenet121() -> nn.Module:
    layers: list[nn.Module] = [cbr(3, 64, 7, 2), nn.MaxPool2d(3, 2, 1)]
    c = 64
    for i, n in enumerate([6, 12, 24, 16]):
        for _ in range(n):
            layers.append(_Dense(c))
            c += 32
        if i < 3:
            layers += [nn.BatchNorm2d(c), nn.ReLU(), nn.Conv2d(c, c // 2, 1, bias=False), nn.AvgPool2d(2, 2)]
            c //= 2
    layers += [nn.BatchNorm2d(c), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, 1000)]
    return nn.Sequential(*layers)


# ---- ShuffleNetV2 (Ma 2018), RegNet (Radosavovic 2020) ------------------------------------------------------
class _Shuffle(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        half = cout // 2
        self.stride = stride
        if stride > 1:
            self.left = nn.Sequential(cbr(cin, cin, 3, stride, cin, act=None), cbr(cin, half, 1))
        self.right = nn.Sequential(
            cbr(cin if stride > 1 else half, half, 1), cbr(half, half, 3, stride, half, act=None), cbr(half, half, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            a, b = x.chunk(2, dim=1)
            out = torch.cat([a, self.right(b)], 1)
        else:
            out = torch.cat([self.left(x), self.right(x)], 1)
        n, c, h, w = out.shape
        return out.view(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)


def shufflenet_v2(widths: tuple[int, ...] = (24, 48, 96, 192, 1024)) -> nn.Module:
    """x0.5 by default (what AI Hub's shufflenet_v2 builds)."""
    layers: list[nn.Module] = [cbr(3, widths[0], 3, 2), nn.MaxPool2d(3, 2, 1)]
    cin = widths[0]
    for cout, n in zip(widths[1:4], [4, 8, 4], strict=True):
        for i in range(n):
            layers.append(_Shuffle(cin, cout, 2 if i == 0 else 1))
            cin = cout
    layers += [cbr(cin, widths[4], 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(widths[4], 1000)]
    return nn.Sequential(*layers)


class _RegBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, group_width: int, se: float) -> None:
        super().__init__()
        g = cout // group_width
        layers: list[nn.Module] = [cbr(cin, cout, 1), cbr(cout, cout, 3, stride, g)]
        if se:
            layers.append(_SE(cout, int(round(se * cin))))
        layers.append(cbr(cout, cout, 1, act=None))
        self.f = nn.Sequential(*layers)
        self.proj = cbr(cin, cout, 1, stride, act=None) if stride != 1 or cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.proj(x) + self.f(x))


def regnet(depth: int, w0: int, wa: float, wm: float, group_width: int, se: float = 0.0) -> nn.Module:
    """Quantized linear widths w_j = w0 * wm^round(log(u_j/w0)/log(wm)), u_j = w0 + wa*j, rounded to 8;
    group widths capped at the stage width and widths made divisible by them (the paper's generator)."""
    u = [w0 + wa * j for j in range(depth)]
    ws = [int(round(w0 * wm ** round(math.log(x / w0) / math.log(wm)) / 8) * 8) for x in u]
    stages: list[tuple[int, int]] = []
    for w in ws:
        if stages and stages[-1][0] == w:
            stages[-1] = (w, stages[-1][1] + 1)
        else:
            stages.append((w, 1))
    layers: list[nn.Module] = [cbr(3, 32, 3, 2)]
    cin = 32
    for w, n in stages:
        gw = min(group_width, w)
        w = _div(w, gw)
        for i in range(n):
            layers.append(_RegBlock(cin, w, 2 if i == 0 else 1, gw, se))
            cin = w
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, 1000))


# ---- ConvNeXt (Liu 2022), ViT (Dosovitskiy 2021) -----------------------------------------------------------
class _ConvNeXtBlock(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.dw = nn.Conv2d(c, c, 7, padding=3, groups=c)
        self.norm = nn.LayerNorm(c, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(c, 4 * c), nn.GELU(), nn.Linear(4 * c, c))
        self.gamma = nn.Parameter(torch.full((c,), 1e-6))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.dw(x).permute(0, 2, 3, 1)
        y = self.gamma * self.mlp(self.norm(y))
        return x + y.permute(0, 3, 1, 2)


class _LayerNorm2d(nn.LayerNorm):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def convnext_tiny(depths: tuple[int, ...] = (3, 3, 9, 3), dims: tuple[int, ...] = (96, 192, 384, 768)) -> nn.Module:
    layers: list[nn.Module] = [nn.Conv2d(3, dims[0], 4, 4), _LayerNorm2d(dims[0], eps=1e-6)]
    for i, (n, c) in enumerate(zip(depths, dims, strict=True)):
        if i:
            layers += [_LayerNorm2d(dims[i - 1], eps=1e-6), nn.Conv2d(dims[i - 1], c, 2, 2)]
        layers += [_ConvNeXtBlock(c) for _ in range(n)]
    layers += [nn.AdaptiveAvgPool2d(1), _LayerNorm2d(dims[-1], eps=1e-6), nn.Flatten(), nn.Linear(dims[-1], 1000)]
    return nn.Sequential(*layers)


class _ViT(nn.Module):
    def __init__(self, patch: int = 16, dim: int = 768, depth: int = 12, heads: int = 12, mlp: int = 3072) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, dim, patch, patch)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(torch.zeros(1, (224 // patch) ** 2 + 1, dim))
        layer = nn.TransformerEncoderLayer(dim, heads, mlp, 0.0, "gelu", 1e-6, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, 1000)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], 1) + self.pos
        return self.head(self.norm(self.encoder(x))[:, 0])


ZOO: dict[str, Callable[[], nn.Module]] = {
    "resnet18": lambda: resnet(_Basic, [2, 2, 2, 2]),
    "resnet50": lambda: resnet(_Bottleneck, [3, 4, 6, 3]),
    "resnet101": lambda: resnet(_Bottleneck, [3, 4, 23, 3]),
    "resnext50": lambda: resnet(_Bottleneck, [3, 4, 6, 3], groups=32, base=4),
    "resnext101": lambda: resnet(_Bottleneck, [3, 4, 23, 3], groups=32, base=8),
    "wideresnet50": lambda: resnet(_Bottleneck, [3, 4, 6, 3], base=128),
    "mobilenet_v2": mobilenet_v2,
    "mobilenet_v3_large": lambda: mobilenet_v3(True),
    "mobilenet_v3_small": lambda: mobilenet_v3(False),
    "efficientnet_b0": efficientnet_b0,
    "mnasnet05": lambda: mnasnet(0.5),
    "squeezenet1_1": squeezenet1_1,
    "googlenet": googlenet,
    "densenet121": densenet121,
    "shufflenet_v2": shufflenet_v2,
    "regnet": lambda: regnet(25, 88, 26.31, 2.25, 48),  # RegNetX-3.2GF
    "regnet_y_800mf": lambda: regnet(14, 56, 38.84, 2.4, 16, 0.25),
    "convnext_tiny": convnext_tiny,
    "vit": _ViT,  # ViT-B/16
}


def export(name: str, folder: Path) -> Path:
    """The model as ONNX at 1x3x224x224 (opset 18, torch's dynamo exporter as edgex uses), cached."""
    path = folder / f"{name}.onnx"
    if path.is_file():
        return path
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = ZOO[name]().eval()
    tmp = path.with_suffix(".tmp.onnx")
    with torch.no_grad():
        torch.onnx.export(model, (torch.randn(IMAGE),), str(tmp), input_names=["image"], opset_version=18, dynamo=True)
    import onnx

    onnx.save(onnx.load(str(tmp)), str(path))  # one self-contained file (dynamo may write external data)
    for leftover in folder.glob(f"{name}.tmp.onnx*"):
        leftover.unlink()
    return path
