"""Train the detector example and write examples/weights/shapes_detector.safetensors.

Fresh rendered images every epoch (seeds from 100 on, never the calibration or evaluation seeds),
centre-sampling assignment (an anchor is positive for a box when its cell centre lies inside the
box and within 2.5 strides of its centre; the smallest box wins a tie), IoU + L1 box loss and BCE
class loss, as anchor-free YOLO trainers do in spirit. Seeded and single-process; on the same
versions a rerun reproduces the committed weights' held-out mAP.
Run: python examples/train_detector.py [--epochs 24] [--images 1600] [--out PATH]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).parent))
from shapes_data import EVALUATION_SEED, render  # noqa: E402
from shapes_detector import WEIGHTS, ShapesDetector  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent.parent))
from exporter.task_metrics import decode_yolo, map_at  # noqa: E402


def assign(model: ShapesDetector, labels: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per image: the class target [N, C, A], the box each anchor regresses [N, A, 4] and a positive mask [N, A]."""
    pts, strides = model.points.T, model.strides[0]  # [A, 2], [A]
    n, a = len(labels), pts.shape[0]
    cls_t = torch.zeros(n, model.cls[0][-1].out_channels, a)
    box_t = torch.zeros(n, a, 4)
    pos = torch.zeros(n, a, dtype=torch.bool)
    for i, rows in enumerate(labels):
        rows = torch.from_numpy(rows[~np.isnan(rows).all(1)])
        if not len(rows):
            continue
        b = rows[:, 1:]  # [G, 4]
        centre = (b[:, :2] + b[:, 2:]) / 2
        inside = (pts[:, None, :] > b[None, :, :2]).all(-1) & (pts[:, None, :] < b[None, :, 2:]).all(-1)
        near = (pts[:, None, :] - centre[None]).abs().amax(-1) < 2.5 * strides[:, None]
        ok = inside & near  # [A, G]
        area = ((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]))[None].expand(a, -1)
        best = torch.where(ok, area, torch.full_like(area, float("inf"))).argmin(1)
        has = ok.any(1)
        pos[i] = has
        box_t[i] = b[best]
        cls_t[i, rows[best, 0].long()[has], has.nonzero().flatten()] = 1.0
    return cls_t, box_t, pos


def loss_fn(model: ShapesDetector, images: torch.Tensor, labels: np.ndarray) -> torch.Tensor:
    dist, logits = model.raw(images)
    cls_t, box_t, pos = assign(model, labels)
    n_pos = max(int(pos.sum()), 1)
    cls_loss = F.binary_cross_entropy_with_logits(logits, cls_t, reduction="sum") / n_pos
    pts = model.points.T[None].expand(len(images), -1, -1)  # [N, A, 2]
    d = dist.transpose(1, 2)[pos]  # [P, 4] left, top, right, bottom
    p, t = pts[pos], box_t[pos]
    pred = torch.cat([p - d[:, :2], p + d[:, 2:]], 1)
    wh = (torch.minimum(pred[:, 2:], t[:, 2:]) - torch.maximum(pred[:, :2], t[:, :2])).clamp(min=0)
    inter = wh[:, 0] * wh[:, 1]
    union = (pred[:, 2:] - pred[:, :2]).prod(1) + (t[:, 2:] - t[:, :2]).prod(1) - inter
    iou_loss = (1 - inter / union.clamp(min=1e-6)).sum() / n_pos
    target_d = torch.cat([p - t[:, :2], t[:, 2:] - p], 1)
    stride = model.strides[0][None].expand(len(images), -1)[pos][:, None]
    l1 = F.smooth_l1_loss(d / stride, target_d / stride, reduction="sum") / n_pos
    return cls_loss + 2.0 * iou_loss + 0.5 * l1


def held_out_map(model: ShapesDetector, images: np.ndarray, labels: np.ndarray) -> float:
    model.eval()
    with torch.no_grad():
        out = torch.cat([model(torch.from_numpy(images[i : i + 50])) for i in range(0, len(images), 50)]).numpy()
    truths = [rows[~np.isnan(rows).all(1)] for rows in labels]
    return map_at(decode_yolo(out), truths, 0.5)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--epochs", type=int, default=24)
    ap.add_argument("--images", type=int, default=1600, help="fresh images rendered per epoch")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=WEIGHTS)
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    model = ShapesDetector()
    eval_x, eval_y = render(200, EVALUATION_SEED)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=5e-4)
    batch = 32
    steps = args.epochs * ((args.images + batch - 1) // batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps, pct_start=0.15)
    for epoch in range(args.epochs):
        model.train()
        t0 = time.time()
        x, y = render(args.images, 100 + epoch)
        xt = torch.from_numpy(x)
        total = 0.0
        for i in range(0, len(xt), batch):
            loss = loss_fn(model, xt[i : i + batch], y[i : i + batch])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(xt[i : i + batch])
        score = held_out_map(model, eval_x, eval_y) if epoch % 4 == 3 or epoch == args.epochs - 1 else float("nan")
        print(
            f"epoch {epoch + 1}/{args.epochs} loss {total / len(xt):.4f} held-out mAP@0.5 {score:.4f} "
            f"({time.time() - t0:.1f} s)",
            file=sys.stderr,
            flush=True,
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    meta = {"seed": str(args.seed), "epochs": str(args.epochs), "heldout_map50": f"{score:.4f}"}
    save_file(state, str(args.out), metadata=meta)
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
