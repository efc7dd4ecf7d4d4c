"""The jobs the sandbox (`exporter.isolate`) runs on models the user gave, one per command.

They live here, above the guard, so the guard imports none of them: a caller names a job
(`run_on_model(bench_job, ...)`) and the child imports it by reference. Each takes the JSON
payload the parent sent and returns JSON-able data. Adding a job is one function here marked
with `sandbox_job`.

Input shapes travel in the payload as given (`shapes`: {name: sizes} from `--shape`, or a recipe's
inputs) and are resolved against the file here, in the child (`exporter.shapes.resolve_shapes`):
the model is only ever parsed where it may be run.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from exporter.errors import EdgexError, UsageError
from exporter.isolate import run_isolated, sandbox_job
from exporter.shapes import SHAPE_FLAG


def probe(
    model: Path,
    field: str = "model",
    threads: int = 1,
    shapes: dict[str, list[int]] | None = None,
    shapes_field: str = SHAPE_FLAG,
    values: dict[str, Any] | None = None,
) -> dict:
    """Create a session for MODEL and run it once on seeded inputs of the given shapes, in the sandbox.

    shapes: sizes for the file's dynamic dimensions (a build passes its recipe's `inputs`, named by
    `shapes_field` in errors); a dynamic dimension without one is exit 2, never a guessed 1.
    values: inputs fed as given instead of seeded data (constants such as a sample rate, states'
    initial values: `exporter.feeding.fixed_values`)."""
    import numpy as np

    given = {k: np.asarray(v).tolist() for k, v in (values or {}).items()}  # JSON for the child
    payload = {
        "path": str(model),
        "threads": threads,
        "field": field,
        "shapes": shapes,
        "shapes_field": shapes_field,
        "values": given,
    }
    return run_isolated(probe_job, payload, model, field)


def _resolved(p: dict, field: str = SHAPE_FLAG) -> dict[str, list[int]]:
    """The payload's shapes resolved against the model file (the child's copy of the file)."""
    import onnx

    from exporter.shapes import resolve_shapes

    path = Path(p["path"])
    model = onnx.load(str(path), load_external_data=False)
    return resolve_shapes(model, p.get("shapes"), path, p.get("shapes_field", field))


@sandbox_job
def probe_job(p: dict) -> dict:
    from exporter.bench.board_script import synthetic_feed
    from exporter.runtime import make_session

    shapes = _resolved(p)
    session = _session(Path(p["path"]), p["field"], p.get("threads", 1), make_session)
    feed = synthetic_feed(session, shapes=shapes, values=p.get("values"))
    try:
        outs = session.run(None, feed)
    except Exception as exc:
        raise _runtime_refusal(exc, Path(p["path"]), p["field"], shapes) from None
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
    path, shapes = Path(p["path"]), _resolved(p)
    settings = BenchSection(**p["settings"])
    return _guarded(
        path,
        lambda: bench_file(
            path, prof, settings, power_sensor=p.get("power_sensor"), shapes=shapes, values=p.get("values")
        ),
        shapes,
    )


@sandbox_job
def inspect_job(p: dict) -> dict:
    from exporter.graph_stats import inspect_model

    shapes = _resolved(p)
    return {**inspect_model(Path(p["path"]), shapes), "shapes": shapes}


@sandbox_job
def quantize_job(p: dict) -> dict:
    from exporter.profiles import get_profiles
    from exporter.quant.standalone import quantize_file

    prof = get_profiles([p["profile"]], [Path(d) for d in p["profiles_dirs"]])[0]
    path, shapes = Path(p["path"]), _resolved(p)
    args = dict(p["args"])
    for key in ("calibration", "out", "evaluation"):
        if args.get(key) is not None:
            args[key] = Path(args[key])
    return _guarded(path, lambda: quantize_file(path, prof, shapes=shapes, **args), shapes)


@sandbox_job
def diagnose_job(p: dict) -> dict:
    from exporter.bench.board_script import synthetic_feed
    from exporter.quant.diagnose import diagnose

    path = Path(p["path"])
    fp32 = Path(p["fp32"]) if p.get("fp32") else None
    shapes = _resolved(p)
    report = _guarded(path, lambda: diagnose(path, synthetic_feed(path, shapes=shapes), fp32), shapes)
    return {**report, "shapes": shapes}


def _session(path: Path, field: str, threads: int, make: Callable):
    try:
        return make(path, threads)
    except Exception as exc:
        raise _runtime_refusal(exc, path, field) from None


def _first_line(text: str, limit: int = 300) -> str:
    """The first line, shortened at a word boundary (never mid-word) when longer than `limit`."""
    line = (text.strip().splitlines() or [""])[0]
    if len(line) <= limit:
        return line
    cut = line[:limit].rsplit(" ", 1)[0]
    return cut + " ..."


def _runtime_refusal(exc: BaseException, path: Path, field: str, shapes: dict | None = None) -> Exception:
    """onnxruntime refusing the model: loading it is the file's problem; running it at the shapes
    used is most often the shapes' (or an input's values'), so the message says which."""
    if isinstance(exc, MemoryError) or "alloc" in str(exc).lower():
        return MemoryError(_first_line(str(exc)) or "allocation failed")
    first = _first_line(str(exc)) or type(exc).__name__
    if shapes is not None and "while running" in str(exc):
        from exporter.shapes import describe

        return UsageError(
            f"onnxruntime failed running this model at {describe(shapes)} ({type(exc).__name__}: {first})",
            path=path,
            field=field,
            fix="check the sizes against what the model expects (--shape; `edgex inspect` shows what it declares)",
        )
    return UsageError(
        f"onnxruntime cannot run this model ({type(exc).__name__}: {first})",
        path=path,
        field=field,
        fix="re-export the model; `edgex inspect` shows what it declares",
    )


def _guarded(path: Path, fn: Callable[[], Any], shapes: dict | None = None) -> Any:
    """onnxruntime's own refusals of a given model are the model's problem (exit 2), not edgex's."""
    try:
        return fn()
    except EdgexError:
        raise
    except Exception as exc:
        if type(exc).__module__.startswith("onnxruntime"):
            raise _runtime_refusal(exc, path, "model", shapes) from None
        raise
