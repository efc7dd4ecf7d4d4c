"""Knowledge distillation: the compressed model (student) learns to reproduce the uncompressed one
(teacher), so pruning or factorising costs little accuracy and needs no labels.

Losses: logits KD (Hinton et al., 2015: KL on temperature-softened outputs, scaled by T^2 so its
gradients keep their size as T changes, mixed with the hard-label loss when labels exist);
cosine or MSE on embeddings; MSE between matching encoder layers' hidden states. Training is
seeded and runs on a fixed number of torch threads so a rerun on the same machine repeats;
a slice of the training data (never the evaluation set) decides early stopping.
"""

from __future__ import annotations

import copy
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from exporter import log
from exporter.recipe import InputSpec
from exporter.recipe_steps import DistillStep


def kd_loss(student, teacher, labels=None, temperature: float = 4.0, alpha: float = 0.7):
    """alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * CE(student, labels); pure KD without labels."""
    import torch.nn.functional as F

    t = temperature
    soft = F.kl_div(F.log_softmax(student / t, dim=-1), F.softmax(teacher / t, dim=-1), reduction="batchmean") * t * t
    if labels is None or alpha >= 1.0:
        return soft
    return alpha * soft + (1 - alpha) * F.cross_entropy(student, labels)


def cosine_loss(student, teacher):
    """1 - cosine similarity, averaged: what the cosine metric judges embeddings by."""
    import torch.nn.functional as F

    return (1 - F.cosine_similarity(student.flatten(1), teacher.flatten(1), dim=1)).mean()


def mse_loss(student, teacher):
    import torch.nn.functional as F

    return F.mse_loss(student, teacher)


def hidden_loss(students: Sequence, teachers: Sequence, mask=None):
    """Mean MSE between paired hidden states [batch, seq, hidden], padding positions excluded."""
    import torch

    total = 0.0
    for s, t in zip(students, teachers, strict=True):
        err = (s - t).pow(2).mean(-1)
        if mask is not None:
            m = mask.to(err.dtype)
            err = (err * m).sum() / m.sum().clamp(min=1)
        else:
            err = err.mean()
        total = total + err
    return total / max(len(students), 1) if students else torch.zeros(())


LOSSES: dict[str, Callable] = {"kd": kd_loss, "cosine": cosine_loss, "mse": mse_loss}


def loss_kind_for(setting: str, metric: str) -> str:
    """auto: KD for classifiers (top1), cosine for embeddings, MSE for regression-like outputs."""
    if setting != "auto":
        return setting
    return {"top1": "kd", "cosine": "cosine"}.get(metric, "mse")


@dataclass
class DistillResult:
    loss: str
    history: list[dict] = field(default_factory=list)  # per epoch: train and validation loss
    best_epoch: int = 0
    stopped_early: bool = False
    train_samples: int = 0
    validation_samples: int = 0
    seconds: float = 0.0


class _Capture:
    """Forward hooks that keep each paired layer's hidden-state output."""

    def __init__(self, modules: Sequence):
        self.outputs: list = []
        self.hooks = [m.register_forward_hook(self._keep) for m in modules]

    def _keep(self, _module, _inputs, output):
        self.outputs.append(output[0] if isinstance(output, (tuple, list)) else output)

    def take(self) -> list:
        out, self.outputs = self.outputs, []
        return out

    def close(self) -> None:
        for h in self.hooks:
            h.remove()


def _batch(inputs: dict[str, np.ndarray], specs: list[InputSpec], idx: np.ndarray, gen, augment: bool):
    """Tensors in graph-input order; text batches trimmed to their longest sentence (training speed);
    images shifted by up to 2 pixels when augmenting."""
    import torch

    arrays = {s.name: inputs[s.name][idx] for s in specs}
    mask = arrays.get("attention_mask")
    if mask is not None and mask.ndim == 2:
        length = max(1, int(mask.sum(1).max()))
        arrays = {k: (v[:, :length] if v.ndim == 2 and v.shape[1] == mask.shape[1] else v) for k, v in arrays.items()}
    if augment and mask is not None and mask.ndim == 2:
        arrays = _crop_sentences(arrays, gen)
        mask = arrays["attention_mask"]
    tensors = [torch.from_numpy(np.ascontiguousarray(arrays[s.name])) for s in specs]
    if augment:
        for i, t in enumerate(tensors):
            if t.ndim == 4 and t.is_floating_point():
                dy, dx = torch.randint(-2, 3, (2,), generator=gen).tolist()
                tensors[i] = torch.roll(t, shifts=(dy, dx), dims=(2, 3))
    return tensors, (torch.from_numpy(mask[:, : tensors[0].shape[1]]) if mask is not None else None)


def _crop_sentences(arrays: dict[str, np.ndarray], gen) -> dict[str, np.ndarray]:
    """Text augmentation for distillation: half the sentences replaced by a random contiguous span
    of 50-100% of their tokens (first and last special tokens kept). The teacher embeds the same
    span, so every epoch brings new, correctly labelled inputs from a small corpus."""
    import torch

    mask = arrays["attention_mask"]
    out = {k: v.copy() for k, v in arrays.items()}
    for i in range(len(mask)):
        n = int(mask[i].sum())
        inner = n - 2  # [CLS] ... [SEP]
        if inner < 4 or float(torch.rand((), generator=gen)) < 0.5:
            continue
        keep = max(2, int(inner * (0.5 + 0.5 * float(torch.rand((), generator=gen)))))
        start = 1 + int(torch.randint(0, inner - keep + 1, (), generator=gen))
        for k, v in arrays.items():
            if v.ndim != 2 or v.shape[1] != mask.shape[1]:
                continue
            row = np.zeros_like(v[i])
            row[0] = v[i, 0]
            row[1 : 1 + keep] = v[i, start : start + keep]
            row[1 + keep] = v[i, n - 1]
            out[k][i] = row
    return out


def _batches(perm: np.ndarray, lengths: np.ndarray | None, size: int, gen) -> list[np.ndarray]:
    """Shuffled batches; for text, sentences of similar length batched together (within windows
    of 16 batches) so little time goes into padding, then the batch order shuffled."""
    import torch

    if lengths is None:
        return [perm[i : i + size] for i in range(0, len(perm), size)]
    out = []
    window = size * 16
    for start in range(0, len(perm), window):
        chunk = perm[start : start + window]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        out += [chunk[i : i + size] for i in range(0, len(chunk), size)]
    order = torch.randperm(len(out), generator=gen).tolist()
    return [out[i] for i in order]


def _train_mode(module, dropout: bool) -> None:
    """Training mode for BatchNorm statistics; dropout only when asked: the student copies a
    teacher exactly, and dropout noise measured slower to converge for a pruned MiniLM."""
    from torch import nn

    module.train()
    if not dropout:
        for m in module.modules():
            if not isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.training = False


def distill(
    student,
    teacher,
    inputs: dict[str, np.ndarray],
    labels: np.ndarray | None,
    specs: list[InputSpec],
    settings: DistillStep,
    loss: str,
    seed: int,
    layer_pairs: Sequence[tuple] = (),
) -> DistillResult:
    """Train `student` (in place) to match `teacher`; the best validation state is kept."""
    import time

    import torch
    from tqdm import tqdm

    fn = LOSSES[loss]
    threads = torch.get_num_threads()
    torch.set_num_threads(settings.threads)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    n = len(next(iter(inputs.values())))
    order = np.random.default_rng(seed).permutation(n)
    n_val = max(1, int(round(n * settings.validation_fraction))) if n > 1 else 0
    val_idx, train_idx = np.sort(order[:n_val]), order[n_val:]
    if len(train_idx) == 0:
        train_idx, val_idx = order, order[:0]
    steps_per_epoch = math.ceil(len(train_idx) / settings.batch_size)
    opt = torch.optim.AdamW(student.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=settings.lr, total_steps=max(1, settings.epochs * steps_per_epoch), pct_start=0.1
    )
    use_hidden = settings.hidden_states > 0 and layer_pairs
    s_cap = _Capture([p[0] for p in layer_pairs]) if use_hidden else None
    t_cap = _Capture([p[1] for p in layer_pairs]) if use_hidden else None
    teacher.eval()

    def step_loss(idx: np.ndarray, augment: bool):
        tensors, mask = _batch(inputs, specs, idx, gen, augment)
        with torch.no_grad():
            t_out = teacher(*tensors)
        s_out = student(*tensors)
        t0 = t_out[0] if isinstance(t_out, (tuple, list)) else t_out
        s0 = s_out[0] if isinstance(s_out, (tuple, list)) else s_out
        if loss == "kd":
            y = torch.from_numpy(labels[idx]).long() if labels is not None else None
            value = fn(s0, t0, y, settings.temperature, settings.alpha)
        else:
            value = fn(s0, t0)
        if use_hidden:
            value = value + settings.hidden_states * hidden_loss(s_cap.take(), t_cap.take(), mask)
        return value

    def validate() -> float:
        if len(val_idx) == 0:
            return float("nan")
        student.eval()
        total = 0.0
        with torch.no_grad():
            for i in range(0, len(val_idx), settings.batch_size):
                idx = val_idx[i : i + settings.batch_size]
                total += step_loss(idx, False).item() * len(idx)
        return total / len(val_idx)

    mask_all = inputs.get("attention_mask")
    lengths = mask_all.sum(1) if mask_all is not None and mask_all.ndim == 2 else None
    result = DistillResult(loss=loss, train_samples=len(train_idx), validation_samples=len(val_idx))
    start = time.perf_counter()
    best, best_state, stale = validate(), copy.deepcopy(student.state_dict()), 0
    result.history.append({"epoch": 0, "validation_loss": round(best, 6)})
    log.info(
        f"  distill ({loss} loss): {len(train_idx)} training / {len(val_idx)} validation samples, start {best:.5f}"
    )
    try:
        for epoch in range(1, settings.epochs + 1):
            _train_mode(student, settings.dropout)
            perm = train_idx[torch.randperm(len(train_idx), generator=gen).numpy()]
            total = 0.0
            bar = tqdm(
                _batches(perm, lengths, settings.batch_size, gen),
                desc=f"  epoch {epoch}/{settings.epochs}",
                leave=False,
                disable=not (log.enabled() and sys.stderr.isatty()),  # epoch lines in logs
                file=sys.stderr,
            )
            for idx in bar:
                value = step_loss(idx, settings.augment)
                opt.zero_grad()
                value.backward()
                opt.step()
                sched.step()
                total += value.item() * len(idx)
            val = validate()
            record = {"epoch": epoch, "train_loss": round(total / len(perm), 6), "validation_loss": round(val, 6)}
            result.history.append(record)
            better = not math.isnan(val) and val < best
            log.info(
                f"  epoch {epoch}/{settings.epochs}: train {record['train_loss']:.5f}, validation {val:.5f}"
                + (" (best)" if better else "")
            )
            if better or math.isnan(val):
                best, best_state, stale, result.best_epoch = val, copy.deepcopy(student.state_dict()), 0, epoch
            else:
                stale += 1
                # One-cycle LR is high in the first half: validation loss bounces there, so a stop
                # is only allowed in the second half (measured: a digits seed stopped at epoch 9 of 20).
                if stale >= settings.patience and epoch >= settings.epochs // 2:
                    result.stopped_early = True
                    log.info(
                        f"  early stop: no better validation loss for {stale} epochs (best: epoch {result.best_epoch})"
                    )
                    break
    finally:
        for cap in (s_cap, t_cap):
            if cap is not None:
                cap.close()
        torch.set_num_threads(threads)
    student.load_state_dict(best_state)
    student.eval()
    result.seconds = round(time.perf_counter() - start, 2)
    return result
