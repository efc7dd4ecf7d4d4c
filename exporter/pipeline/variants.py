"""Producing the variants of one profile: the FP32 export, the compressed model, one file per precision.

Every produced file is cached for the build under a `StepKey` (what determines its bytes), so two
profiles whose targets ask for the same export or the same quantization share one file.
Precisions come from the registry (`exporter.quant.precisions`), as in `edgex quantize`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import traceback
from pathlib import Path

import numpy as np

from exporter import log
from exporter.errors import EdgexError, UsageError, clip, describe_exception
from exporter.export import check_parity, export_model
from exporter.pipeline.context import Context, evaluator, query_feed
from exporter.profiles import DeviceProfile
from exporter.quant.precisions import REGISTRY, Handler, Request, RunInputs, StepKey, evaluation_mode, planned
from exporter.runtime import host_threads, make_session
from exporter.targets import Target, get_target

Artifacts = dict[str, tuple]  # name -> (file, precision, produced_by, parent), in lineage order
FP32_VARIANTS = ("baseline", "compressed")  # every other variant is made from and judged against these


def export_for(
    ctx: Context, target: Target, work: Path, cache: dict, fusion: str = "full", tag: str = "baseline"
) -> tuple[Path, dict]:
    """fusion: "full" (the fastest FP32 graph), "for-int8" (static INT8 input: see hf.optimize.fuse) or
    "none" (INT4 input); only transformers on targets that run contrib ops are fused at all.
    tag names the model exported (the source model, or a compressed one)."""
    if fusion == "full" and ctx.model.kind == "hf" and target.contrib_ops:
        return _fastest_fp32_graph(ctx, target, work, cache, tag)
    return _export(ctx, target, work, cache, fusion, tag)


# the fused graph must beat the plain one by this much to ship: ties keep the graph every runtime loads
FUSION_MARGIN = 0.03


def _fastest_fp32_graph(ctx: Context, target: Target, work: Path, cache: dict, tag: str) -> tuple[Path, dict]:
    """The transformer fusions are not always faster: onnxruntime's fused Attention ran MiniLM 7%
    slower than the plain graph at one thread on an x86 host, and a Fisher-pruned MiniLM 16%
    slower (onnxruntime already fuses LayerNorm and Gelu at load time). Both graphs are timed side
    by side at one thread (the repeatable figure) and the faster ships; the race is reported."""
    from exporter.measure import time_interleaved
    from exporter.recipe import BenchSection

    dims = "x".join(str(d) for d in ctx.inputs[0].shape)
    key = StepKey("fusion-race", tag, json.dumps([target.opset.export, target.static_shapes, dims]))
    if key not in cache:
        fused = _export(ctx, target, work, cache, "full", tag)
        if not fused[1].get("fused_ops"):  # nothing fused (a model type the optimizer does not know)
            cache[key] = fused
            return fused
        plain = _export(ctx, target, work, cache, "none", tag)
        replayed = ctx.replay.fusion_race("baseline" if tag == "baseline" else "compressed") if ctx.replay else None
        race: dict = {"threads": 1, "margin": FUSION_MARGIN, "fused_ops": fused[1]["fused_ops"]}
        if replayed is not None:
            race.update(kept=replayed, replayed=True)
        else:
            log.info(f"[{ctx.loaded.recipe.name}] time the fused and the plain FP32 graph side by side (1 thread)")
            settings = BenchSection(warmup_runs=3, min_runs=20, min_seconds=0.5, max_seconds=3.0)
            stats = time_interleaved({"fused": fused[0], "plain": plain[0]}, query_feed(ctx), 1, settings, rounds=3)
            f_ms, p_ms = stats["fused"].percentile(50), stats["plain"].percentile(50)
            kept = "fused" if f_ms < (1 - FUSION_MARGIN) * p_ms else "plain"
            race.update(fused_p50_ms=round(f_ms, 4), plain_p50_ms=round(p_ms, 4), kept=kept)
        path, info = fused if race["kept"] == "fused" else plain
        info = {**info, "fusion_race": race}
        if race["kept"] == "plain":
            info["fusion"] = (
                "onnxruntime.transformers fusions not kept: the fused graph was not "
                f"{FUSION_MARGIN:.0%} faster than the plain one (1 thread, side by side on this host; see fusion_race)"
            )
        cache[key] = (path, info)
    return cache[key]


def _export(ctx: Context, target: Target, work: Path, cache: dict, fusion: str, tag: str) -> tuple[Path, dict]:
    r = ctx.loaded.recipe
    static = target.static_shapes
    fuse = ctx.model.kind == "hf" and target.contrib_ops and fusion != "none"
    for_int8 = fusion == "for-int8"
    dims = "x".join(str(d) for d in ctx.inputs[0].shape)
    key = StepKey("export", tag, json.dumps([target.opset.export, static, fuse, for_int8, dims]))
    if key not in cache:
        shapes = "static" if static else "dynamic"
        suffix = ("-fused-for-int8" if for_int8 else "-fused") if fuse else ""
        path = work / f"{tag}-op{target.opset.export}-{shapes}-{dims}{suffix}.onnx"
        log.info(
            f"[{r.name}] export FP32 ONNX (opset {target.opset.export}, {shapes} shapes"
            f"{(', fused for INT8' if for_int8 else ', fused') if fuse else ''})"
        )
        info = export_model(
            ctx.model,
            ctx.inputs,
            r.outputs,
            target.opset.export,
            (target.opset.min, target.opset.max),
            static,
            path,
            fuse,
            for_int8,
        )
        worst, n = check_parity(path, ctx.evaluation.inputs, ctx.reference, feeding=ctx.evaluation.feeding)
        parity = {"samples": n, "max_abs_diff": worst, "rtol": 1e-3, "atol": 1e-4, "ok": True}
        cache[key] = (path, {"step": "export", "static_shapes": static, **info, "parity": parity})
    return cache[key]


def quantized(
    ctx: Context,
    handler: Handler,
    target: Target,
    source: Path,
    work: Path,
    cache: dict,
    budget: float,
    label: str,
    baseline: Path,
    isa: frozenset[str] | None = None,
) -> tuple[Path, dict]:
    """One precision's variant of `source` (cached by the handler's key): (file, produced_by)."""
    r = ctx.loaded.recipe
    request = Request(source, target, r.quantize, budget, transformer=ctx.model.kind == "hf", isa=isa)
    key = handler.key(request)
    if key in cache and isinstance(cache[key], BaseException):
        raise cache[key]  # failed for an earlier profile with the same key: not retried
    if key not in cache:
        run = RunInputs(ctx.calibration, ctx.inputs[0].shape[0], r.seed, label=label)
        if handler.searched:
            run = dataclasses.replace(
                run,
                evaluate=evaluator(ctx, evaluation_mode(target), host_threads(2), r.quantize.search.samples),
                speed_feed=query_feed(ctx),
                speed_baseline=baseline,
                speed_replay=ctx.replay.speed_guard(label) if ctx.replay is not None else None,
                race_replay=ctx.replay.preset_race(label) if ctx.replay is not None else None,
            )
        log.info(handler.describe(request, run))
        try:
            produced = handler.run(request, run, work / handler.file_name(request, key))
        except Exception as exc:  # recorded for the next profile with the same key
            if not isinstance(exc, UsageError):  # a wrong recipe is fatal and fails alike for every key
                cache[key] = exc
            raise
        cache[key] = (produced.path, produced.record)
    path, record = cache[key]
    return path, dict(record)


def student_context(ctx: Context, compressed, cache: dict) -> Context:
    """The context to export the compressed model with: its own PyTorch outputs are its parity
    reference (quality is still judged against the source model's)."""
    from exporter.export import torch_reference

    key = StepKey("student-reference", compressed.record["cache"]["key"], json.dumps(list(ctx.inputs[0].shape)))
    if key not in cache:
        cache[key] = torch_reference(compressed.model.module, ctx.evaluation.inputs, ctx.inputs)
    return dataclasses.replace(ctx, model=compressed.model, reference=cache[key], shapes={}, compressed={})


def _strictest_alignment(ctx: Context) -> int:
    align = 1
    for profile in ctx.profiles:
        align = math.lcm(align, get_target(profile.target).channel_multiple)
    return align


def compressed_for(ctx: Context, profile: DeviceProfile):
    """The recipe's compression for this profile: once per recipe (aligned to the strictest target
    of its profiles), or per profile when a prune step aims at the profile's latency budget."""
    from exporter.compress import compress, per_profile

    r = ctx.loaded.recipe
    if not r.compress:
        return None
    latency = None
    align = _strictest_alignment(ctx)
    if per_profile(r):
        align = get_target(profile.target).channel_multiple
        pct = profile.budgets.latency.percentile
        latency = {
            "budget_ms": profile.budgets.latency.max_ms,
            "percentile": pct,
            "threads": host_threads(profile.threads),
        }
    explicit = [s.settings.align for s in r.compress if s.kind in ("prune", "lowrank") and s.settings.align]
    align = explicit[0] if explicit else align
    key = (align, json.dumps(latency, sort_keys=True), tuple(tuple(i.shape) for i in ctx.inputs))
    if key not in ctx.compressed:
        ctx.compressed[key] = compress(ctx, align, latency)
    return ctx.compressed[key]


def failure_record(name: str, precision: str, parent: str | None, step: str, exc: BaseException, label: str) -> dict:
    """The manifest's record of a variant that failed (`profiles[].failed_variants[]`), logged as it happens.

    The step is the one the error names (an InternalError's own) or the pipeline's; the file is the
    name of the file edgex was writing, never a temporary folder's path."""
    step = getattr(exc, "step", None) or step
    reason = getattr(exc, "reason", None) or (
        exc.one_line() if isinstance(exc, EdgexError) else describe_exception(exc)
    )
    failed = {"step": step, "error": " ".join(str(reason).split())}
    if getattr(exc, "file", None) is not None:
        failed["file"] = Path(str(exc.file)).name
    log.info(
        f"[{label}] {name} FAILED in step '{step}': {clip(failed['error'], 400)}; recorded in the manifest, "
        "the build goes on with the other variants"
    )
    log.debug("".join(traceback.format_exception(exc)))
    return {"name": name, "precision": precision, "parent": parent, "failed": failed}


def produce_variants(
    ctx: Context,
    target: Target,
    work: Path,
    cache: dict,
    budget: float,
    label: str,
    compressed=None,
    isa: frozenset[str] | None = None,
) -> tuple[Artifacts, dict[str, dict]]:
    """(name -> (file, precision, produced_by, parent) in lineage order, name -> failure record).

    With compression, the quantized variants are made from the compressed model (parent
    `compressed`). A precision that fails (onnxruntime's quantizer refusing the graph, a 16-bit
    step, a file that does not load) is recorded and skipped: the FP32 export and every other
    variant are kept. Only a UsageError (the recipe is wrong) stops the build, and an FP32 export
    that fails, since every variant is judged against it. `isa`: the device's instruction set
    (profile soc.isa), which picks the static INT8 presets raced on a CPU target."""
    r = ctx.loaded.recipe
    fp32_work, export_info = export_for(ctx, target, work, cache)
    artifacts: Artifacts = {"baseline": (fp32_work, "fp32", export_info, None)}
    qctx, parent, tag = ctx, "baseline", "baseline"
    if compressed is not None:
        tag = f"compressed-{compressed.record['cache']['key'][:10]}"
        qctx = student_context(ctx, compressed, cache)
        fp32_work, info = export_for(qctx, target, work, cache, tag=tag)
        produced_by = {
            "step": "compress",
            "steps": [s["step"] for s in compressed.record["steps"]],
            "cache_key": compressed.record["cache"]["key"],
            **info,
        }
        artifacts["compressed"] = (fp32_work, "fp32", produced_by, "baseline")
        parent = "compressed"
    failures: dict[str, dict] = {}
    if not r.quantize.enabled:
        return artifacts, failures
    for handler in planned(r.quantize, target):
        source = fp32_work
        step = "export the graph to quantize"
        try:
            # Transformers on contrib-op targets start from their own graph: static INT8 from the unfused
            # Attention/Gelu graph, INT4 from the plain MatMul/Gather one (hf.optimize.fuse).
            if handler.graph != "full" and ctx.model.kind == "hf" and target.contrib_ops:
                source, _ = export_for(qctx, target, work, cache, fusion=handler.graph, tag=tag)
            step = f"quantize {handler.variant}"
            path, produced_by = quantized(ctx, handler, target, source, work, cache, budget, label, fp32_work, isa)
        except UsageError:
            raise
        except Exception as exc:  # EdgexError included: a gate on one variant does not stop the others
            failures[handler.variant] = failure_record(handler.variant, handler.precision, parent, step, exc, label)
            continue
        artifacts[handler.variant] = (path, handler.precision, produced_by, parent)
    return artifacts, failures


def ordered_failures(failures: dict[str, dict]) -> list[dict]:
    """Failure records in variant order (the registry's), whichever step each failed in."""
    order = list(REGISTRY)
    return [failures[n] for n in sorted(failures, key=lambda n: order.index(n) if n in order else len(order))]


def discard_variant(folder: Path, name: str) -> None:
    """Remove what a failed variant left in the release folder (its .onnx, .ort, operator config):
    the release holds only what its manifest describes as shipped or measured."""
    for path in folder.glob(f"{name}.*"):
        if path.is_file():
            path.unlink()


def smoke_run(path: Path, feed: dict[str, np.ndarray], threads: int, name: str) -> None:
    """Load PATH and run it once, as the timing will: a variant that cannot is recorded as failed
    here instead of stopping the interleaved timing of all the others."""
    session = make_session(path, threads)
    session.run(None, {i.name: feed[i.name] for i in session.get_inputs() if i.name in feed})
