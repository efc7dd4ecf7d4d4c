"""The jobs the sandbox (`exporter.isolate`) runs on models the user gave, one per command.

They live here, above the guard, so the guard imports none of them: a caller names a job
(`run_on_model(bench_job, ...)`) and the child imports it by reference. Each takes the JSON
payload the parent sent and returns JSON-able data. Adding a job is one function here marked
with `sandbox_job`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from exporter.errors import EdgexError, UsageError
from exporter.isolate import run_isolated, sandbox_job


def probe(model: Path, field: str = "model", threads: int = 1) -> dict:
    """Create a session for MODEL and run it once on seeded inputs of its declared shapes, in the sandbox."""
    return run_isolated(probe_job, {"path": str(model), "threads": threads, "field": field}, model, field)


@sandbox_job
def probe_job(p: dict) -> dict:
    from exporter.bench.board_script import synthetic_feed
    from exporter.runtime import make_session

    session = _session(Path(p["path"]), p["field"], p.get("threads", 1), make_session)
    feed = synthetic_feed(session)
    try:
        outs = session.run(None, feed)
    except Exception as exc:
        raise _runtime_refusal(exc, Path(p["path"]), p["field"]) from None
    import numpy as np

    return {
        "inputs": {k: list(v.shape) for k, v in feed.items()},
        "outputs": [list(np.shape(o)) for o in outs],
        "finite": all(bool(np.isfinite(o).all()) for o in outs if isinstance(o, np.ndarray) and o.dtype.kind in "fc"),
    }


@sandbox_job
def bench_job(p: dict) -> dict:
    from exporter.bench_file import bench_file
    from exporter.profiles import get_profiles
    from exporter.recipe import BenchSection

    prof = get_profiles([p["profile"]], [Path(d) for d in p["profiles_dirs"]])[0]
    return _guarded(
        Path(p["path"]),
        lambda: bench_file(Path(p["path"]), prof, BenchSection(**p["settings"]), power_sensor=p.get("power_sensor")),
    )


@sandbox_job
def inspect_job(p: dict) -> dict:
    from exporter.graph_stats import inspect_model

    return inspect_model(Path(p["path"]))


@sandbox_job
def quantize_job(p: dict) -> dict:
    from exporter.profiles import get_profiles
    from exporter.quant.standalone import quantize_file

    prof = get_profiles([p["profile"]], [Path(d) for d in p["profiles_dirs"]])[0]
    args = dict(p["args"])
    for key in ("calibration", "out", "evaluation"):
        if args.get(key) is not None:
            args[key] = Path(args[key])
    return _guarded(Path(p["path"]), lambda: quantize_file(Path(p["path"]), prof, **args))


@sandbox_job
def diagnose_job(p: dict) -> dict:
    from exporter.bench.board_script import synthetic_feed
    from exporter.quant.diagnose import diagnose

    path = Path(p["path"])
    fp32 = Path(p["fp32"]) if p.get("fp32") else None
    return _guarded(path, lambda: diagnose(path, synthetic_feed(path), fp32))


def _session(path: Path, field: str, threads: int, make: Callable):
    try:
        return make(path, threads)
    except Exception as exc:
        raise _runtime_refusal(exc, path, field) from None


def _runtime_refusal(exc: BaseException, path: Path, field: str) -> Exception:
    if isinstance(exc, MemoryError) or "alloc" in str(exc).lower():
        return MemoryError(str(exc).splitlines()[0][:300] if str(exc) else "allocation failed")
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
    return UsageError(
        f"onnxruntime cannot run this model ({type(exc).__name__}: {first})",
        path=path,
        field=field,
        fix="re-export the model; `edgex inspect` shows what it declares",
    )


def _guarded(path: Path, fn: Callable[[], Any]) -> Any:
    """onnxruntime's own refusals of a given model are the model's problem (exit 2), not edgex's."""
    try:
        return fn()
    except EdgexError:
        raise
    except Exception as exc:
        if type(exc).__module__.startswith("onnxruntime"):
            raise _runtime_refusal(exc, path, "model") from None
        raise
