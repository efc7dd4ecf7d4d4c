"""edgex: one pipeline from a PyTorch or ONNX model to per-device, benchmarked edge artifacts.

Python API (mirrors the CLI):
    exporter.build(recipe, profiles=None, out=None) -> manifest dict
    exporter.validate(recipe) -> summary dict
    exporter.bench(model_path, profile_id) -> result dict
    exporter.inspect(model_path) -> facts dict
"""

from __future__ import annotations

from pathlib import Path

__version__ = "0.1.0"


def build(
    recipe: str | Path,
    profiles: list[str] | None = None,
    out: str | Path | None = None,
    profiles_dirs: list[Path] | tuple[Path, ...] = (),
) -> dict:
    from exporter.pipeline import build as _build

    return _build(recipe, profiles, out, profiles_dirs)


def validate(recipe: str | Path, profiles_dirs: list[Path] | tuple[Path, ...] = ()) -> dict:
    from exporter.validate import validate_recipe

    return validate_recipe(recipe, profiles_dirs)


def bench(model: str | Path, profile: str, profiles_dirs: list[Path] | tuple[Path, ...] = ()) -> dict:
    from exporter.isolate import run_on_model
    from exporter.profiles import get_profiles
    from exporter.recipe import BenchSection
    from exporter.sandbox_jobs import bench_job

    prof = get_profiles([profile], profiles_dirs)[0]
    payload = {"profile": prof.id, "profiles_dirs": [str(d) for d in profiles_dirs]}
    settings = BenchSection()
    return run_on_model(
        bench_job, Path(model), {**payload, "settings": settings.model_dump()}, 2 * settings.max_seconds
    )


def inspect(model: str | Path) -> dict:
    from exporter.isolate import run_on_model
    from exporter.sandbox_jobs import inspect_job

    return run_on_model(inspect_job, Path(model), {})


__all__ = ["build", "validate", "bench", "inspect", "__version__"]
