"""`edgex plan`: recipes x profiles -> a deterministic matrix of cells, in the shape CI matrices take.

Each cell carries its id, its inputs (every file it depends on, with its sha256), its cache key
and its runner (labels for the CI, resources for Ray). The same inputs give the same bytes: no
timestamps, sorted keys, paths relative to the folder the plan was made in (the repository root).
`matrix.include` is what GitHub's `fromJson` takes; `--shard k/N` keeps it under the 256-job
(GitHub) or 200-job (GitLab parallel:matrix) limits.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
from pathlib import Path

from pydantic import Field, field_validator

from exporter import cache as store
from exporter import log
from exporter.errors import UsageError
from exporter.matrix.inputs import profile_inputs, recipe_inputs, toolchain
from exporter.profiles import get_profiles, refuse_repeated
from exporter.quant.precisions import refuse_unrunnable
from exporter.recipe import load_recipe
from exporter.resources import shipped_dir
from exporter.schema_base import Strict, parse, read_yaml
from exporter.staging import atomic_file

SCHEMA_VERSION = 1
KIND = "edgex-plan"
CELL_FORMAT = 1  # bump when what a cell's cache entry holds changes
CACHE_KIND = "cells"
CACHE_MARK = "cell.json"
RESERVED = {"CPU", "GPU", "memory", "object_store_memory"}
DEFAULT_LABELS = ["ubuntu-latest"]


class Runner(Strict):
    """Where a cell runs: CI runner labels, and Ray custom resources (a board: `{board-rpi5: 1}`)."""

    labels: list[str] = Field(default_factory=lambda: list(DEFAULT_LABELS), min_length=1)
    resources: dict[str, float] = Field(default_factory=dict)

    @field_validator("resources")
    @classmethod
    def _custom_only(cls, value: dict[str, float]) -> dict[str, float]:
        for name, amount in value.items():
            if name in RESERVED:
                raise ValueError(f"'{name}' is Ray's own resource; name a custom one, e.g. board-{name.lower()}")
            if amount <= 0:
                raise ValueError(f"resource '{name}' must be a positive amount")
        return value


class Runners(Strict):
    """The runners file: a default and per-profile overrides (ops facts, kept out of device profiles)."""

    version: int = Field(default=1, ge=1, le=1)
    default: Runner = Field(default_factory=Runner)
    profiles: dict[str, Runner] = Field(default_factory=dict)


def portable(path: Path) -> str:
    """Relative to the working folder when inside it (so a plan is the same in any checkout)."""
    absolute = Path(os.path.abspath(path))
    if absolute.is_relative_to(Path.cwd()):
        return absolute.relative_to(Path.cwd()).as_posix()
    for name in ("device_profiles", "targets"):  # shipped with edgex: the same in every installation
        shipped = shipped_dir(name)
        if absolute.is_relative_to(shipped):
            return f"<edgex>/{name}/{absolute.relative_to(shipped).as_posix()}"
    return absolute.as_posix()


def runner_for(runners: Runners, profile_id: str) -> dict:
    """The default runner with the profile's own fields laid over it (labels, resources or both)."""
    own = runners.profiles.get(profile_id)
    return {
        **runners.default.model_dump(mode="json"),
        **(own.model_dump(mode="json", exclude_unset=True) if own else {}),
    }


def parse_shard(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    try:
        k, n = (int(x) for x in text.split("/"))
    except ValueError:
        k, n = 0, 0
    if not 1 <= k <= n:
        raise UsageError(f"'{text}' is not a shard", field="--shard", fix="write k/N with 1 <= k <= N, e.g. 2/3")
    return k, n


def load_runners(path: Path | None) -> Runners:
    return Runners() if path is None else parse(Runners, read_yaml(path, "runners"), path, "runners")


def cell_key(inputs: list[dict], recipe: dict, profile: dict, target: dict, tools: dict, runner: dict) -> str:
    """Full sha256 over input bytes (by digest), normalised config, step, toolchain and runner."""
    facts = {
        "step": {"name": "build-cell", "version": CELL_FORMAT},
        "inputs": [[i["role"], i["sha256"]] for i in inputs],
        "recipe": recipe,
        "profile": profile,
        "target": target,
        "tools": tools,
        "runner": runner,
    }
    return store.cache_key(facts, CELL_FORMAT)


def describe_cells(
    recipe_path: Path,
    profile_ids: list[str] | None,
    profiles_dirs: list[Path] | tuple[Path, ...],
    runners: Runners,
) -> list[dict]:
    """The cells of one recipe, with their inputs and keys (no cache lookups: a pure function of bytes)."""
    loaded = load_recipe(recipe_path)
    r = loaded.recipe
    ids = list(profile_ids) if profile_ids else r.profiles
    where = "--profiles" if profile_ids else loaded.path
    refuse_repeated(ids, where)
    with log.stdout_to_stderr():  # data callables are user code: their prints must not corrupt --json
        shared = recipe_inputs(loaded)
    tools = toolchain()
    recipe_cfg = r.model_dump(mode="json")
    cells = []
    for profile in get_profiles(ids, profiles_dirs, where=where):
        target, own = profile_inputs(profile, profiles_dirs)
        refuse_unrunnable(r.quantize, target, loaded.path, profile.id)
        runner = runner_for(runners, profile.id)
        inputs = shared + own
        key = cell_key(
            inputs,
            recipe_cfg,
            profile.model_dump(mode="json", by_alias=True),
            target.model_dump(mode="json"),
            tools,
            runner,
        )
        cells.append(
            {
                "id": f"{r.name}--{profile.id}",
                "recipe": portable(loaded.path),
                "recipe_name": r.name,
                "profile": profile.id,
                "target": target.id,
                "inputs": [{**i, "path": None if i["path"] is None else portable(Path(i["path"]))} for i in inputs],
                "tools": tools,
                "key": key,
                "runner": runner,
            }
        )
    return cells


def matrix_id(cells: list[dict]) -> str:
    """Names the whole matrix (every cell id and key): merge refuses cells of another plan."""
    blob = json.dumps(sorted([c["id"], c["key"]] for c in cells), separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


def cached(key: str) -> bool:
    return store.lookup(CACHE_KIND, key, CACHE_MARK) is not None


def make_plan(
    recipes: list[Path],
    profile_ids: list[str] | None = None,
    profiles_dirs: list[Path] | tuple[Path, ...] = (),
    runners_file: Path | None = None,
    shard: tuple[int, int] | None = None,
    only_changed: bool = False,
    max_cells: int = 256,
) -> dict:
    """Every (recipe, profile) cell; `matrix.include` holds this shard's cells (minus cached ones
    with only_changed). Without only_changed the plan depends on the inputs' bytes alone."""
    if not recipes:
        raise UsageError("no recipes given", field="RECIPES", fix="e.g. edgex plan recipes/*.yaml -o plan.json")
    runners = load_runners(runners_file)
    cells: list[dict] = []
    origin: dict[str, str] = {}
    for path in recipes:
        for cell in describe_cells(Path(path), profile_ids, profiles_dirs, runners):
            if cell["id"] in origin:
                raise UsageError(
                    f"cell '{cell['id']}' comes from two recipes ({origin[cell['id']]} and {cell['recipe']})",
                    path=cell["recipe"],
                    field="name",
                    fix="give each recipe a distinct `name` (and list each recipe once)",
                )
            origin[cell["id"]] = cell["recipe"]
            cells.append(cell)
    cells.sort(key=lambda c: c["id"])
    k, n = shard or (1, 1)
    mine = cells[(k - 1) * len(cells) // n : k * len(cells) // n]
    chosen = [c for c in mine if not (only_changed and cached(c["key"]))]
    if max_cells and len(chosen) > max_cells:
        need = -(-len(cells) // max_cells)
        raise UsageError(
            f"{len(chosen)} cells in one matrix, more than {max_cells} (GitHub: 256 jobs, GitLab: 200)",
            field="--shard",
            fix=f"split it with --shard k/{need} (k = 1..{need}), or raise --max-cells",
        )
    include = [
        {
            "cell": c["id"],
            "recipe": c["recipe"],
            "profile": c["profile"],
            "key": c["key"],
            "runner": c["runner"]["labels"],
        }
        for c in chosen
    ]
    return {
        "schema_version": SCHEMA_VERSION,
        "kind": KIND,
        "matrix_id": matrix_id(cells),
        "cells_total": len(cells),
        "profiles_dirs": [portable(Path(d)) for d in profiles_dirs],
        "shard": {"index": k, "count": n, "cells": [c["id"] for c in mine]},
        "only_changed": only_changed,
        "count": len(include),
        "matrix": {"include": include},
        "cells": cells,
    }


def write_json(path: Path, data: dict) -> None:
    """Deterministic bytes, written atomically (a reader never sees half a plan)."""
    path = Path(path)
    if path.is_symlink() or path.is_dir():
        raise UsageError(
            "refusing to write through a symlink or over a folder", path=path, field="-o", fix="give a file path"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def load_plan(path: Path) -> dict:
    path = Path(path)
    try:
        plan = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError("plan file not found", path=path, field="--plan", fix="make one with `edgex plan`") from None
    except (ValueError, UnicodeDecodeError):
        raise UsageError(
            "not a JSON file", path=path, field="--plan", fix="give the plan.json `edgex plan` wrote"
        ) from None
    if not isinstance(plan, dict) or plan.get("kind") != KIND:
        raise UsageError("not an edgex plan", path=path, field="kind", fix="give the plan.json `edgex plan` wrote")
    if plan.get("schema_version") != SCHEMA_VERSION:
        raise UsageError(
            f"plan schema_version {plan.get('schema_version')} is not {SCHEMA_VERSION}",
            path=path,
            field="schema_version",
            fix="re-run `edgex plan` with this edgex",
        )
    return plan


def find_cell(plan: dict, cell_id: str, where: Path) -> dict:
    for cell in plan["cells"]:
        if cell["id"] == cell_id:
            return cell
    guess = difflib.get_close_matches(cell_id, [c["id"] for c in plan["cells"]], n=1)
    fix = f"did you mean '{guess[0]}'?" if guess else "see the plan's `cells` for the ids"
    raise UsageError(f"no cell '{cell_id}' in this plan", path=where, field="--cell", fix=fix)


def changed_inputs(planned: dict, current: dict) -> list[str]:
    """Why a cell's key moved: the roles whose bytes changed, or the toolchain/runner/config."""
    before = {(i["role"], i["path"]): i["sha256"] for i in planned["inputs"]}
    after = {(i["role"], i["path"]): i["sha256"] for i in current["inputs"]}
    names = [
        f"{role} {path or ''}".strip()
        for (role, path) in sorted(set(before) | set(after), key=str)
        if before.get((role, path)) != after.get((role, path))
    ]
    names += [
        f"tool {k}"
        for k in sorted(set(planned["tools"]) | set(current["tools"]))
        if planned["tools"].get(k) != current["tools"].get(k)
    ]
    if planned["runner"] != current["runner"]:
        names.append("runner")
    return names or ["normalised recipe/profile/target settings"]
