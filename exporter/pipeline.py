"""The build: recipe -> load -> (compress) -> export -> quantize -> bench -> verdict -> manifest + report.

Each stage takes plain data and returns plain data; this module only sequences them and records
what each did. Export and quantization are shared between profiles whose target asks for the
same thing (same opset, shape policy and preset), and their bytes are copied per profile.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from exporter import log
from exporter.bench.affinity import plan as affinity_plan
from exporter.bench.estimate import estimate
from exporter.bench.latency import bootstrap_interval
from exporter.bench.verdicts import judge, judge_preflight, overall
from exporter.data import Dataset, load_dataset
from exporter.digest import sha256_file
from exporter.errors import GateFailure, UsageError
from exporter.export import check_parity, export_model, torch_reference
from exporter.graph_stats import inspect_model
from exporter.manifest import build_manifest, write_manifest
from exporter.measure import measure_variants
from exporter.metrics import accuracy_drop, extra_metrics, needs_labels, resolve_metric
from exporter.numerics import guard_produced
from exporter.profiles import DeviceProfile, get_profiles
from exporter.quant.calibration import batches
from exporter.quant.dynamic import quantize_dynamic_int8
from exporter.quant.fp16 import convert_fp16
from exporter.quant.weight_only import quantize_int4
from exporter.quantize import QuantizeResult, quantize_int8
from exporter.recipe import BenchSection, InputSpec, LoadedRecipe, load_recipe
from exporter.report import write_report
from exporter.runtime import host_threads, make_session, run_all
from exporter.sources import LoadedModel, load_model
from exporter.staging import check_output, staged_output
from exporter.targets import Target, get_target

PACKAGE_BENCH = BenchSection(warmup_runs=3, min_runs=20, min_seconds=0.2, max_seconds=5.0)


@dataclass
class Context:
    """Everything loaded once per build and shared by every profile."""

    loaded: LoadedRecipe
    profiles: list[DeviceProfile]
    calibration: Dataset
    evaluation: Dataset
    model: LoadedModel
    inputs: list[InputSpec]
    reference: list[np.ndarray]
    metric_name: str
    metric_fn: object
    higher_is_better: bool
    baseline_metric: float
    shapes: dict = field(default_factory=dict, repr=False)  # (batch, seq) -> Context, per-profile shapes
    compressed: dict = field(default_factory=dict, repr=False)  # (align, latency) -> compress.Compressed
    replay: object = None  # replay.Replay: timing-based decisions taken from an earlier manifest


def _reference(ctx: Context) -> Context:
    """Outputs of the source model on the evaluation set: the FP32 truth every variant is judged against."""
    r = ctx.loaded.recipe
    log.info(f"[{r.name}] reference outputs of the source model on {len(ctx.evaluation)} evaluation samples")
    if ctx.model.kind == "onnx":
        ctx.reference = run_all(make_session(ctx.model.onnx_path), ctx.evaluation.inputs)
    else:
        ctx.reference = torch_reference(ctx.model.module, ctx.evaluation.inputs, ctx.inputs)
    for i, out in enumerate(ctx.reference):
        if np.issubdtype(out.dtype, np.floating) and not np.isfinite(out).all():
            raise GateFailure(f"the source model's output {i} contains NaN/Inf on the evaluation set")
    ctx.baseline_metric = float(ctx.metric_fn(ctx.reference[0], ctx.evaluation.labels, ctx.reference[0]))
    return ctx


def _load_data(loaded: LoadedRecipe, model: LoadedModel, inputs: list[InputSpec]) -> tuple[Dataset, Dataset]:
    r = loaded.recipe
    tokenizer = model.hf.tokenizer if model.hf is not None else None
    calibration = load_dataset(r.data.calibration, inputs, loaded, "data.calibration", tokenizer)
    evaluation = load_dataset(r.data.evaluation, inputs, loaded, "data.evaluation", tokenizer)
    batch = inputs[0].shape[0]
    if r.quantize.enabled and len(calibration) < batch:
        raise UsageError(
            f"{len(calibration)} calibration samples for a batch of {batch}",
            path=loaded.path,
            field="data.calibration",
            fix=f"give at least {batch} samples",
        )
    return calibration, evaluation


def for_profile(ctx: Context, profile: DeviceProfile) -> Context:
    """The context in this profile's input shape: the recipe's, or an hf `per_profile` override
    (data re-tokenized at that length and a reference computed for it, once per shape)."""
    spec = ctx.loaded.recipe.model
    override = getattr(spec, "per_profile", {}).get(profile.id)
    if override is None:
        return ctx
    batch = override.batch or spec.batch
    seq = override.sequence_length or spec.sequence_length
    key = (batch, seq)
    if key == (spec.batch, spec.sequence_length):
        return ctx
    if key not in ctx.shapes:
        inputs = [i.model_copy(update={"shape": [batch, seq]}) for i in ctx.inputs]
        calibration, evaluation = _load_data(ctx.loaded, ctx.model, inputs)
        shaped = dataclasses.replace(ctx, inputs=inputs, calibration=calibration, evaluation=evaluation, shapes={})
        ctx.shapes[key] = _reference(shaped)
    return ctx.shapes[key]


def prepare(
    recipe_path: str | Path,
    profiles: list[str] | None = None,
    profiles_dirs: tuple[Path, ...] | list[Path] = (),
    with_reference: bool = True,
) -> Context:
    """Load and validate everything a build needs, before any file is written.

    `edgex validate` stops here with with_reference=False: everything checked, nothing computed.
    """
    loaded = load_recipe(recipe_path)
    r = loaded.recipe
    ids = list(profiles) if profiles else r.profiles
    where = "--profile" if profiles else loaded.path
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise UsageError(
            f"profile(s) {', '.join(dupes)} listed twice", path=where, field="profiles", fix="list each profile once"
        )
    chosen = get_profiles(ids, profiles_dirs, where=where)
    for profile in chosen:
        target = get_target(profile.target)
        for precision in r.quantize.precisions if r.quantize.enabled else ["fp32"]:
            target.refuse_precision(precision, loaded.path, profile.id)
    if r.model.source == "hf":
        log.info(f"[{r.name}] load the Hugging Face folder and export it with optimum")
        unknown = sorted(set(r.model.per_profile) - set(r.profiles) - set(ids))
        if unknown:
            raise UsageError(
                f"per_profile names {unknown}, not profiles of this recipe",
                path=loaded.path,
                field="model.per_profile",
                fix="use ids from `profiles:`",
            )
    model = load_model(loaded)
    inputs = r.inputs if r.inputs is not None else model.hf.inputs
    calibration, evaluation = _load_data(loaded, model, inputs)
    metric_name, metric_fn, higher = resolve_metric(r.metric, loaded.path)
    needs_labels(metric_name, evaluation.labels, loaded.path)
    ctx = Context(loaded, chosen, calibration, evaluation, model, inputs, [], metric_name, metric_fn, higher, 0.0)
    if r.compress:
        from exporter.compress import check_steps

        check_steps(ctx)
    return _reference(ctx) if with_reference else ctx


def _feed(ctx: Context) -> dict[str, np.ndarray]:
    """One query in the recipe's shape, taken from real evaluation data."""
    return {s.name: ctx.evaluation.inputs[s.name][: s.shape[0]] for s in ctx.inputs}


def _export_for(
    ctx: Context, target: Target, work: Path, cache: dict, fusion: str = "full", tag: str = "baseline"
) -> tuple[Path, dict]:
    """fusion: "full" (the fastest FP32 graph), "for-int8" (static INT8 input: see hf.optimize.fuse) or
    "none" (INT4 input); only transformers on targets that run contrib ops are fused at all.
    tag names the model exported (the source model, or a compressed one)."""
    r = ctx.loaded.recipe
    static = target.static_shapes
    fuse = ctx.model.kind == "hf" and target.contrib_ops and fusion != "none"
    for_int8 = fusion == "for-int8"
    dims = "x".join(str(d) for d in ctx.inputs[0].shape)
    key = ("export", tag, target.opset.export, static, fuse, for_int8, dims)
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
        worst, n = check_parity(path, ctx.evaluation.inputs, ctx.reference)
        parity = {"samples": n, "max_abs_diff": worst, "rtol": 1e-3, "atol": 1e-4, "ok": True}
        cache[key] = (path, {"step": "export", "static_shapes": static, **info, "parity": parity})
    return cache[key]


def _evaluator(ctx: Context, mode: str, threads: int, samples: int | None = None):
    """path -> accuracy drop on the evaluation set (or a seeded subset of it), computed as the
    target's runtime computes it; the subset's FP32 metric is the baseline of its drops."""
    from exporter.measure import evaluate_outputs

    n = len(ctx.evaluation)
    idx = (
        np.arange(n) if samples is None or samples >= n else np.sort(np.random.default_rng(0).choice(n, samples, False))
    )
    inputs = {k: v[idx] for k, v in ctx.evaluation.inputs.items()}
    labels = None if ctx.evaluation.labels is None else ctx.evaluation.labels[idx]
    reference = ctx.reference[0][idx]
    baseline = float(ctx.metric_fn(reference, labels, reference))

    def evaluate(path: Path) -> float:
        out = evaluate_outputs(path, inputs, threads, path.stem, mode)
        value = float(ctx.metric_fn(out[0], labels, reference))
        return accuracy_drop(baseline, value, ctx.higher_is_better)

    return evaluate


def _quantize_for(
    ctx: Context, target: Target, fp32: Path, work: Path, cache: dict, budget: float, label: str, baseline: Path
) -> QuantizeResult:
    r = ctx.loaded.recipe
    preset = target.quantization
    if ctx.model.kind == "hf" and preset.transformer_op_types is not None:
        preset = preset.model_copy(update={"op_types": preset.transformer_op_types})
    deployed = target.execution_provider == "CPUExecutionProvider"
    static_fields = preset.model_dump(exclude={"precisions", "dynamic", "int4_format", "transformer_op_types"})
    settings = json.dumps([static_fields, r.quantize.model_dump(), budget, deployed], sort_keys=True)
    key = ("int8", fp32.name, settings)
    if key not in cache:
        digest = hashlib.sha256(settings.encode()).hexdigest()[:10]
        log.info(
            f"[{label}] quantize INT8 for {target.id} ({preset.format}, {preset.activation_type}/"
            f"{preset.weight_type}, per-channel {preset.per_channel}, {r.quantize.calibration_method}, "
            f"{min(r.quantize.calibration_samples, len(ctx.calibration))} samples)"
        )
        batch = ctx.inputs[0].shape[0]
        mode = "deployed" if deployed else "simulated"
        cache[key] = quantize_int8(
            fp32,
            work / f"int8-{digest}.onnx",
            ctx.calibration,
            r.quantize,
            preset,
            batch,
            r.seed,
            evaluate=_evaluator(ctx, mode, host_threads(2), r.quantize.search.samples),
            budget=budget,
            # The speed guard times host kernels: meaningful only where the host runs the target's own.
            speed_feed=_feed(ctx) if deployed else None,
            speed_baseline=baseline,
            label=label,
            speed_replay=ctx.replay.speed_guard(label) if ctx.replay is not None else None,
        )
    return cache[key]


def _variant_record(
    ctx: Context,
    name: str,
    path: Path,
    rel: str,
    precision: str,
    meas,
    produced_by: dict,
    parent: str | None,
    profile: DeviceProfile,
    threads: int,
    max_drop: float,
    mode: str,
) -> dict:
    stats = inspect_model(path, {i.name: list(i.shape) for i in ctx.inputs})
    value = float(ctx.metric_fn(meas.outputs[0], ctx.evaluation.labels, ctx.reference[0]))
    drop = accuracy_drop(ctx.baseline_metric, value, ctx.higher_is_better)
    pct = profile.budgets.latency.percentile
    lat = meas.latency
    interval = bootstrap_interval(lat.samples, pct)
    rate = profile.budgets.average_power.rate_hz if profile.budgets.average_power else None
    target = get_target(profile.target)
    # INT4 is weight-only: its products run as int8 (accuracy_level 4) or float, estimated as int8.
    compute = target.float_compute if precision == "fp32" else {"int4": "int8"}.get(precision, precision)
    device = estimate(path, compute, lat.p50, threads, profile.estimates, rate)
    verdicts = judge(
        profile.budgets,
        latency_ms=lat.percentile(pct),
        peak_memory_mb=meas.memory["session_mb"],
        size_mb=stats["bytes"] / 1e6,
        accuracy_drop=drop,
        max_accuracy_drop=max_drop,
        estimate=device,
        latency_interval=interval,
        measured=meas.power,
    )
    half = (interval[1] - interval[0]) / 2
    if verdicts and verdicts[0].decided is False:
        log.info(
            f"[{profile.id}] {name}: the p{pct:g} interval [{interval[0]:.3f}, {interval[1]:.3f}] ms contains "
            f"the {verdicts[0].limit:g} ms budget; the verdict could flip on a rerun (raise bench.min_runs)"
        )
    return {
        "name": name,
        "artifact": {"path": rel, "sha256": sha256_file(path), "bytes": stats["bytes"], "precision": precision},
        "latency_ms": {
            "p50": round(lat.p50, 4),
            "p90": round(lat.p90, 4),
            "p99": round(lat.p99, 4),
            "p99.9": round(lat.p999, 4),
            "mean": round(lat.mean, 4),
            "stdev": round(lat.stdev, 4),
            "runs": lat.runs,
            "threads": threads,
            "basis": "host measurement",
            "budget_percentile": pct,
            "interval95": [round(interval[0], 4), round(interval[1], 4)],
            "interval95_half_width_pct": round(100 * half / lat.percentile(pct), 3) if lat.percentile(pct) else None,
        },
        "device_estimate": device,
        "measured_power": meas.power,
        "power_judged_on": "measured"
        if (meas.power or {}).get("available")
        else ("estimate" if device["available"] else None),
        "memory_mb": meas.memory["session_mb"],
        "memory": meas.memory,
        "metric": {"name": ctx.metric_name, "value": round(value, 6), "drop": round(drop, 6), "evaluated": mode},
        "metrics": extra_metrics(ctx.metric_name, meas.outputs[0], ctx.evaluation.labels, ctx.reference[0]),
        "params": stats["parameters"],
        "macs": stats["macs"],
        "produced_by": produced_by,
        "parent": parent,
        "verdicts": [v.as_dict() for v in verdicts],
        "ok": overall(verdicts),
    }


DELIVERABLE_TIE_BAND = 0.10  # 1-thread host timings repeat within ~10%: closer than that is a tie
DELIVERABLE_RULE = (
    f"fastest p50 among variants meeting every budget; within {DELIVERABLE_TIE_BAND:.0%} of it, the smallest file"
)


def _choose_deliverable(variants: list[dict], target: Target) -> dict:
    """Fastest (by p50, the stable statistic) variant meeting every budget; else the one missing by least.

    Only variants the target's runtime can execute are eligible (an NPU that runs INT8 only
    never gets the FP32 baseline). Budgets are judged at their own percentile; ranking on a
    tail percentile would let one scheduler hiccup on a shared host decide what ships.
    Variants within DELIVERABLE_TIE_BAND of the fastest p50 are a tie, settled by the smaller
    file (then the variant order): two variants that time alike would otherwise swap on every
    rebuild, and the release bytes with them.
    """
    variants = [v for v in variants if v["artifact"]["precision"] in target.quantization.precisions]
    passing = [v for v in variants if v["ok"]]
    if passing:
        fastest = min(v["latency_ms"]["p50"] for v in passing)
        tied = [v for v in passing if v["latency_ms"]["p50"] <= fastest * (1 + DELIVERABLE_TIE_BAND)]
        return min(tied, key=lambda v: (v["artifact"]["bytes"], passing.index(v)))

    def shortfall(v: dict) -> tuple[int, float]:
        missed = [x for x in v["verdicts"] if x["ok"] is False]
        return len(missed), sum(-x["margin"] / x["limit"] for x in missed if x["limit"])

    return min(variants, key=shortfall)


def _replayed_deliverable(replay, profile_id: str, variants: list[dict]) -> tuple[dict, dict]:
    name = replay.deliverable(profile_id)
    found = next((v for v in variants if v["name"] == name), None)
    if found is None:
        raise UsageError(
            f"the replayed deliverable '{name}' of {profile_id} is not a variant of this build",
            path=replay.path,
            field="profiles.deliverable",
            fix="replay a manifest of the same recipe and edgex version",
        )
    return found, {"deliverable": name, "by": "replayed", "replayed_from": replay.record()}


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


def _student_ctx(ctx: Context, compressed, cache: dict) -> Context:
    """The context to export the compressed model with: its own PyTorch outputs are its parity
    reference (quality is still judged against the source model's)."""
    from exporter.export import torch_reference

    key = ("student-reference", compressed.record["cache"]["key"], tuple(ctx.inputs[0].shape))
    if key not in cache:
        cache[key] = torch_reference(compressed.model.module, ctx.evaluation.inputs, ctx.inputs)
    return dataclasses.replace(ctx, model=compressed.model, reference=cache[key], shapes={}, compressed={})


def _artifacts(
    ctx: Context, target: Target, work: Path, cache: dict, budget: float, label: str, compressed=None
) -> dict[str, tuple]:
    """name -> (file, precision, produced_by, parent), in lineage order. With compression, the
    quantized variants are made from the compressed model (parent `compressed`)."""
    r = ctx.loaded.recipe
    fp32_work, export_info = _export_for(ctx, target, work, cache)
    artifacts = {"baseline": (fp32_work, "fp32", export_info, None)}
    qctx, parent, tag = ctx, "baseline", "baseline"
    if compressed is not None:
        tag = f"compressed-{compressed.record['cache']['key'][:10]}"
        qctx = _student_ctx(ctx, compressed, cache)
        fp32_work, info = _export_for(qctx, target, work, cache, tag=tag)
        produced_by = {
            "step": "compress",
            "steps": [s["step"] for s in compressed.record["steps"]],
            "cache_key": compressed.record["cache"]["key"],
            **info,
        }
        artifacts["compressed"] = (fp32_work, "fp32", produced_by, "baseline")
        parent = "compressed"
    if not r.quantize.enabled:
        return artifacts
    precisions = r.quantize.precisions
    if "int8" in precisions:
        source = fp32_work
        if ctx.model.kind == "hf" and target.contrib_ops:
            source, _ = _export_for(qctx, target, work, cache, fusion="for-int8", tag=tag)
        q = _quantize_for(ctx, target, source, work, cache, budget, label, fp32_work)
        produced_by = {"step": "quantize", "precision": "int8", "input_graph": source.name}
        produced_by.update(
            {
                k: q.preset[k]
                for k in (
                    "format",
                    "activation_type",
                    "weight_type",
                    "per_channel",
                    "activation_symmetric",
                    "weight_symmetric",
                )
            }
        )
        produced_by.update(
            {
                "calibration_method": q.method,
                "calibration_samples": q.calibration_samples,
                "calibration_sha256": q.calibration_digest,
                "quantized_nodes": q.quantized_nodes,
                "kept_in_float": q.float_nodes,
                "excluded_nodes": q.excluded_nodes,
                "notes": q.notes,
                "search": q.search,
                "speed_guard": q.speed_guard,
            }
        )
        artifacts["int8"] = (q.path, "int8", produced_by, parent)
        if r.quantize.dynamic and target.quantization.dynamic:
            key = ("int8-dynamic", fp32_work.name)
            if key not in cache:
                log.info(f"[{label}] quantize dynamic INT8 (per-channel weights) for {target.id}")
                path = work / f"int8-dynamic-{fp32_work.stem}.onnx"
                cache[key] = (path, quantize_dynamic_int8(fp32_work, path))
            path, info = cache[key]
            artifacts["int8-dynamic"] = (path, "int8", {"step": "quantize", "precision": "int8", **info}, parent)
    if "int4" in precisions:
        source = fp32_work
        if ctx.model.kind == "hf":  # MatMulNBits and GatherBlockQuantized need the plain MatMul/Gather graph
            source, _ = _export_for(qctx, target, work, cache, fusion="none", tag=tag)
        s4 = r.quantize.int4
        key = ("int4", source.name, s4.model_dump_json(), target.quantization.int4_format)
        if key not in cache:
            log.info(f"[{label}] quantize INT4 weights ({s4.algorithm}, block {s4.block_size}) for {target.id}")
            path = work / f"int4-{hashlib.sha256(repr(key).encode()).hexdigest()[:10]}.onnx"
            feeds = batches(ctx.calibration.inputs, ctx.inputs[0].shape[0], 32)  # GPTQ's calibration
            res = quantize_int4(source, path, s4, target.quantization.int4_format, feeds)
            cache[key] = (path, {"step": "quantize", "precision": "int4", **res.settings, "nodes": res.quantized})
        path, info = cache[key]
        artifacts["int4"] = (path, "int4", info, parent)
    if "fp16" in precisions:
        key = ("fp16", fp32_work.name)
        if key not in cache:
            log.info(f"[{label}] convert to FP16 for {target.id}")
            path = work / f"fp16-{fp32_work.stem}.onnx"
            cache[key] = (path, {"step": "quantize", "precision": "fp16", **convert_fp16(fp32_work, path)})
        path, info = cache[key]
        artifacts["fp16"] = (path, "fp16", info, parent)
    return artifacts


def _preflight_and_package(
    ctx: Context, profile: DeviceProfile, target: Target, paths: dict[str, Path], threads: int
) -> tuple[dict[str, dict], dict[str, dict]]:
    """Operator coverage of every variant, and its device package (.ort where the target wants it)."""
    from exporter.package import package_parity, to_ort
    from exporter.preflight import preflight

    checks, packages = {}, {}
    for name, path in paths.items():
        checks[name] = preflight(path, target)
        pf = checks[name]
        if pf["cpu_fallback_nodes"]:
            ops = ", ".join(f"{op}x{n}" for op, n in pf["unsupported_ops"].items())
            log.info(
                f"[{profile.id}] preflight {name}: {pf['cpu_fallback_nodes']} of {pf['nodes']} nodes fall back "
                f"to the CPU ({ops}); {pf['partitions']} accelerator partition(s)"
            )
        if target.package_format == "ort":
            log.info(f"[{profile.id}] package {name} as ORT format ({target.ort_optimization_style} optimizations)")
            ort_path, config, reproducible = to_ort(path, path.parent, target.ort_optimization_style)
            parity = package_parity(path, ort_path, ctx.evaluation.inputs, threads, PACKAGE_BENCH)
            packages[name] = {
                "path": f"{profile.id}/{ort_path.name}",
                "format": "ort",
                "required_operators": f"{profile.id}/{config.name}",
                "parity": parity,
                "reproducible": reproducible,  # False where setarch is missing: the .ort bytes may vary
            }
        else:
            packages[name] = {"path": f"{profile.id}/{path.name}", "format": "onnx"}
    return checks, packages


def _ship(
    ctx: Context, profile: DeviceProfile, target: Target, folder: Path, deliverable: dict, threads: int, files: dict
) -> dict:
    """runtime.json and the reference bundle for the variant that ships."""
    from exporter.package import reference_bundle, runtime_json

    r = ctx.loaded.recipe
    model_file = Path(deliverable["package"]["path"]).name
    check = reference_bundle(folder, folder / model_file, ctx.evaluation.inputs, threads)
    session = make_session(folder / model_file, threads)
    notes = r.runtime_notes.model_dump() if r.runtime_notes else {}
    shapes = {i.name: list(i.shape) for i in ctx.inputs}
    runtime = runtime_json(profile, target, model_file, session, notes, files, check, shapes)
    (folder / "runtime.json").write_text(json.dumps(runtime, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return runtime


def _stamp(
    src: Path, dest: Path, ctx: Context, profile: DeviceProfile, target: Target, variant: str, produced_by: dict
) -> None:
    """Provenance inside each shipped model (metadata_props), so a file found on a device says where it came from."""

    import onnx

    from exporter.onnx_io import save_model
    from exporter.versions import source_date_epoch, tool_versions

    versions = tool_versions()
    model = onnx.load(str(src))
    facts = {
        "edgex.version": versions["edgex"],
        "edgex.recipe_sha256": ctx.loaded.sha256,
        "edgex.profile": profile.id,
        "edgex.target": target.id,
        "edgex.execution_provider": target.execution_provider,
        "edgex.variant": variant,
        "edgex.seed": str(ctx.loaded.recipe.seed),
        "edgex.onnxruntime": versions["onnxruntime"],
        "edgex.onnx": versions["onnx"],
        "edgex.torch": versions["torch"],
    }
    if "calibration_sha256" in produced_by:
        facts["edgex.calibration_sha256"] = produced_by["calibration_sha256"]
    facts["edgex.opset"] = str(next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0))
    epoch = source_date_epoch()
    if epoch is not None:
        facts["edgex.source_date_epoch"] = epoch
    save_model(model, dest, metadata=facts)


def build_profile(ctx: Context, profile: DeviceProfile, stage: Path, work: Path, cache: dict) -> dict:
    ctx = for_profile(ctx, profile)
    r = ctx.loaded.recipe
    target = get_target(profile.target)
    threads = host_threads(profile.threads)
    folder = stage / profile.id
    folder.mkdir(parents=True)
    max_drop = r.max_accuracy_drop if r.max_accuracy_drop is not None else profile.budgets.max_accuracy_drop
    compressed = compressed_for(ctx, profile)
    artifacts = _artifacts(ctx, target, work, cache, max_drop, profile.id, compressed)
    files: dict[str, object] = {}
    if ctx.model.hf is not None:
        from exporter.hf.source import copy_tokenizer

        files["tokenizer"] = [f"tokenizer/{n}" for n in copy_tokenizer(ctx.model.hf, folder / "tokenizer")]
    if r.labels_file:
        shutil.copyfile(ctx.loaded.resolve(r.labels_file), folder / "labels.txt")
        files["labels"] = "labels.txt"
    paths, weights = {}, {}
    for name, (src, _precision, produced_by, _parent) in artifacts.items():
        paths[name] = folder / f"{name}.onnx"
        _stamp(src, paths[name], ctx, profile, target, name, produced_by)
        weights[name] = guard_produced(paths[name], name)  # NaN/Inf weights or zero scales fail here
        if weights[name]["all_zero_channels"]:
            log.info(f"[{profile.id}] {name}: all-zero output channels {weights[name]['all_zero_channels']}")
    checks, packages = _preflight_and_package(ctx, profile, target, paths, threads)
    # Quality is computed as the target's runtime computes it (see runtime.EVALUATION_MODES).
    mode = "deployed" if target.execution_provider == "CPUExecutionProvider" else "simulated"
    from exporter.measure import profile_meter

    meter, unmeasured = profile_meter(profile)  # measured power where the profile's sensor is present
    rate = profile.budgets.average_power.rate_hz if profile.budgets.average_power else None
    bench = r.bench.effective()
    pinning = affinity_plan(profile.cpu_affinity)
    if pinning["requested"] and pinning["applied"] is None:
        log.info(f"[{profile.id}] cpu_affinity {pinning['requested']} not applied: {pinning['reason']}")
    meas = measure_variants(
        paths,
        ctx.evaluation.inputs,
        _feed(ctx),
        threads,
        bench,
        profile.id,
        mode,
        meter,
        unmeasured,
        rate,
        affinity=pinning,
    )
    variants = []
    for name, (_src, precision, produced_by, parent) in artifacts.items():
        record = _variant_record(
            ctx,
            name,
            paths[name],
            f"{profile.id}/{name}.onnx",
            precision,
            meas[name],
            produced_by,
            parent,
            profile,
            threads,
            max_drop,
            mode,
        )
        gates = [v.as_dict() for v in judge_preflight(profile.preflight, checks[name])]
        record["verdicts"] += gates
        record["ok"] = record["ok"] and all(v["ok"] is not False for v in gates)
        record["preflight"] = checks[name]
        record["weights_check"] = weights[name]
        record["package"] = packages[name]
        variants.append(record)
    deliverable = _choose_deliverable(variants, target)
    decision = {"deliverable": deliverable["name"], "by": DELIVERABLE_RULE}
    if ctx.replay is not None:
        deliverable, decision = _replayed_deliverable(ctx.replay, profile.id, variants)
    runtime = _ship(ctx, profile, target, folder, deliverable, threads, files)
    return {
        "id": profile.id,
        "name": profile.name,
        "class": profile.device_class,
        "target": target.id,
        "execution_provider": target.execution_provider,
        "host_execution_provider": "CPUExecutionProvider",
        "threads": {"profile": profile.threads, "host": threads, "affinity": pinning},
        "bench": bench.model_dump(),
        "inputs": [{"name": i.name, "shape": i.shape, "dtype": i.dtype} for i in ctx.inputs],
        "data": {
            "calibration_sha256": ctx.calibration.digest,
            "evaluation_sha256": ctx.evaluation.digest,
            "baseline_metric": round(ctx.baseline_metric, 6),
        },
        "deliverable": deliverable["name"],
        "decisions": decision,
        "package": {
            "model": f"{profile.id}/{runtime['model']}",
            "runtime": f"{profile.id}/runtime.json",
            "reference": f"{profile.id}/reference/check_reference.py",
            "format": runtime["format"],
        },
        "variants": variants,
        "tokenizer": [f"{profile.id}/{p}" for p in files.get("tokenizer", [])],
        "compression": compressed.record["cache"]["key"][:12] if compressed is not None else None,
        "verdicts": deliverable["verdicts"],
        "not_evaluated": [v["budget"] for v in deliverable["verdicts"] if v["ok"] is None],
        "ok": deliverable["ok"],
    }


def build(
    recipe: str | Path,
    profiles: list[str] | None = None,
    out: str | Path | None = None,
    profiles_dirs: tuple[Path, ...] | list[Path] = (),
    replay: str | Path | None = None,
    mlperf: bool = False,
) -> dict:
    """Build every profile of a recipe; returns the manifest (also written to OUT/manifest.json).

    replay: an earlier build's manifest whose timing-based decisions are repeated (exporter.replay).
    mlperf: time with MLPerf single-stream minimums whatever the recipe's bench section says."""
    with log.stdout_to_stderr():
        return _build(recipe, profiles, out, profiles_dirs, replay, mlperf)


def _build(
    recipe: str | Path,
    profiles: list[str] | None,
    out: str | Path | None,
    profiles_dirs: tuple[Path, ...] | list[Path],
    replay: str | Path | None = None,
    mlperf: bool = False,
) -> dict:
    from exporter.replay import load_replay
    from exporter.versions import source_date_epoch

    source_date_epoch()  # a malformed SOURCE_DATE_EPOCH is refused before any work
    if out is not None:
        check_output(Path(out))
    ctx = prepare(recipe, profiles, profiles_dirs)
    if replay is not None:
        ctx.replay = load_replay(Path(replay), ctx.loaded.sha256, [p.id for p in ctx.profiles])
    if mlperf:  # the flag overrides the recipe's bench section (recorded per profile in the manifest)
        bench = ctx.loaded.recipe.bench.model_copy(update={"mlperf": True})
        ctx.loaded = dataclasses.replace(ctx.loaded, recipe=ctx.loaded.recipe.model_copy(update={"bench": bench}))
    r = ctx.loaded.recipe
    final = Path(out) if out is not None else ctx.loaded.resolve(r.output)
    if final.resolve() == ctx.loaded.path.parent or ctx.loaded.path.is_relative_to(final.resolve()):
        raise UsageError(
            "the output folder would contain the recipe itself",
            path=ctx.loaded.path,
            field="output",
            fix="write the build to a dedicated folder, e.g. build/<name>",
        )
    with staged_output(final) as stage:
        work = stage / ".work"
        work.mkdir()
        cache: dict = {}
        results = [build_profile(ctx, p, stage, work, cache) for p in ctx.profiles]
        shutil.rmtree(work)
        compression = {c.record["cache"]["key"][:12]: c.record for c in ctx.compressed.values()}
        for res in results:
            if res["compression"]:
                compression[res["compression"]].setdefault("profiles", []).append(res["id"])
        write_report(stage, r.name, ctx.metric_name, ctx.baseline_metric, results, compression)
        manifest = build_manifest(ctx, results, stage)
        write_manifest(stage, manifest)
    return manifest
