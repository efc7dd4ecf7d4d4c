"""Commands on a recipe: `build` (a whole build, or one cell of a release matrix) and `validate`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from exporter.cli.common import JSON_OPT, JUNIT_OPT, TRUST_OPT, command, emit, emit_judged, plan_opt
from exporter.errors import UsageError


def _emit_build(result: dict, manifest: dict, junit: Path | None, as_json: bool, text: Callable[[Any], str]) -> int:
    """A whole build and one matrix cell end alike, so a CI job reads the same JUnit file from either."""
    if junit is not None:
        from exporter.junit import from_manifest, write_junit

        write_junit(junit, from_manifest(manifest))
    return emit_judged(result, as_json, text)


def _latency_text(verdict: dict, pct: str, deliv: dict, prof: dict) -> str:
    """The judged latency with its basis in a few words; the host timing beside it when it is not the basis."""
    host_t = f"host {pct} {deliv['latency_ms'][pct]:.2f} ms, {prof['threads']['host']}t"
    basis = verdict["basis"]
    if verdict["value"] is None:
        return f"{pct} not judged (no device evidence; {host_t}; budget {verdict['limit']:g})"
    if basis.startswith("device estimate"):
        band = ""
        if verdict.get("interval"):
            lo, hi = verdict["interval"]
            band = f" [{lo:.3g}, {hi:.3g}]"
        return f"device est. {verdict['value']:.3g} ms{band} (budget {verdict['limit']:g} at {pct}; {host_t})"
    if basis.startswith("device measurement"):
        return f"{pct} {verdict['value']:.2f} ms (on the device; budget {verdict['limit']:g})"
    return f"{pct} {verdict['value']:.2f} ms (host, {prof['threads']['host']}t; budget {verdict['limit']:g})"


def _summary(manifest: dict) -> str:
    lines = []
    for prof in manifest["profiles"]:
        deliv = next(v for v in prof["variants"] if v["name"] == prof["deliverable"])
        base = prof["variants"][0]
        lat = next(v for v in prof["verdicts"] if v["budget"].startswith("latency"))
        pct = lat["budget"].split("_")[1]
        missed = [v["budget"] for v in prof["verdicts"] if v["ok"] is False and v["budget"] != "failed_variants"]
        failed = [f"{f['name']} ({f['failed']['step']})" for f in prof.get("failed_variants") or []]
        status = "; ".join(
            (["BUDGET MISSED: " + ", ".join(missed)] if missed else [])
            + (["VARIANT FAILED: " + ", ".join(failed)] if failed else [])
        ) or ("within budget" if prof["ok"] else "NOT OK")
        speed = base["latency_ms"]["p50"] / deliv["latency_ms"]["p50"] if deliv["latency_ms"]["p50"] else 0
        lines.append(
            f"{prof['id']:<28} {prof['deliverable']:<8} {_latency_text(lat, pct, deliv, prof)}, "
            f"{deliv['artifact']['bytes'] / 1e6:.2f} MB "
            f"({deliv['artifact']['bytes'] / base['artifact']['bytes']:.0%} of FP32), {speed:.2f}x vs FP32, "
            f"{deliv['metric']['name']} {deliv['metric']['value']:.4f} (FP32 {base['metric']['value']:.4f}) — {status}"
        )
        est = deliv.get("device_estimate") or {}
        if est.get("available"):
            lines.append(
                f"{'':<28} device estimate (not measured): {est['device_latency_ms']:.3g} ms, "
                f"{est['energy_mj']:.3g} mJ per inference"
                + (f", {est['average_power_w']:.3g} W at {est['rate_hz']:g} Hz" if "average_power_w" in est else "")
            )
        if prof["not_evaluated"]:
            lines.append(f"{'':<28} not evaluated: {', '.join(prof['not_evaluated'])}")
    return "\n".join(lines)


@click.command()
@click.argument("recipe", type=click.Path(path_type=Path), required=False)
@click.option(
    "--profile", "profiles", multiple=True, help="Build for this profile id (repeatable; replaces the recipe's list)."
)
@click.option("--out", type=click.Path(path_type=Path), help="Output folder (default: the recipe's `output`).")
@JUNIT_OPT
@plan_opt("Build one cell of this plan (with --cell).")
@click.option("--cell", "cell_id", help="The id of the cell to build from --plan (default --out: out/<ID>).")
@click.option(
    "--replay",
    type=click.Path(path_type=Path),
    help="An earlier build's manifest.json: repeat its timing-based decisions (speed guard, deliverable).",
)
@click.option("--mlperf", is_flag=True, help="MLPerf minimums for every variant: at least 1024 queries and 60 s.")
@TRUST_OPT
@JSON_OPT
@click.pass_context
@command
def build(
    ctx: click.Context,
    recipe: Path | None,
    profiles: tuple[str, ...],
    out: Path | None,
    junit: Path | None,
    plan_path: Path | None,
    cell_id: str | None,
    replay: Path | None,
    mlperf: bool,
    trust_code: bool,
    as_json: bool,
) -> int:
    """Build RECIPE for each profile: export, quantize, benchmark, judge budgets.

    \b
    Writes OUT/<profile>/{baseline,int8}.onnx, OUT/manifest.json, OUT/report.md and a plot.
    Exit 1 when a profile misses a budget (artifacts are still written).
    With --plan P --cell ID: one cell of a release matrix, from the cache when its key is there.
    """
    if plan_path is not None or cell_id is not None:
        if recipe is not None or profiles:
            raise UsageError(
                "a cell names its recipe and profile",
                field="RECIPE/--profile",
                fix="drop RECIPE and --profile with --plan",
            )
        return _build_cell(plan_path, cell_id, out, junit, as_json)
    if recipe is None:
        raise UsageError(
            "Missing argument 'RECIPE'",
            field="RECIPE",
            fix="give a RECIPE, or --plan plan.json --cell ID (see `edgex build --help`)",
        )
    from exporter.pipeline import build as run_build
    from exporter.sources import trusting_code

    with trusting_code(trust_code):
        manifest = run_build(recipe, list(profiles) or None, out, ctx.obj["profiles_dirs"], replay, mlperf)
    return _emit_build(manifest, manifest, junit, as_json, _summary)


@click.command()
@click.argument("recipe", type=click.Path(path_type=Path))
@TRUST_OPT
@JSON_OPT
@click.pass_context
@command
def validate(ctx: click.Context, recipe: Path, trust_code: bool, as_json: bool) -> int:
    """Check RECIPE, its profiles, model source and data without building."""
    from exporter.sources import trusting_code
    from exporter.validate import validate_recipe

    with trusting_code(trust_code):
        result = validate_recipe(recipe, ctx.obj["profiles_dirs"])
    emit(
        result,
        as_json,
        lambda r: (
            f"{recipe}: ok ({r['profiles']} profile(s), {r['calibration_samples']} "
            f"calibration and {r['evaluation_samples']} evaluation samples)"
        ),
    )
    return 0


def _build_cell(
    plan_path: Path | None, cell_id: str | None, out: Path | None, junit: Path | None, as_json: bool
) -> int:
    from exporter.matrix.cell import build_cell

    if plan_path is None or cell_id is None:
        raise UsageError(
            "--plan and --cell go together", field="--plan/--cell", fix="give both, e.g. --plan plan.json --cell ID"
        )
    result = build_cell(plan_path, cell_id, out)
    return _emit_build(
        result,
        result["manifest"],
        junit,
        as_json,
        lambda r: (
            f"{r['cell']}: {'from the cache' if r['cached'] else 'built'} into {r['out']}\n" + _summary(r["manifest"])
        ),
    )


COMMANDS = [build, validate]
