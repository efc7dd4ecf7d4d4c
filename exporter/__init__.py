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
    from exporter.bench_file import bench_file
    from exporter.profiles import get_profiles

    return bench_file(Path(model), get_profiles([profile], profiles_dirs)[0])


def inspect(model: str | Path) -> dict:
    from exporter.graph_stats import inspect_model
    from exporter.onnx_io import check_onnx_file

    check_onnx_file(Path(model))
    return inspect_model(Path(model))


__all__ = ["build", "validate", "bench", "inspect", "__version__"]
