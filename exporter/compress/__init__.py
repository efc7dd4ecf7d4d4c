"""Compression stage: the recipe's ordered `compress:` steps turn the loaded model (the teacher)
into a smaller dense model (the student) that then goes through export, quantization and
benchmarking like any other; the teacher stays the build's `baseline` and its outputs the truth.

Each step kind has a handler registered for its config class (steps.py; one module per step:
student, prune, lowrank_step, distill_step). Each records what it did (settings, costs and
quality before and after, the pruning plan as data), and the whole result is cached by a hash of
its inputs (store.py).
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from typing import Any

from exporter import log
from exporter.compress import cache
from exporter.compress.checks import check_steps
from exporter.compress.measure import quality
from exporter.compress.steps import State, handler_for
from exporter.compress.store import key as cache_key
from exporter.compress.store import restore, save

# isort: split
# The step handlers register themselves for their config class on import: a new step adds its module here.
from exporter.compress import distill_step, lowrank_step, prune, student  # noqa: F401

__all__ = ["Compressed", "check_steps", "compress", "per_profile"]


@dataclass
class Compressed:
    """The student as a loaded model, and the record of how it was made (manifest `compression`)."""

    model: Any  # exporter.sources.LoadedModel
    record: dict


def per_profile(recipe) -> bool:
    """A latency-budget prune depends on each profile's budget and threads; other steps do not."""
    return any(s.prune is not None and s.prune.goal.latency == "budget" for s in recipe.compress)


def compress(ctx, align: int, latency: dict | None = None) -> Compressed:
    """Run (or fetch from the cache) the recipe's compression steps on ctx.model."""
    r = ctx.loaded.recipe
    key = cache_key(ctx, align, latency)
    hit = cache.lookup(key)
    if hit is not None:
        log.info(f"[{r.name}] compression: cached result {key[:12]} (no retraining)")
        record = json.loads((hit / "record.json").read_text(encoding="utf-8"))
        record["cache"] = {"key": key, "hit": True}
        return Compressed(model=restore(ctx, hit, record), record=record)
    log.info(f"[{r.name}] compression: {' -> '.join(s.kind for s in r.compress)} (alignment {align})")
    state = State(ctx=ctx, student=copy.deepcopy(ctx.model.module), align=align, latency=latency)
    before = quality(state)
    state.records.append(before)
    steps = []
    for i, item in enumerate(r.compress):
        where = f"compress[{i}].{item.kind}"
        log.info(f"[{r.name}] {where}")
        result = handler_for(item.settings).apply(state, item.settings, where)
        if result.dropped_layers:
            state.drop_layers(result.dropped_layers)
        after = quality(state)
        state.records.append(after)
        log.info(
            f"[{r.name}] {where}: {ctx.metric_name} {after['metric']:.4f} (drop {after['drop']:.4f}), "
            f"{100 * after['macs'] / before['macs']:.1f}% MACs, {100 * after['params'] / before['params']:.1f}% params"
        )
        steps.append(
            {"step": item.kind, "settings": item.settings.model_dump(mode="json"), **result.info, "after": after}
        )
    record = {"teacher": before, "student": state.records[-1], "steps": steps, "align": align, "latency": latency}
    with cache.storing(key) as entry:
        save(ctx, state.student, entry, record)
        (entry / "record.json").write_text(json.dumps(record, indent=1, sort_keys=True), encoding="utf-8")
    record["cache"] = {"key": key, "hit": False}
    # Always reload from the entry, so a fresh and a cached build ship the very same model.
    return Compressed(model=restore(ctx, cache.lookup(key), record), record=record)
