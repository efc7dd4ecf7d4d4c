"""`edgex validate`: everything `build` checks before it writes a file, and nothing more."""

from __future__ import annotations

from pathlib import Path

from exporter.data import load_dataset
from exporter.metrics import needs_labels, resolve_metric
from exporter.profiles import get_profiles
from exporter.recipe import load_recipe
from exporter.sources import load_model
from exporter.targets import get_target


def validate_recipe(recipe: str | Path, profiles_dirs: tuple[Path, ...] | list[Path] = ()) -> dict:
    loaded = load_recipe(recipe)
    r = loaded.recipe
    chosen = get_profiles(r.profiles, profiles_dirs, where=loaded.path)
    for p in chosen:
        if r.quantize.enabled:
            get_target(p.target).refuse_precision(r.quantize.precision, loaded.path)
    cal = load_dataset(r.data.calibration, r.inputs, loaded, "data.calibration")
    ev = load_dataset(r.data.evaluation, r.inputs, loaded, "data.evaluation")
    name, _fn, _higher = resolve_metric(r.metric, loaded.path)
    needs_labels(name, ev.labels, loaded.path)
    load_model(loaded)
    return {
        "recipe": str(loaded.path),
        "ok": True,
        "profiles": len(chosen),
        "calibration_samples": len(cal),
        "evaluation_samples": len(ev),
    }
