"""Commands on releases: compare, verify and sign one; plan, run and merge a release matrix."""

from __future__ import annotations

from pathlib import Path

import click

from exporter.cli.common import JSON_OPT, command, emit, emit_judged, out_file_opt, plan_opt
from exporter.errors import EXIT_GATE, UsageError


@click.command()
@click.argument("old", type=click.Path(path_type=Path))
@click.argument("new", type=click.Path(path_type=Path))
@click.option(
    "--rounds",
    type=click.IntRange(1, 50),
    default=5,
    show_default=True,
    help="Interleaved A/A and A/B timing rounds that calibrate the latency threshold.",
)
@click.option(
    "--floor",
    type=click.FloatRange(0),
    default=0.10,
    show_default=True,
    help="Smallest latency slow-down (fraction) ever flagged.",
)
@JSON_OPT
@command
def compare(old: Path, new: Path, rounds: int, floor: float, as_json: bool) -> int:
    """Compare two releases (folders or manifest.json); exit 1 on a regression beyond noise.

    \b
    Example: edgex compare release-1.2/ build/digits/ --json
    """
    from exporter.compare import compare as run_compare

    result = run_compare(old, new, rounds, floor)

    def text(r: dict) -> str:
        lines = []
        for f in r["compared"]:
            for c in f["checks"]:
                flag = "REGRESSION" if c["regression"] else "ok"
                lines.append(
                    f"{f['profile']:<28} {f['variant']:<8} {c['check']:<22} {c['change']:+.2%} "
                    f"(threshold {c['threshold']:.2%}) {flag}"
                )
        lines += [f"missing in new: {p}" for p in r["missing_in_new"]]
        return "\n".join(lines) or "nothing in common to compare"

    emit(result, as_json, text)
    return EXIT_GATE if result["regression"] else 0


@click.command()
@click.argument("folder", type=click.Path(path_type=Path))
@click.option(
    "--public-key", type=click.Path(path_type=Path), help="Also check the manifest's signature with this PEM key."
)
@click.option("--signature", type=click.Path(path_type=Path), help="The signature file (default: FOLDER/manifest.sig).")
@JSON_OPT
@command
def verify(folder: Path, public_key: Path | None, signature: Path | None, as_json: bool) -> int:
    """Re-hash every file of a release (a folder, or a merged release.json) against its manifest;
    exit 1 on any changed, missing or extra file.

    \b
    With --public-key, the signature over manifest.json (`edgex sign`) must verify too.
    """
    from exporter.verify import verify as run_verify

    if signature is not None and public_key is None:
        raise UsageError(
            "a signature needs the key to check it with", field="--signature", fix="add --public-key KEY.pem"
        )
    result = run_verify(folder, public_key, signature)

    def text(r: dict) -> str:
        head = f"{r['folder']}: {'OK' if r['ok'] else 'FAILED'} ({r['files']} files listed)"
        return "\n".join([head] + [f"  {p['path']}: {p['problem']}" for p in r["problems"]])

    return emit_judged(result, as_json, text)


@click.command()
@click.argument("folder", type=click.Path(path_type=Path))
@click.option("--key", "key", type=click.Path(path_type=Path), required=True, help="EC private key (PEM).")
@click.option("--password-env", help="Environment variable holding the key's password, if it has one.")
@JSON_OPT
@command
def sign(folder: Path, key: Path, password_env: str | None, as_json: bool) -> int:
    """Sign a release's manifest.json with model_signing (offline, key-based); writes FOLDER/manifest.sig.

    \b
    Example: edgex sign build/digits --key release.pem && edgex verify build/digits --public-key release.pub
    """
    import os

    from exporter.signing import sign_release

    password = os.environ.get(password_env) if password_env else None
    path = sign_release(folder, key, password)
    emit({"signature": str(path)}, as_json, lambda d: f"signed: {d['signature']}")
    return 0


@click.command()
@click.argument("recipes", nargs=-1, type=click.Path(path_type=Path))
@click.option(
    "--profiles",
    "profile_ids",
    multiple=True,
    help="Profile ids for every recipe (repeatable or comma-separated; default: each recipe's own list).",
)
@click.option("--shard", help="k/N: only the k-th of N parts of the matrix (CI job limits: GitHub 256, GitLab 200).")
@click.option("--only-changed", is_flag=True, help="Leave out of the matrix the cells already in the cache.")
@click.option("--runners", type=click.Path(path_type=Path), help="YAML: runner labels and Ray resources per profile.")
@click.option(
    "--max-cells",
    type=click.IntRange(0),
    default=256,
    show_default=True,
    help="Refuse a matrix larger than this (0: no limit).",
)
@out_file_opt("The plan.json to write.")
@click.option("--gitlab", type=click.Path(path_type=Path), help="Also write a GitLab child pipeline here.")
@click.option(
    "--gitlab-template",
    default=".gitlab/edgex-cell.yml",
    show_default=True,
    help="Repository file defining the `.edgex-cell` job template the child pipeline includes.",
)
@JSON_OPT
@click.pass_context
@command
def plan(
    ctx: click.Context,
    recipes: tuple[Path, ...],
    profile_ids: tuple[str, ...],
    shard: str | None,
    only_changed: bool,
    runners: Path | None,
    max_cells: int,
    out: Path,
    gitlab: Path | None,
    gitlab_template: str,
    as_json: bool,
) -> int:
    """Plan the release matrix of RECIPES x profiles: one cell each, with inputs, cache key and runner.

    \b
    Example: edgex plan recipes/*.yaml --profiles raspberry-pi-5-cpu,sa8295p-qnn -o plan.json
    GitHub: strategy.matrix: ${{ fromJson(needs.plan.outputs.matrix) }} with `jq -c .matrix plan.json`.
    """
    from exporter.matrix.plan import make_plan, parse_shard, write_json

    ids = [p.strip() for item in profile_ids for p in item.split(",") if p.strip()]
    result = make_plan(
        list(recipes), ids or None, ctx.obj["profiles_dirs"], runners, parse_shard(shard), only_changed, max_cells
    )
    write_json(out, result)
    if gitlab is not None:
        import yaml

        from exporter.matrix.ci import gitlab_child

        child = gitlab_child(result, Path(out).as_posix(), gitlab_template)
        Path(gitlab).write_text(yaml.safe_dump(child, sort_keys=False, width=1000), encoding="utf-8")
    summary = {
        "plan": str(out),
        "matrix_id": result["matrix_id"],
        "cells_total": result["cells_total"],
        "count": result["count"],
        "shard": {"index": result["shard"]["index"], "count": result["shard"]["count"]},
        "cells": [c["cell"] for c in result["matrix"]["include"]],
    }
    emit(
        summary,
        as_json,
        lambda r: (
            f"{r['plan']}: {r['count']} cell(s) to build of {r['cells_total']} "
            f"(shard {r['shard']['index']}/{r['shard']['count']}, matrix {r['matrix_id'][:12]})"
        ),
    )
    return 0


@click.command()
@plan_opt("The plan.json to run.", required=True)
@click.option("--executor", type=click.Choice(["local", "ray"]), default="local", show_default=True)
@click.option(
    "-j",
    "--jobs",
    type=click.IntRange(1),
    default=2,
    show_default=True,
    help="Cells at once (local; CPUs of a new Ray cluster).",
)
@click.option(
    "--resource",
    "resources",
    multiple=True,
    help="NAME=N: capacity of a custom resource (a board), for the local pool or a new local Ray cluster.",
)
@click.option("--ray-address", help="Join this Ray cluster (e.g. auto) instead of starting a local one.")
@click.option("--out-root", type=click.Path(path_type=Path), default=Path("out"), show_default=True)
@JSON_OPT
@command
def run(
    plan_path: Path,
    executor: str,
    jobs: int,
    resources: tuple[str, ...],
    ray_address: str | None,
    out_root: Path,
    as_json: bool,
) -> int:
    """Build every cell of a plan's shard with an executor; cached cells are copied, not rebuilt.

    \b
    Example: edgex run --plan plan.json --executor ray --resource board-rpi5=1
    Exit code: the worst of the cells' (a failing cell never hides the others' results).
    """
    from exporter.matrix.executors import Settings, run_plan

    capacity = {}
    for item in resources:
        name, _, amount = item.partition("=")
        try:
            capacity[name.strip()] = float(amount)
        except ValueError:
            raise UsageError(
                f"'{item}' is not NAME=N", field="--resource", fix="e.g. --resource board-rpi5=1"
            ) from None
    result = run_plan(plan_path, executor, out_root, Settings(jobs, capacity, ray_address))

    def text(r: dict) -> str:
        lines = [f"{r['built']} built, {r['cached']} from the cache, {r['failed']} failed ({r['executor']})"]
        for c in r["cells"]:
            state = "cached" if c["cached"] else ("ok" if c["exit_code"] == 0 else f"exit {c['exit_code']}")
            lines.append(f"  {c['cell']:<48} {state:<8} {c['seconds']:7.1f} s  {c['error'] or ''}".rstrip())
        return "\n".join(lines)

    emit(result, as_json, text)
    return result["exit_code"]


@click.command()
@click.argument("manifests", nargs=-1, type=click.Path(path_type=Path))
@out_file_opt("The release.json to write.")
@plan_opt("Also check the cells against this plan.")
@JSON_OPT
@command
def merge(manifests: tuple[Path, ...], out: Path, plan_path: Path | None, as_json: bool) -> int:
    """Merge the cells' manifests into release.json; exit 1 on a missing, duplicate or altered cell.

    \b
    Example: edgex merge out/*/manifest.json -o release.json && edgex verify release.json
    """
    from exporter.matrix.merge import merge as run_merge
    from exporter.matrix.plan import load_plan

    result = run_merge(list(manifests), out, load_plan(plan_path) if plan_path else None)

    def text(r: dict) -> str:
        if r["problems"]:
            return "\n".join(["release NOT written:"] + [f"  {p['cell']}: {p['problem']}" for p in r["problems"]])
        bad = [c["id"] for c in r["cells"] if not c["ok"]]
        head = f"{out}: {len(r['cells'])} cells, {len(r['files'])} files"
        return head + (f"; BUDGET MISSED in {', '.join(bad)}" if bad else "; every cell within budget")

    return emit_judged(result, as_json, text)


COMMANDS = [compare, verify, sign, plan, run, merge]
