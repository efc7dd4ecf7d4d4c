"""`edgex validate`: everything `build` checks before it writes a file, and nothing more."""

from __future__ import annotations

from pathlib import Path

from exporter import log
from exporter.pipeline import prepare


def validate_recipe(recipe: str | Path, profiles_dirs: tuple[Path, ...] | list[Path] = ()) -> dict:
    with log.stdout_to_stderr():
        ctx = prepare(recipe, None, profiles_dirs, with_reference=False)
    return {
        "recipe": str(ctx.loaded.path),
        "ok": True,
        "profiles": len(ctx.profiles),
        "calibration_samples": len(ctx.calibration),
        "evaluation_samples": len(ctx.evaluation),
    }
