"""Structured pruning + distillation: the digits CNN (three seeds, against plain fine-tuning) and
all-MiniLM-L6-v2 (uniform vs Fisher-guided allocation), each pruned model timed side by side with
its unpruned teacher.

Digits (examples/digits-pruned.yaml): prune to the recipe's MAC goal, recover by distillation,
for seeds 0, 1, 2; top-1 on the fixed 600-image held-out split from the exported ONNX; the peer
is the same Torch-Pruning pruning followed by plain fine-tuning on the labels (no teacher), the
usual Torch-Pruning recipe, for the same epochs. MiniLM (examples/minilm-pruned.yaml): the recipe
(Fisher allocation of heads and FFN neurons) against the uniform allocation it replaced, both
distilled the same way on standard-library docstrings; mean cosine against the unpruned FP32
embeddings on the 256 held-out pydoc-topics sentences, from the FP32 ONNX the CPU target
ships, and the Fisher student with dynamic INT8 (what the CPU profile ships) as the chained figure.
Latency: FP32 ONNX, onnxruntime CPU, 1 thread, every model of a scenario timed round-robin in
one process (ratios, not absolute times, are the result: the machine is shared).

Every run trains from scratch (a private cache folder) unless --cache names a folder of students
already trained (by an earlier run or by `EDGEX_CACHE_DIR=... edgex build` of the same recipe). Run:
  .venv/bin/python benchmarks/pruning.py [--only digits|minilm] [--cache DIR] [--out benchmarks/PRUNING.md]
(digits ~8 min, MiniLM ~45 min on 2 cores: two students trained)
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import benchmarks.compression_common as common  # noqa: E402
from exporter.compress import compress  # noqa: E402
from exporter.pipeline import export_for as _export_for  # noqa: E402
from exporter.pipeline import prepare  # noqa: E402
from exporter.pipeline import student_context as _student_ctx  # noqa: E402
from exporter.targets import get_target  # noqa: E402

SEEDS = (0, 1, 2)


def _with_seed(ctx, seed: int, **recipe_updates):
    recipe = ctx.loaded.recipe.model_copy(update={"seed": seed, **recipe_updates})
    return dataclasses.replace(ctx, loaded=dataclasses.replace(ctx.loaded, recipe=recipe), compressed={})


def _fine_tune_peer(ctx, steps: list, work: Path, cache: dict, target):
    """Torch-Pruning's usual recipe: the same pruning, then plain fine-tuning on the labels."""
    distill = steps[1].distill.model_copy(update={"alpha": 0.0})  # alpha 0: cross-entropy only, no teacher
    peer_steps = [steps[0], type(steps[1])(distill=distill)]
    pctx = _with_seed(ctx, 0, compress=peer_steps)
    comp = compress(pctx, 8)
    sctx = _student_ctx(pctx, comp, cache)
    path, _ = _export_for(sctx, target, work, cache, tag="peer-finetune")
    return comp, path


def digits(work: Path) -> dict:
    ctx = prepare(ROOT / "examples" / "digits-pruned.yaml", ["raspberry-pi-5-cpu"])
    target = get_target("cpu")
    cache: dict = {}
    teacher, _ = _export_for(ctx, target, work, cache)
    paths = {"teacher": teacher}
    rows = []
    for seed in SEEDS:
        sctx = _with_seed(ctx, seed)
        comp = compress(sctx, 8)
        student_ctx = _student_ctx(sctx, comp, cache)
        path, _ = _export_for(student_ctx, target, work, cache, tag=f"seed{seed}")
        paths[f"seed {seed}"] = path
        rec = comp.record
        rows.append(
            {
                "name": f"seed {seed}",
                "macs": rec["student"]["macs"],
                "params": rec["student"]["params"],
                "after_prune": rec["steps"][0]["after"]["metric"],
                "metric": common.onnx_metric(ctx, path),
                "best_epoch": rec["steps"][1]["best_epoch"],
                "seconds": rec["steps"][1]["seconds"],
            }
        )
    peer, peer_path = _fine_tune_peer(ctx, ctx.loaded.recipe.compress, work, cache, target)
    paths["peer"] = peer_path
    rows.append(
        {
            "name": "peer: same pruning + plain fine-tuning",
            "macs": peer.record["student"]["macs"],
            "params": peer.record["student"]["params"],
            "after_prune": peer.record["steps"][0]["after"]["metric"],
            "metric": common.onnx_metric(ctx, peer_path),
            "best_epoch": peer.record["steps"][1]["best_epoch"],
            "seconds": peer.record["steps"][1]["seconds"],
        }
    )
    p50 = common.interleaved_p50(paths, ctx)
    base = {"macs": rows[0]["macs"], "teacher_macs": ctx_macs(ctx), "teacher_metric": common.onnx_metric(ctx, teacher)}
    for row in rows:
        key = row["name"] if row["name"] in p50 else "peer"
        row["p50_ms"] = p50[key]
        row["speedup"] = p50["teacher"] / p50[key]
    return {"teacher_p50_ms": p50["teacher"], "rows": rows, **base}


def ctx_macs(ctx) -> int:
    from exporter.compress.channels import costs

    example = tuple(__import__("torch").from_numpy(ctx.calibration.inputs[s.name][:1].copy()) for s in ctx.inputs)
    return costs(ctx.model.module, example)[0]


def _uniform_steps(steps: list) -> list:
    """The recipe before Fisher allocation: activation scores, the same FFN count in every layer,
    heads intact, 60% of the MACs (what measured ~1.5x then), the same distillation."""
    prune = steps[0].prune.model_copy(
        update={
            "criterion": "activation",
            "heads": False,
            "goal": steps[0].prune.goal.model_copy(update={"macs": 0.6}),
        }
    )
    return [type(steps[0])(prune=prune), steps[1]]


def minilm(work: Path) -> dict:
    import time

    ctx = prepare(ROOT / "examples" / "minilm-pruned.yaml", ["raspberry-pi-5-cpu"])
    target = get_target("cpu")
    cache: dict = {}
    teacher, _ = _export_for(ctx, target, work, cache)
    runs = {"uniform": _with_seed(ctx, ctx.loaded.recipe.seed, compress=_uniform_steps(ctx.loaded.recipe.compress))}
    runs["fisher"] = ctx
    rows, paths = {}, {"teacher": teacher}
    for name, rctx in runs.items():
        start = time.time()
        comp = compress(rctx, 8)
        wall = time.time() - start
        sctx = _student_ctx(rctx, comp, cache)
        paths[name], _ = _export_for(sctx, target, work, cache, tag=f"pruned-{name}")
        rec = comp.record
        prune = rec["steps"][0]
        rows[name] = {
            "record": {k: rec[k] for k in ("teacher", "student")},
            "after_prune": prune["after"]["metric"],
            "refit": prune.get("reconstruction"),
            "plan": prune["plan"],
            "criterion": prune["criterion"],
            "distill": {k: rec["steps"][1][k] for k in ("best_epoch", "seconds", "train_samples", "stopped_early")},
            "compress_seconds": None if rec["cache"]["hit"] else wall,
            "metric": common.onnx_metric(ctx, paths[name]),
        }
    # the chained figure: the Fisher student as the CPU profile ships it (dynamic INT8, what the
    # raspberry-pi-5-cpu build delivers), against the unpruned FP32
    from exporter.quant.dynamic import quantize_dynamic_int8
    from exporter.quant.shape_annotations import drop_shape_annotations

    paths["fisher + int8-dynamic"] = work / "fisher-int8-dynamic.onnx"
    quantize_dynamic_int8(paths["fisher"], paths["fisher + int8-dynamic"])
    drop_shape_annotations(paths["fisher + int8-dynamic"])  # as the build ships it (quant/shape_annotations.py)
    chained = {"metric": common.onnx_metric(ctx, paths["fisher + int8-dynamic"])}
    p50 = common.interleaved_p50(paths, ctx)
    for name, row in [*rows.items(), ("fisher + int8-dynamic", chained)]:
        row["p50_ms"] = p50[name]
        row["speedup"] = p50["teacher"] / p50[name]
    return {
        "teacher_p50_ms": p50["teacher"],
        "teacher_metric": common.onnx_metric(ctx, teacher),
        "rows": rows,
        "chained": chained,
    }


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), dpi=100)
    if "digits" in results:
        d, ax = results["digits"], axes[0]
        ax.scatter([1.0], [d["teacher_metric"] * 100], marker="o", label="unpruned (teacher)")
        for r in d["rows"]:
            peer = r["name"].startswith("peer")
            ax.scatter([r["speedup"]], [r["metric"] * 100], marker="x" if peer else "s", label=r["name"])
        common.label_axes(
            ax, "FP32 speed-up vs unpruned (1 thread)", "top-1 % (held-out)", "digits CNN: pruned + distilled"
        )
    if "minilm" in results:
        m, ax = results["minilm"], axes[1]
        ax.scatter([1.0], [1.0], marker="o", label="unpruned")
        for name, r in m["rows"].items():
            ax.scatter([r["speedup"]], [r["metric"]], marker="s", label=f"{name}: pruned + distilled")
            ax.scatter([r["speedup"]], [r["after_prune"]], marker="v", label=f"{name}: before distillation")
        if m.get("chained"):
            c = m["chained"]
            ax.scatter([c["speedup"]], [c["metric"]], marker="*", s=80, label="fisher + dynamic INT8 (CPU ship)")
        ax.axhline(0.95, color="grey", ls="--", lw=0.8)
        common.label_axes(
            ax,
            "FP32 speed-up vs unpruned (1 thread)",
            "mean cosine vs unpruned",
            "all-MiniLM-L6-v2: uniform vs Fisher allocation",
        )
    common.save_figure(fig, path)


def write(results: dict, out: Path) -> None:
    lines = [
        "# Structured pruning + distillation",
        "",
        "Generated by `.venv/bin/python benchmarks/pruning.py`; do not edit by hand. Latency: FP32 ONNX, onnxruntime "
        "CPU, 1 thread, p50, models of a scenario timed round-robin in one process (ratios are the result).",
        "",
        common.host_line(),
        "",
        "![pruning](pruning_curve.png)",
        "",
    ]
    if "digits" in results:
        d = results["digits"]
        seeds = [r for r in d["rows"] if r["name"].startswith("seed")]
        acc = np.array([r["metric"] for r in seeds]) * 100
        spd = np.array([r["speedup"] for r in seeds])
        lines += [
            "## Digits CNN (examples/digits-pruned.yaml)",
            "",
            f"Unpruned: top-1 {d['teacher_metric'] * 100:.2f}%, {d['teacher_macs']:,} MACs, p50 {d['teacher_p50_ms']:.3f} ms.",
            "",
            "| model | MACs | MACs fewer | params | top-1 after pruning | top-1 after recovery | drop (pt) | p50 ms | speed-up | best epoch | train s |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in d["rows"]:
            lines.append(
                f"| {r['name']} | {r['macs']:,} | {d['teacher_macs'] / r['macs']:.2f}x | {r['params']:,} | "
                f"{r['after_prune'] * 100:.2f}% | {r['metric'] * 100:.2f}% | "
                f"{(d['teacher_metric'] - r['metric']) * 100:+.2f} | {r['p50_ms']:.3f} | {r['speedup']:.2f}x | "
                f"{r['best_epoch']} | {r['seconds']:.0f} |"
            )
        lines += [
            "",
            f"Seeds {', '.join(map(str, SEEDS))}: top-1 {acc.mean():.2f}% ± {acc.std():.2f} (spread {acc.max() - acc.min():.2f} pt), "
            f"drop {d['teacher_metric'] * 100 - acc.mean():+.2f} pt; speed-up {spd.mean():.2f}x (min {spd.min():.2f}x).",
            "",
        ]
    if "minilm" in results:
        m = results["minilm"]
        teacher = next(iter(m["rows"].values()))["record"]["teacher"]
        lines += [
            "## all-MiniLM-L6-v2 (examples/minilm-pruned.yaml)",
            "",
            "Mean cosine against the unpruned FP32 embeddings on the 256 held-out pydoc-topics sentences. "
            "`uniform`: the allocation before Fisher (activation scores, the same FFN count in every "
            "layer, heads intact, 60% of the MACs), with the recipe's other settings; `fisher`: the recipe (heads and neurons scored by the "
            "Fisher information of their masks, allocated across layers under the MAC goal). Same distillation.",
            "",
            "| model | encoder MACs | params | cosine before distillation | cosine after | p50 ms | speed-up | "
            "distillation s | compression s (2 cores) |",
            "|---|---|---|---|---|---|---|---|---|",
            f"| unpruned | {teacher['macs']:,} | {teacher['params']:,} | — | {m['teacher_metric']:.4f} | "
            f"{m['teacher_p50_ms']:.2f} | 1.00x | — | — |",
        ]
        notes = []
        for name, r in m["rows"].items():
            st, d = r["record"]["student"], r["distill"]
            wall = "cached" if r["compress_seconds"] is None else f"{r['compress_seconds']:.0f}"
            lines.append(
                f"| {name} | {st['macs']:,} | {st['params']:,} | {r['after_prune']:.4f} | {r['metric']:.4f} | "
                f"{r['p50_ms']:.2f} | {r['speedup']:.2f}x | {d['seconds']:.0f} | {wall} |"
            )
            plan = r["plan"]
            heads = {k: len(v) for k, v in plan["prune_heads"].items()}
            refit = r["refit"]
            refit_text = (
                "not run (reconstruct: false)"
                if not refit
                else f"{'kept' if refit['kept'] else 'reverted'} (held-out calibration cosine "
                f"{refit['held_out_cosine_before']:.4f} -> {refit['held_out_cosine_after']:.4f})"
            )
            notes.append(
                f"- {name}: heads removed per layer {heads or 'none'}; FFN neurons kept per layer "
                f"{[len(v) for v in plan['keep_ffn'].values()]}; least-squares refit {refit_text}; "
                f"distillation {d['train_samples']} sentences, best epoch {d['best_epoch']}."
            )
        c = m["chained"]
        lines += [
            "",
            f"Chained: the Fisher student with dynamic INT8 (what the raspberry-pi-5-cpu build ships) runs "
            f"{c['speedup']:.2f}x faster than the unpruned FP32 ({c['p50_ms']:.2f} ms, same interleaved run) at "
            f"cosine {c['metric']:.4f} against the unpruned embeddings.",
            "",
            *notes,
            "",
        ]
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--only", choices=["digits", "minilm"])
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "PRUNING.md")
    ap.add_argument("--cache", type=Path, help="reuse students trained into this cache folder (default: train afresh)")
    args = ap.parse_args()
    common.run_scenarios(
        {"digits": digits, "minilm": minilm}, args.only, args.out, args.cache, plot, "pruning_curve.png", write
    )


if __name__ == "__main__":
    main()
