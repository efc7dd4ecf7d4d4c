"""`edgex build --plan plan.json --cell ID`: one cell, a pure function of its inputs.

The cell's key is recomputed from the files as they are now and must equal the plan's (a plan
made before an edit would otherwise file new bytes under an old key). A complete cache entry is
copied out; otherwise the cell is built with `pipeline.build` into a scratch folder of the cache
and, when it met every budget, renamed into place. Either way OUT is a copy of the entry, so a
fresh and a cached build ship the same bytes. A cell that missed a budget is not cached: the
next run builds it again (a latency miss may be noise on a busy runner).
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from exporter import cache as store
from exporter import log
from exporter.errors import UsageError
from exporter.manifest import write_manifest
from exporter.manifest_schema import Cell, read_manifest
from exporter.matrix.plan import (
    CACHE_KIND,
    CACHE_MARK,
    Runner,
    Runners,
    changed_inputs,
    describe_cells,
    find_cell,
    load_plan,
)
from exporter.staging import check_output, staged_output


def default_out(cell_id: str) -> Path:
    return Path("out") / cell_id


def check_key(plan: dict, cell: dict, plan_path: Path) -> None:
    """Refuse to build a cell whose inputs changed since the plan was made (exit 2)."""
    dirs = [Path(d) for d in plan["profiles_dirs"]]
    runners = Runners(default=Runner(**cell["runner"]))
    current = next(
        c for c in describe_cells(Path(cell["recipe"]), [cell["profile"]], dirs, runners) if c["id"] == cell["id"]
    )
    if current["key"] != cell["key"]:
        raise UsageError(
            f"cell '{cell['id']}': inputs changed since the plan was made ({', '.join(changed_inputs(cell, current))})",
            path=plan_path,
            field="cells",
            fix="re-run `edgex plan` (run plan and build from the same folder, with the same edgex)",
        )


def _cell_record(plan: dict, cell: dict) -> dict:
    return {
        "id": cell["id"],
        "key": cell["key"],
        "recipe": cell["recipe"],
        "recipe_name": cell["recipe_name"],
        "profile": cell["profile"],
        "matrix": {"id": plan["matrix_id"], "cells": sorted(c["id"] for c in plan["cells"])},
    }


def _entry_ok(entry: Path) -> bool:
    from exporter.verify import verify

    return verify(entry / "release")["ok"]


def cached_entry(key: str) -> Path | None:
    """A complete entry whose files still match its manifest; a damaged one is discarded, and said."""
    entry = store.lookup(CACHE_KIND, key, CACHE_MARK)
    if entry is None:
        return None
    if _entry_ok(entry):
        return entry
    log.info(f"cache entry {key[:12]} does not match its manifest: discarded, the cell is built again")
    store.discard(CACHE_KIND, key)
    return None


def materialise(plan: dict, cell: dict, entry: Path, out: Path) -> dict:
    """Copy the entry to OUT (atomically) with the cell's record in its manifest."""
    manifest = read_manifest(entry / "release").model_copy(update={"cell": Cell(**_cell_record(plan, cell))})
    with staged_output(out) as stage:
        shutil.copytree(entry / "release", stage, dirs_exist_ok=True)
        write_manifest(stage, manifest)  # sealed again: the digest covers the cell record
    return manifest.sealed().to_dict()


def build_cell(
    plan_path: Path, cell_id: str, out: Path | None = None, only_cached: bool = False, rebuild: bool = False
) -> dict | None:
    """Build (or fetch) one cell into OUT; returns its manifest and how it was obtained.

    only_cached: return None instead of building (the executors' driver uses it to skip work).
    """
    plan = load_plan(plan_path)
    cell = find_cell(plan, cell_id, plan_path)
    out = Path(out) if out is not None else default_out(cell_id)
    check_output(out)
    started = time.time()
    check_key(plan, cell, plan_path)
    entry = None if rebuild else cached_entry(cell["key"])
    if entry is None and only_cached:
        return None
    hit = entry is not None
    if entry is None:
        entry = _build_into_cache(plan, cell)
    manifest = materialise(plan, cell, entry, out)
    if not hit and not manifest["ok"]:
        shutil.rmtree(entry, ignore_errors=True)  # a private scratch folder, never a cache entry
    return {
        "cell": cell_id,
        "out": str(out),
        "cached": hit,
        "ok": manifest["ok"],
        "seconds": round(time.time() - started, 3),
        "manifest": manifest,
    }


def _build_into_cache(plan: dict, cell: dict) -> Path:
    """Build in a scratch folder of the cache; a cell that met every budget becomes the entry."""
    from exporter.pipeline import build

    key = cell["key"]
    scratch = store.scratch(CACHE_KIND, key)
    try:
        log.info(f"[{cell['id']}] build (cache key {key[:12]})")
        manifest = build(
            Path(cell["recipe"]), [cell["profile"]], scratch / "release", [Path(d) for d in plan["profiles_dirs"]]
        )
        (scratch / CACHE_MARK).write_text(
            json.dumps({"id": cell["id"], "key": key, "ok": manifest["ok"]}, sort_keys=True) + "\n", encoding="utf-8"
        )
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    if not manifest["ok"]:
        return scratch
    final = store.put(CACHE_KIND, key, scratch)
    if not (final / CACHE_MARK).is_file():  # pragma: no cover - the rename lost to a reader's discard
        raise RuntimeError(f"cache entry {key[:12]} vanished while storing it")
    return final
