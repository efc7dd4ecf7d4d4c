"""Low-rank factorisation: a dense layer W (m x n) becomes two thinner dense layers whose product
approximates it, so the model stays an ordinary dense network that every runtime runs, only
with less arithmetic.

- Linear and 1x1 convolutions: W ~ U_r S_r V_r^T from a truncated SVD, as x -> V_r^T x (r
  outputs, no bias) -> U_r S_r (+ bias).
- k x k convolutions: `spatial` (Jaderberg et al., 2014, scheme 2): a (k x 1) convolution into r
  channels, then a (1 x k) one, from the SVD of W reshaped to (in*k) x (out*k) — far cheaper than
  `channel` (a k x k convolution into r channels then a 1 x 1) when channels are few; `channel`
  is offered for wide layers.
- Data-aware ranks (`criterion: activation`): the SVD of W L, where L L^T is the Gram matrix of
  the layer's real inputs (calibration data), minimises the error of the layer's *outputs* on
  that data, ||(W - W_r) X||, not of the weights (SVD-LLM, Wang et al., 2024): plain SVD of
  transformer weights spends its rank on directions the inputs never use.

A layer is factorised only when r (m + n) < m n, i.e. r < mn/(m+n): otherwise the two layers cost
more than the one. Ranks are rounded up to the target's preferred multiple, and the rule is
applied after rounding. The plan (layer -> mode, rank, shape) is plain data in the manifest;
`replay` rebuilds the same architecture from it.
"""

from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass

import numpy as np

from exporter.compress.hooks import forward_hooks
from exporter.errors import UsageError


@dataclass
class Candidate:
    name: str
    kind: str  # linear | conv1x1 | spatial | channel
    m: int  # rows of the matrix that is factorised
    n: int  # columns
    positions: int  # output positions per forward pass (tokens, pixels), for MACs
    singular: np.ndarray  # singular values of the (whitened) matrix, descending

    @property
    def bound(self) -> float:
        """Largest rank that still makes the pair cheaper than the layer: r < mn / (m + n)."""
        return self.m * self.n / (self.m + self.n)

    def macs(self, rank: int | None) -> int:
        return self.positions * (self.m * self.n if rank is None else rank * (self.m + self.n))


def _matrix(module, kind: str):
    """The layer's weight as the matrix that is factorised (rows = outputs of the second factor)."""
    w = module.weight.detach().double()
    if kind in ("linear", "conv1x1", "channel"):
        return w.reshape(w.shape[0], -1)  # out x (in * kh * kw)
    cout, cin, kh, kw = w.shape  # spatial: (in*kh) x (out*kw), transposed so rows = (out, kw)
    return w.permute(0, 3, 1, 2).reshape(cout * kw, cin * kh)


def _kind(module, conv_mode: str) -> str | None:
    from torch import nn

    if isinstance(module, nn.Linear):
        return "linear"
    if isinstance(module, nn.Conv2d) and module.groups == 1 and module.padding_mode == "zeros":
        if module.kernel_size == (1, 1):
            return "conv1x1"
        return conv_mode
    return None


def eligible(root, include: list[str], protect: list[str], never: set[str], conv_mode: str) -> dict[str, object]:
    """Named layers that may be factorised: Linear and ungrouped Conv2d matching `include` (all by
    default), minus the protected ones and those the caller rules out (the output layer)."""
    out = {}
    for name, m in root.named_modules():
        if not name or name in never or _kind(m, conv_mode) is None:
            continue
        if include and not any(fnmatch.fnmatchcase(name, p) for p in include):
            continue
        if any(fnmatch.fnmatchcase(name, p) for p in protect):
            continue
        out[name] = m
    return out


def _gram_inputs(root, layers: dict, kinds: dict, batches: list[tuple], model, mask_index: int | None):
    """Per layer, the Gram matrix X^T X of its inputs on real data (padding tokens left out), in
    the matrix's column space: features for Linear / 1x1, unfolded k x k patches for `channel`."""
    import torch
    import torch.nn.functional as F

    grams: dict[str, torch.Tensor] = {}
    current: dict = {}
    hooks = []
    for name, layer in layers.items():
        if kinds[name] == "spatial":
            continue

        def hook(mod, inp, _out, name=name):
            x = inp[0].detach()
            if kinds[name] == "linear":
                x = x.reshape(-1, x.shape[-1])
                mask = current.get("mask")
                if mask is not None and mask.numel() * 1 == x.shape[0]:
                    x = x[mask.reshape(-1).bool()]
            elif kinds[name] == "conv1x1":
                x = x.permute(0, 2, 3, 1).reshape(-1, x.shape[1])
            else:
                x = F.unfold(x, mod.kernel_size, mod.dilation, mod.padding, mod.stride).transpose(1, 2)
                x = x.reshape(-1, x.shape[-1])
            x = x.double()
            g = x.t() @ x
            grams[name] = g if name not in grams else grams[name] + g

        hooks.append((layer, hook))
    with forward_hooks(hooks):
        for batch in batches:
            current["mask"] = batch[mask_index] if mask_index is not None else None
            model(*batch)
    return grams


def _whitener(gram, ridge: float = 1e-4):
    """L with L L^T = gram (+ a small ridge so unused directions do not make it singular)."""
    import torch

    g = gram + ridge * gram.diagonal().mean().clamp(min=1e-12) * torch.eye(len(gram), dtype=gram.dtype)
    return torch.linalg.cholesky(g)


def candidates(
    root,
    layers: dict,
    conv_mode: str,
    positions: dict[str, int],
    grams: dict | None,
) -> dict[str, Candidate]:
    import torch

    out = {}
    for name, layer in layers.items():
        kind = _kind(layer, conv_mode)
        w = _matrix(layer, kind)
        if grams is not None and name in grams:
            w = w @ _whitener(grams[name])
        s = torch.linalg.svdvals(w).numpy()
        out[name] = Candidate(name, kind, w.shape[0], w.shape[1], positions[name], s)
    return out


def rank_for_energy(c: Candidate, energy: float, align: int) -> int | None:
    """Smallest rank keeping `energy` of the squared singular values, rounded up to `align`;
    None when that rank would not make the layer cheaper."""
    total = float((c.singular**2).sum())
    if total <= 0:
        return None
    kept = np.cumsum(c.singular**2) / total
    r = int(np.searchsorted(kept, energy - 1e-12) + 1)
    r = min(len(c.singular), max(align, int(math.ceil(r / align)) * align))
    return r if r < c.bound else None


def choose_ranks(
    cands: dict[str, Candidate], align: int, energy: float | None, macs_goal: float | None, base_macs: int
) -> tuple[dict[str, int], float]:
    """Ranks for every candidate at one retained-energy level: the given one, or the highest level
    (found by bisection) whose total MACs meet the goal. Returns (ranks, energy level)."""

    def at(e: float) -> tuple[dict[str, int], int]:
        ranks = {n: r for n, c in cands.items() if (r := rank_for_energy(c, e, align)) is not None}
        saved = sum(c.macs(None) - c.macs(ranks[n]) for n, c in cands.items() if n in ranks)
        return ranks, base_macs - saved

    if energy is not None:
        return at(energy)[0], energy
    lo, hi = 0.0, 1.0  # energy lo meets the goal (or nothing does), hi does not
    if at(0.0)[1] > macs_goal * base_macs:
        return at(0.0)[0], 0.0
    for _ in range(30):
        mid = (lo + hi) / 2
        if at(mid)[1] <= macs_goal * base_macs:
            lo = mid
        else:
            hi = mid
    return at(lo)[0], lo


def factorize(layer, kind: str, rank: int, gram=None):
    """The pair of layers replacing `layer` at `rank` (a new module; `layer` is untouched)."""
    import torch
    from torch import nn

    w = _matrix(layer, kind)
    whiten = _whitener(gram) if gram is not None else None
    u, s, vh = torch.linalg.svd(w @ whiten if whiten is not None else w, full_matrices=False)
    u, s, vh = u[:, :rank], s[:rank], vh[:rank]
    if whiten is not None:  # W L ~ U S Vh  =>  W ~ U S (Vh L^-1)
        vh = torch.linalg.solve_triangular(whiten, vh, upper=False, left=False)
    root = s.sqrt()
    a = (root[:, None] * vh).float()  # rank x n
    b = (u * root[None, :]).float()  # m x rank
    bias = layer.bias
    if kind == "linear":
        first = nn.Linear(layer.in_features, rank, bias=False)
        second = nn.Linear(rank, layer.out_features, bias=bias is not None)
        first.weight.data.copy_(a)
        second.weight.data.copy_(b)
    elif kind in ("conv1x1", "channel"):
        cout, cin, kh, kw = layer.weight.shape
        first = nn.Conv2d(cin, rank, (kh, kw), layer.stride, layer.padding, layer.dilation, bias=False)
        second = nn.Conv2d(rank, cout, 1, bias=bias is not None)
        first.weight.data.copy_(a.reshape(rank, cin, kh, kw))
        second.weight.data.copy_(b.reshape(cout, rank, 1, 1))
    else:  # spatial: matrix rows (out, kw), columns (in, kh)
        cout, cin, kh, kw = layer.weight.shape
        sy, sx = layer.stride
        py, px = layer.padding
        dy, dx = layer.dilation
        first = nn.Conv2d(cin, rank, (kh, 1), (sy, 1), (py, 0), (dy, 1), bias=False)
        second = nn.Conv2d(rank, cout, (1, kw), (1, sx), (0, px), (1, dx), bias=bias is not None)
        first.weight.data.copy_(a.reshape(rank, cin, kh).unsqueeze(-1))
        second.weight.data.copy_(b.reshape(cout, kw, rank).permute(0, 2, 1).unsqueeze(2))
    if bias is not None:
        second.bias.data.copy_(bias.detach())
    return nn.Sequential(first, second)


def _set(root, name: str, module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, module)


def apply(root, plan: dict, grams: dict | None = None) -> None:
    """Replace each planned layer by its factorised pair, in place."""
    for name, entry in plan["layers"].items():
        layer = root.get_submodule(name)
        _set(root, name, factorize(layer, entry["kind"], entry["rank"], (grams or {}).get(name)))


def replay(root, plan: dict) -> None:
    """The factorised architecture from a plan (weights to be loaded afterwards)."""
    from torch import nn

    for name, entry in plan["layers"].items():
        layer = root.get_submodule(name)
        if not isinstance(layer, nn.Sequential):
            _set(root, name, factorize(layer, entry["kind"], entry["rank"]))


def merge(root) -> None:
    """Multiply every factorised pair back into one dense layer (same function, original shape):
    what a standard architecture can load (a Hugging Face folder whose config knows no ranks)."""
    import torch
    from torch import nn

    for name, m in list(root.named_modules()):
        if not (isinstance(m, nn.Sequential) and len(m) == 2 and all(isinstance(x, (nn.Linear, nn.Conv2d)) for x in m)):
            continue
        first, second = m
        bias = second.bias is not None
        if isinstance(first, nn.Linear):
            dense = nn.Linear(first.in_features, second.out_features, bias=bias)
            dense.weight.data.copy_(second.weight @ first.weight)
        else:
            raise UsageError(
                "merging factorised convolutions is not supported",
                path="recipe",
                field="compress.lowrank",
                fix="factorised convolutions stay as two layers",
            )
        if bias:
            dense.bias.data.copy_(second.bias)
        with torch.no_grad():
            _set(root, name, dense)


def output_positions(root, layers: dict, model, example: tuple) -> dict[str, int]:
    """Output positions each layer computes per forward pass (tokens x batch, or pixels)."""

    seen: dict[str, int] = {}
    hooks = (
        (layer, lambda _m, _i, out, name=name: seen.__setitem__(name, out[0].numel())) for name, layer in layers.items()
    )
    with forward_hooks(hooks):
        model(*example)
    out = {}
    for name, layer in layers.items():
        channels = layer.out_features if hasattr(layer, "out_features") else layer.out_channels
        out[name] = seen.get(name, 0) // channels
    return out
