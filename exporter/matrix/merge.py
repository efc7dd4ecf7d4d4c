"""`edgex merge out/*/manifest.json -o release.json`: the cells of one plan, checked and joined.

Refused (exit 1, nothing written): a cell of the plan with no manifest, two manifests for one
cell, a cell whose files differ from its manifest (every file is re-hashed, as `edgex verify`
does), or cells from another plan (the matrix id covers every cell's id and key, so a cell
whose key was edited is caught too). release.json lists every cell's manifest digest and every
file (paths relative to release.json's folder); `edgex verify release.json` re-checks all of it.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

from exporter.digest import sha256_file
from exporter.errors import UsageError
from exporter.manifest_schema import MANIFEST, manifest_file, read_manifest
from exporter.matrix.plan import matrix_id, write_json
from exporter.verify import RELEASE_KIND, verify

SCHEMA_VERSION = 1


def _read_cell(path: Path) -> dict:
    path = manifest_file(path)
    manifest = read_manifest(path)
    if manifest.cell is None:
        raise UsageError(
            "not the manifest of a matrix cell (no `cell` record)",
            path=path,
            field="cell",
            fix="build cells with `edgex build --plan plan.json --cell ID`",
        )
    return {"path": path, "manifest": manifest, "cell": manifest.cell.to_dict()}


def _rel(path: Path, base: Path) -> str:
    return Path(os.path.relpath(os.path.abspath(path), os.path.abspath(base))).as_posix()


def check_cells(paths: list[Path], plan: dict | None = None) -> tuple[list[dict], list[dict]]:
    """Read and check every cell; returns (cells, problems)."""
    if not paths:
        raise UsageError(
            "no manifests given", field="MANIFESTS", fix="e.g. edgex merge out/*/manifest.json -o release.json"
        )
    cells = [_read_cell(p) for p in paths]
    problems: list[dict] = []
    ids = {}
    for c in cells:
        cid = c["cell"]["id"]
        if cid in ids:
            problems.append({"cell": cid, "problem": f"duplicate: {ids[cid]} and {c['path']}"})
        else:
            ids[cid] = c["path"]
    if plan:
        expected_id, expected = plan["matrix_id"], sorted(c["id"] for c in plan["cells"])
    else:  # the plan most cells name; a stale cell from an older plan is the odd one out
        expected_id = Counter(c["cell"]["matrix"]["id"] for c in cells).most_common(1)[0][0]
        expected = next(c["cell"]["matrix"]["cells"] for c in cells if c["cell"]["matrix"]["id"] == expected_id)
    for c in cells:
        if c["cell"]["matrix"]["id"] != expected_id:
            problems.append({"cell": c["cell"]["id"], "problem": f"belongs to another plan ({c['path']})"})
    problems += [{"cell": cid, "problem": "missing: no manifest for this cell"} for cid in expected if cid not in ids]
    problems += [{"cell": cid, "problem": "not a cell of this plan"} for cid in sorted(set(ids) - set(expected))]
    if not problems and matrix_id([c["cell"] for c in cells]) != expected_id:
        problems.append({"cell": "*", "problem": "cell keys do not add up to the plan's matrix id (a key was changed)"})
    if plan:
        keys = {c["id"]: c["key"] for c in plan["cells"]}
        problems += [
            {"cell": c["cell"]["id"], "problem": "cache key differs from the plan's"}
            for c in cells
            if c["cell"]["id"] in keys and keys[c["cell"]["id"]] != c["cell"]["key"]
        ]
    for c in cells:
        result = verify(c["path"].parent)
        problems += [{"cell": c["cell"]["id"], "problem": f"{p['path']}: {p['problem']}"} for p in result["problems"]]
    return cells, problems


def merge(paths: list[Path], out: Path, plan: dict | None = None) -> dict:
    """The merged release (written to OUT only when every check passed)."""
    cells, problems = check_cells(paths, plan)
    base = Path(out).parent
    result = {"schema_version": SCHEMA_VERSION, "kind": RELEASE_KIND, "problems": problems, "ok": False}
    if problems:
        return result
    cells.sort(key=lambda c: c["cell"]["id"])
    entries, files, profiles = [], [], []
    for c in cells:
        folder = _rel(c["path"].parent, base)
        m = c["manifest"]
        entries.append(
            {
                "id": c["cell"]["id"],
                "key": c["cell"]["key"],
                "recipe": m.recipe.name,
                "profile": c["cell"]["profile"],
                "folder": folder,
                "manifest": {"path": f"{folder}/{MANIFEST}", "sha256": sha256_file(c["path"])},
                "ok": m.ok,
            }
        )
        files += [{**f.to_dict(), "path": f"{folder}/{f.path}"} for f in m.files]
        profiles += [{**p.to_dict(), "cell": c["cell"]["id"], "folder": folder} for p in m.profiles]
    result.update(
        {
            "matrix_id": cells[0]["cell"]["matrix"]["id"],
            "tool_versions": cells[0]["manifest"].tool_versions,
            "cells": entries,
            "profiles": profiles,
            "files": files,
            "ok": all(e["ok"] for e in entries),
        }
    )
    write_json(out, result)
    return result
