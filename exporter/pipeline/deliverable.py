"""Judging each variant of a profile and choosing the one that ships.

A variant is judged as `edgex bench` judges a file (`bench.judging.judge_timed`) plus its accuracy
against the FP32 reference; the deliverable is the fastest variant meeting every budget, with a
tie band so two variants that time alike do not swap on every rebuild.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

from exporter import log
from exporter.bench.judging import judge_timed
from exporter.bench.verdicts import overall
from exporter.digest import sha256_file
from exporter.errors import UsageError
from exporter.graph_stats import inspect_model
from exporter.metrics import accuracy_drop, extra_metrics, output_fidelity
from exporter.pipeline.context import Context
from exporter.profiles import DeviceProfile
from exporter.quant.speed import TOLERANCE as SPEED_TOLERANCE  # INT8 may be at most 5% slower than FP32
from exporter.targets import Target, get_target

DELIVERABLE_TIE_BAND = 0.10  # 1-thread host timings repeat within ~10%: closer than that is a tie
DELIVERABLE_RULE = (
    f"fastest p50 among variants meeting every budget; within {DELIVERABLE_TIE_BAND:.0%} of it, the smallest file"
)


def variant_record(
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
    """The manifest's record of one measured variant, with its verdicts."""
    stats = inspect_model(path, {i.name: list(i.shape) for i in ctx.inputs})
    value = float(ctx.metric_fn(meas.outputs[0], ctx.evaluation.labels, ctx.reference[0]))
    drop = accuracy_drop(ctx.baseline_metric, value, ctx.higher_is_better)
    pct = profile.budgets.latency.percentile
    lat = meas.latency
    judged = judge_timed(
        path,
        profile,
        get_target(profile.target),
        precision,
        lat,
        threads,
        peak_memory_mb=meas.memory["session_mb"],
        size_mb=stats["bytes"] / 1e6,
        accuracy_drop=drop,
        max_accuracy_drop=max_drop,
        measured=meas.power,
        shapes={s.name: list(s.shape) for s in ctx.inputs},  # the estimate counts at the shapes timed
        # A16W8 runs 16-bit activations: its latency comes from the fit on published w8a16 timings
        fit_precision="a16w8" if str(produced_by.get("activations", "")).startswith("uint16") else None,
        work_graph=path.parent / f"{parent}.onnx" if parent else None,  # its FP32 parent: the same work
    )
    interval, verdicts = judged.interval, judged.verdicts
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
        "device_estimate": judged.device,
        "measured_power": meas.power,
        "power_judged_on": judged.power_judged_on,
        "memory_mb": meas.memory["session_mb"],
        "memory": meas.memory,
        "metric": {"name": ctx.metric_name, "value": round(value, 6), "drop": round(drop, 6), "evaluated": mode},
        "metrics": (ctx.metric_extras or partial(extra_metrics, ctx.metric_name))(
            meas.outputs[0], ctx.evaluation.labels, ctx.reference[0]
        ),
        "output_sqnr": output_fidelity(
            meas.outputs, ctx.reference, _output_names(path), produced_by.get("concat_parts")
        ),
        "params": stats["parameters"],
        "macs": stats["macs"],
        "produced_by": produced_by,
        "parent": parent,
        "verdicts": [v.as_dict() for v in verdicts],
        "ok": overall(verdicts),
    }


def _output_names(path: Path) -> list[str]:
    import onnx

    return [o.name for o in onnx.load(str(path), load_external_data=False).graph.output]


def choose_deliverable(variants: list[dict], target: Target) -> dict:
    """Fastest (by p50, the stable statistic) variant meeting every budget; else the one missing by least.

    Only variants the target's runtime can execute are eligible (an NPU that runs INT8 only
    never gets the FP32 baseline). Budgets are judged at their own percentile; ranking on a
    tail percentile would let one scheduler hiccup on a shared host decide what ships.
    Variants within DELIVERABLE_TIE_BAND of the fastest p50 are a tie, settled by the smaller
    file (then the variant order): two variants that time alike would otherwise swap on every
    rebuild, and the release bytes with them.
    """
    # When every variant the target runs failed (a failed INT8 on an INT8-only NPU), the rest are kept
    # for inspection and the decision says so (deliverable_of); the profile fails on failed_variants.
    variants = [v for v in variants if v["artifact"]["precision"] in target.quantization.precisions] or variants
    passing = [v for v in variants if v["ok"]]
    if passing:
        fastest = min(v["latency_ms"]["p50"] for v in passing)
        tied = [v for v in passing if v["latency_ms"]["p50"] <= fastest * (1 + DELIVERABLE_TIE_BAND)]
        return min(tied, key=lambda v: (v["artifact"]["bytes"], passing.index(v)))

    def shortfall(v: dict) -> tuple[int, float]:
        missed = [x for x in v["verdicts"] if x["ok"] is False]
        return len(missed), sum(-x["margin"] / x["limit"] for x in missed if x["limit"])

    return min(variants, key=shortfall)


def replayed_deliverable(replay, profile_id: str, variants: list[dict]) -> tuple[dict, dict]:
    """The deliverable an earlier manifest chose (`--replay`), refused when this build lacks it."""
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


def deliverable_of(ctx: Context, profile_id: str, variants: list[dict], target: Target) -> tuple[dict, dict]:
    """The variant that ships and how it was decided (the rule, or the replayed manifest)."""
    deliverable = choose_deliverable(variants, target)
    decision = {"deliverable": deliverable["name"], "by": DELIVERABLE_RULE}
    if deliverable["artifact"]["precision"] not in target.quantization.precisions:
        decision["by"] = (
            f"no variant {target.id} runs was built (see failed_variants): {deliverable['name']} is kept for "
            "inspection, not for the device"
        )
    if ctx.replay is not None:
        deliverable, decision = replayed_deliverable(ctx.replay, profile_id, variants)
    return deliverable, decision


SPEED_VERDICT = "int8_speed_vs_fp32"


def speed_verdicts(variants: list[dict], target: Target, threads: int, label: str = "") -> None:
    """On a CPU target every INT8 variant (static and dynamic) is judged against FP32's p50 from the
    same interleaved run: more than SPEED_TOLERANCE slower is a failed verdict, so it never ships
    while FP32 passes (edgex's promise: never an INT8 file slower than FP32 on a CPU). Adds to each
    variant's verdicts in place and recomputes its `ok`.

    On other targets the host's ratio says nothing about the device (the NPU's kernels are not
    the host's), so no verdict: the report prints the ratio as a host figure only."""
    if target.execution_provider != "CPUExecutionProvider":
        return
    fp32 = next((v for v in variants if v["name"] == "baseline"), None)
    if fp32 is None or not fp32["latency_ms"]["p50"]:
        return
    for v in variants:
        if v["artifact"]["precision"] != "int8":
            continue
        ratio = v["latency_ms"]["p50"] / fp32["latency_ms"]["p50"]
        limit = 1 + SPEED_TOLERANCE
        verdict = {
            "budget": SPEED_VERDICT,
            "limit": limit,
            "value": round(ratio, 6),
            "ok": ratio <= limit,
            "unit": "x FP32 p50",
            "basis": (
                f"edgex's rule on CPU targets, not a profile budget: p50 / FP32's p50 from the same interleaved "
                f"host run ({threads} thread(s))"
            ),
            "margin": round(limit - ratio, 6),
            "interval": None,
            "decided": None,
        }
        v["verdicts"].append(verdict)
        v["ok"] = v["ok"] and verdict["ok"]
        if not verdict["ok"]:
            log.info(
                f"[{label}] {v['name']}: {ratio:.2f}x FP32's p50 on this CPU target, more than {limit:.2f}x: it does not ship "
                "while FP32 meets the budgets"
            )


def failed_variants_verdicts(failed: list[dict]) -> list[dict]:
    """The profile's verdict that every variant the recipe asked for was built: a failed one makes the
    profile fail (exit 1, artifacts kept), so CI sees it in the exit code and in JUnit, not only in a log.

    Every planned precision counts, the dynamic INT8 companion included: `quantize.dynamic` (default
    true) is the recipe asking for it, and `dynamic: false` is the one-line way not to."""
    if not failed:
        return []
    said = "; ".join(f"{f['name']} in step '{f['failed']['step']}'" for f in failed)
    return [
        {
            "budget": "failed_variants",
            "limit": 0,
            "value": len(failed),
            "ok": False,
            "unit": "variants",
            "basis": f"variants asked for that failed: {said} (reasons in failed_variants)",
            "margin": -len(failed),
            "interval": None,
            "decided": None,
        }
    ]
