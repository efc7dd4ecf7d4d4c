"""The build: recipe -> load -> (compress) -> export -> quantize -> bench -> verdict -> manifest + report.

Each stage takes plain data and returns plain data; this package only sequences them and records
what each did: `context` loads once per build, `variants` produces the files of a profile,
`deliverable` judges them and picks the one that ships; packaging and stamping are the package
stage's (`exporter.package`). Export and quantization are shared between profiles whose target
asks for the same thing (same opset, shape policy and preset), and their bytes are copied per profile.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

from exporter import log
from exporter.bench.affinity import plan as affinity_plan
from exporter.bench.verdicts import judge_preflight
from exporter.errors import UsageError
from exporter.manifest import build_manifest, write_manifest
from exporter.measure import measure_variants, profile_meter
from exporter.numerics import guard_produced
from exporter.package import preflight_and_package, ship, stamp
from exporter.pipeline.context import Context, evaluator, for_profile, prepare, query_feed
from exporter.pipeline.deliverable import (
    DELIVERABLE_RULE,
    DELIVERABLE_TIE_BAND,
    choose_deliverable,
    deliverable_of,
    failed_variants_verdicts,
    speed_verdicts,
    variant_record,
)
from exporter.pipeline.npu import context_binary, judge_on_npu, soc_of
from exporter.pipeline.variants import (
    FP32_VARIANTS,
    compressed_for,
    discard_variant,
    export_for,
    failure_record,
    ordered_failures,
    produce_variants,
    smoke_run,
    student_context,
)
from exporter.profiles import DeviceProfile
from exporter.quant.precisions import REGISTRY, evaluation_mode
from exporter.quant.preset_race import device_isa
from exporter.report import write_report
from exporter.runtime import host_threads
from exporter.staging import check_output, staged_output
from exporter.targets import get_target

__all__ = [
    "DELIVERABLE_RULE",
    "DELIVERABLE_TIE_BAND",
    "Context",
    "build",
    "build_profile",
    "choose_deliverable",
    "compressed_for",
    "evaluator",
    "export_for",
    "for_profile",
    "prepare",
    "student_context",
]


def build_profile(ctx: Context, profile: DeviceProfile, stage: Path, work: Path, cache: dict) -> dict:
    """One profile's folder in `stage` and its manifest record (work and cache are shared per build)."""
    ctx = for_profile(ctx, profile)
    r = ctx.loaded.recipe
    target = get_target(profile.target)
    threads = host_threads(profile.threads)
    folder = stage / profile.id
    folder.mkdir(parents=True)
    max_drop = r.max_accuracy_drop if r.max_accuracy_drop is not None else profile.budgets.max_accuracy_drop
    compressed = compressed_for(ctx, profile)
    isa = device_isa(profile)
    artifacts, failures = produce_variants(ctx, target, work, cache, max_drop, profile.id, compressed, isa)
    files: dict[str, object] = {}
    if ctx.model.hf is not None:
        from exporter.hf.source import copy_tokenizer

        files["tokenizer"] = [f"tokenizer/{n}" for n in copy_tokenizer(ctx.model.hf, folder / "tokenizer")]
    if r.labels_file:
        shutil.copyfile(ctx.loaded.resolve(r.labels_file), folder / "labels.txt")
        files["labels"] = "labels.txt"
    paths, weights, checks, packages = {}, {}, {}, {}
    feed = query_feed(ctx)
    for name, (src, _precision, produced_by, _parent) in list(artifacts.items()):
        paths[name] = folder / f"{name}.onnx"
        step = "stamp"
        try:
            shapes = {i.name: list(i.shape) for i in ctx.inputs}
            stamp(src, paths[name], ctx.loaded.sha256, r.seed, profile.id, target, name, produced_by, shapes)
            step = "weights check"
            # NaN/Inf weights or zero scales fail here: a precision's own post-condition, else the generic one
            ensures = REGISTRY[name].ensures if name in REGISTRY else guard_produced
            weights[name] = ensures(paths[name], name)
            if weights[name]["all_zero_channels"]:
                log.info(f"[{profile.id}] {name}: all-zero output channels {weights[name]['all_zero_channels']}")
            step = "preflight and package"
            check, package = preflight_and_package(
                profile.id,
                target,
                {name: paths[name]},
                ctx.evaluation.inputs,
                threads,
                ctx.evaluation.feeding,
                soc_of(profile),
            )
            checks[name], packages[name] = check[name], package[name]
            step = "load and run once"
            smoke_run(paths[name], feed, threads, name)
        except UsageError:
            raise
        except Exception as exc:
            if name in FP32_VARIANTS:  # every other variant is judged against it: nothing to go on with
                raise
            failures[name] = failure_record(name, artifacts[name][1], artifacts[name][3], step, exc, profile.id)
            discard_variant(folder, name)
            for found in (artifacts, paths, weights, checks, packages):
                found.pop(name, None)
    mode = evaluation_mode(target)  # quality computed as the target's runtime computes it
    meter, unmeasured = profile_meter(profile)  # measured power where the profile's sensor is present
    rate = profile.budgets.average_power.rate_hz if profile.budgets.average_power else None
    bench = r.bench.effective()
    pinning = affinity_plan(profile.cpu_affinity)
    if pinning["requested"] and pinning["applied"] is None:
        log.info(f"[{profile.id}] cpu_affinity {pinning['requested']} not applied: {pinning['reason']}")
    meas = measure_variants(
        paths,
        ctx.evaluation.inputs,
        feed,
        threads,
        bench,
        profile.id,
        mode,
        meter,
        unmeasured,
        rate,
        affinity=pinning,
        feeding=ctx.evaluation.feeding,
    )
    variants = []
    on_npu = target.execution_provider == "QNNExecutionProvider"
    for name, (_src, precision, produced_by, parent) in artifacts.items():
        record = variant_record(
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
        if on_npu and precision in target.quantization.precisions:
            record["npu"], npu_verdicts = judge_on_npu(
                ctx, profile, name, paths[name], meas[name].outputs[0], max_drop, paths.get(parent or "")
            )
            gates += [v.as_dict() for v in npu_verdicts]
        record["verdicts"] += gates
        record["ok"] = record["ok"] and all(v["ok"] is not False for v in gates)
        record["preflight"] = checks[name]
        record["weights_check"] = weights[name]
        record["package"] = packages[name]
        variants.append(record)
    speed_verdicts(variants, target, threads, profile.id)
    deliverable, decision = deliverable_of(ctx, profile.id, variants, target)
    failed = ordered_failures(failures)
    profile_verdicts = deliverable["verdicts"] + failed_variants_verdicts(failed)
    notes = r.runtime_notes.model_dump() if r.runtime_notes else {}
    if r.data.evaluation.preprocess is not None:  # what the numbers were measured on, for the app to repeat
        notes["preprocess"] = r.data.evaluation.preprocess.model_dump(mode="json")
    shapes = {i.name: list(i.shape) for i in ctx.inputs}
    model_file = Path(deliverable["package"]["path"]).name
    feeding = ctx.evaluation.feeding
    binary, binary_entry = (None, None)
    if on_npu and deliverable["artifact"]["precision"] in target.quantization.precisions:
        binary, binary_entry = context_binary(ctx, profile, deliverable["name"], paths[deliverable["name"]], folder)
    runtime = ship(
        folder,
        profile,
        target,
        model_file,
        ctx.evaluation.inputs,
        threads,
        files,
        notes,
        shapes,
        feeding,
        context_binary=binary_entry,
        # the output's layout, whichever variant ships: found when the INT8 variant was quantized
        concat_parts=next(
            (v["produced_by"]["concat_parts"] for v in variants if v["produced_by"].get("concat_parts")), None
        ),
    )
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
        **({"context_binary": binary} if binary is not None else {}),
        "compression": compressed.record["cache"]["key"][:12] if compressed is not None else None,
        "verdicts": profile_verdicts,
        "not_evaluated": [v["budget"] for v in deliverable["verdicts"] if v["ok"] is None],
        "ok": deliverable["ok"] and not failed,
        **({"failed_variants": failed} if failed else {}),
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
