"""Executors: who runs the cells of a plan. edgex schedules nothing itself.

One small interface: an executor takes the cells still to build (`CellJob`s) and settings, and
returns one result per job, failures included (a failing cell never hides the others). Every
executor runs the same command per cell, `edgex build --plan P --cell ID --out OUT --json`, in a
child process, so a cell built by the process pool, by Ray or by a CI job is the same bytes; a
crash (even a segfault) is that cell's failure only. Cached cells never reach an executor: the
driver copies them out first, so a second run of an unchanged matrix does no work.

- `local`: a pool of worker threads, each waiting on its child process; a custom resource
  (a board) admits one cell at a time unless given a larger capacity.
- `ray`: one Ray task per cell with `num_cpus=1` and the cell's custom resources, so Ray's
  scheduler never runs two cells on one board at once (`edgex[ray]`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from exporter import log
from exporter.errors import EXIT_INTERNAL, EXIT_USAGE, EdgexError, UsageError


@dataclass(frozen=True)
class CellJob:
    """Everything a worker anywhere needs to build one cell (absolute paths, explicit cache dir)."""

    cell: str
    plan: str
    out: str
    cwd: str
    env: dict[str, str] = field(default_factory=dict)
    resources: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Settings:
    workers: int = 2
    resources: dict[str, float] = field(default_factory=dict)  # capacity: local pool, or a new local Ray cluster
    address: str | None = None  # Ray: join this cluster instead of starting one


def _tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def run_cell_process(job: CellJob) -> dict:
    """Build one cell in a child process; the times bracket the whole cell (board occupancy)."""
    started = time.time()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "exporter.cli",
            "build",
            "--plan",
            job.plan,
            "--cell",
            job.cell,
            "--out",
            job.out,
            "--json",
        ],
        cwd=job.cwd,
        env={**os.environ, **job.env},
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    ended = time.time()
    try:
        data = json.loads(proc.stdout)
    except ValueError:
        data = {}
    code = proc.returncode if proc.returncode >= 0 else EXIT_INTERNAL
    error = None
    if proc.returncode < 0:
        error = f"the build process was killed by signal {-proc.returncode}"
    elif "error" in data:
        error = data["error"]["message"]
    elif code not in (0, 1):
        error = _tail(proc.stderr, 1) or f"exit code {code}"
    result = record(
        job,
        code,
        error,
        ok=bool(data.get("ok", False)) if code in (0, 1) else False,
        cached=bool(data.get("cached", False)),
        started=started,
        ended=ended,
    )
    result["stderr_tail"] = _tail(proc.stderr) if code else ""
    return result


def record(
    job: CellJob,
    code: int,
    error: str | None,
    *,
    ok: bool = False,
    cached: bool = False,
    started: float | None = None,
    ended: float | None = None,
) -> dict:
    """One cell's result in the shape every executor returns."""
    ended = time.time() if ended is None else ended
    started = ended if started is None else started
    return {
        "cell": job.cell,
        "exit_code": code,
        "ok": ok,
        "cached": cached,
        "out": job.out,
        "started": started,
        "ended": ended,
        "seconds": round(ended - started, 3),
        "error": error,
        "stderr_tail": "",
    }


def failure(job: CellJob, code: int, message: str) -> dict:
    return record(job, code, message)


class _Capacity:
    """Custom resources for the local pool: a cell waits until all it asks for is free."""

    def __init__(self, capacity: dict[str, float]):
        self.free = dict(capacity)
        self.cond = threading.Condition()

    def acquire(self, need: dict[str, float]) -> None:
        with self.cond:
            for name in need:
                self.free.setdefault(name, 1.0)  # a board runs one cell at a time unless told otherwise
            self.cond.wait_for(lambda: all(self.free[n] >= a for n, a in need.items()))
            for n, a in need.items():
                self.free[n] -= a

    def release(self, need: dict[str, float]) -> None:
        with self.cond:
            for n, a in need.items():
                self.free[n] += a
            self.cond.notify_all()


def run_local(jobs: list[CellJob], settings: Settings) -> list[dict]:
    capacity = _Capacity(settings.resources)

    def one(job: CellJob) -> dict:
        capacity.acquire(job.resources)
        try:
            log.info(f"[{job.cell}] building")
            return run_cell_process(job)
        except Exception as exc:  # the pool itself failed for this cell (e.g. no such interpreter)
            return failure(job, EXIT_INTERNAL, f"{type(exc).__name__}: {exc}")
        finally:
            capacity.release(job.resources)

    with ThreadPoolExecutor(max_workers=max(1, settings.workers)) as pool:
        return list(pool.map(one, jobs))


def run_ray(jobs: list[CellJob], settings: Settings) -> list[dict]:
    try:
        import ray
    except ImportError:
        raise UsageError(
            "Ray is not installed", field="--executor", fix="pip install 'edgex[ray]', or use --executor local"
        ) from None
    started_here = not ray.is_initialized()
    if started_here:
        if settings.address:
            ray.init(address=settings.address, log_to_driver=False)
        else:
            ray.init(
                num_cpus=settings.workers,
                resources=settings.resources or None,
                include_dashboard=False,
                log_to_driver=False,
            )
    try:
        available = ray.cluster_resources()
        remote = ray.remote(num_cpus=1, max_retries=0)(run_cell_process)
        results: dict[str, dict] = {}
        refs = {}
        for job in jobs:
            lacking = sorted(n for n, a in job.resources.items() if available.get(n, 0) < a)
            if lacking:
                results[job.cell] = failure(
                    job,
                    EXIT_USAGE,
                    f"the Ray cluster has no resource {', '.join(lacking)} — start it with "
                    f"`ray start --resources '{{\"{lacking[0]}\": 1}}'` or `edgex run --resource {lacking[0]}=1`",
                )
                continue
            ref = remote.options(resources=dict(job.resources), name=f"edgex-{job.cell}").remote(job)
            refs[ref] = job
        pending = list(refs)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            for ref in done:
                job = refs[ref]
                try:
                    results[job.cell] = ray.get(ref)
                except Exception as exc:  # a crashed worker or a lost node fails this cell only
                    first = (str(exc).strip().splitlines() or [""])[0][:300]
                    results[job.cell] = failure(job, EXIT_INTERNAL, f"Ray task failed: {type(exc).__name__}: {first}")
        return [results[j.cell] for j in jobs]
    finally:
        if started_here:
            ray.shutdown()


Executor = Callable[[list[CellJob], Settings], list[dict]]
EXECUTORS: dict[str, Executor] = {"local": run_local, "ray": run_ray}


def run_plan(
    plan_path: Path, executor: str = "local", out_root: Path = Path("out"), settings: Settings | None = None
) -> dict:
    """Every cell of the plan's shard: cached ones copied out here, the rest handed to the executor."""
    from exporter.cache import cache_root
    from exporter.matrix.cell import build_cell
    from exporter.matrix.plan import find_cell, load_plan

    if executor not in EXECUTORS:
        raise UsageError(f"unknown executor '{executor}'", field="--executor", fix=f"use one of {', '.join(EXECUTORS)}")
    settings = settings or Settings()
    plan = load_plan(plan_path)
    plan_abs = str(Path(plan_path).resolve())
    env = {"EDGEX_CACHE_DIR": str(cache_root().resolve())}
    results, jobs = [], []
    for cell_id in plan["shard"]["cells"]:
        cell = find_cell(plan, cell_id, Path(plan_path))
        out = Path(out_root) / cell_id
        job = CellJob(cell_id, plan_abs, str(out.resolve()), str(Path.cwd()), env, dict(cell["runner"]["resources"]))
        started = time.time()
        try:
            hit = build_cell(Path(plan_path), cell_id, out, only_cached=True)
        except EdgexError as exc:
            results.append(failure(job, exc.exit_code, exc.one_line()))
            continue
        if hit is None:
            jobs.append(job)
        else:
            results.append(record(job, 0, None, ok=hit["ok"], cached=True, started=started))
    log.info(f"{len(results)} cell(s) from the cache or refused, {len(jobs)} to build with '{executor}'")
    if jobs:
        results += EXECUTORS[executor](jobs, settings)
    results.sort(key=lambda r: r["cell"])
    return {
        "plan": str(plan_path),
        "executor": executor,
        "cells": results,
        "built": sum(1 for r in results if not r["cached"] and r["exit_code"] in (0, 1)),
        "cached": sum(1 for r in results if r["cached"]),
        "failed": sum(1 for r in results if r["exit_code"] not in (0, 1)),
        "dispatched": len(jobs),
        "ok": all(r["exit_code"] == 0 and r["ok"] for r in results),
        "exit_code": max((r["exit_code"] for r in results), default=0),
    }
