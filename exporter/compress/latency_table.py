"""What a head and an FFN neuron of a BERT-style encoder cost in onnxruntime time, so the Fisher
allocation can spend a latency budget instead of a MAC budget.

Why not MACs: on all-MiniLM-L6-v2 at 128 tokens a head holds 75x the MACs of a neuron but costs
~130x its time at one thread (the attention products, softmax and reshapes run far below the
GEMMs' efficiency), so a MAC goal keeps heads that a latency goal would remove. The table is fitted
on four exports of the model (whole, half the heads in every layer, half the neurons, both) timed
side by side: time = fixed + heads x head_ms + neurons x neuron_ms. Layers have equal shapes, so
one row serves all layers. Timed at one thread, where this host repeats within ~10%; the fitted
costs are rounded to two significant figures so a rebuild on the same host makes the same plan.
"""

from __future__ import annotations

import copy
import math
import tempfile
from pathlib import Path

import numpy as np

from exporter import log
from exporter.errors import GateFailure

_ATTEMPTS = 3  # timing tries before the table is used as it is (said in the log and the report)
_GOOD_FIT = 0.08  # the linear model fits MiniLM's four points within ~3% on a quiet host
# heads and neurons kept in every layer, as fractions of the whole, for the four timed points
_POINTS = {"whole": (1.0, 1.0), "half heads": (0.5, 1.0), "half neurons": (1.0, 0.5), "half both": (0.5, 0.5)}


def _two_figures(x: float) -> float:
    return 0.0 if x <= 0 else round(x, 1 - int(math.floor(math.log10(x))))


def _variant(module, heads: float, neurons: float):
    from exporter.compress.encoder import apply_plan, find_encoder

    trial = copy.deepcopy(module)
    bert = find_encoder(trial)
    plan: dict = {"drop_layers": [], "prune_heads": {}, "keep_ffn": {}}
    for i, layer in enumerate(bert.encoder.layer):
        n_heads = layer.attention.self.num_attention_heads
        width = layer.intermediate.dense.out_features
        if heads < 1:
            plan["prune_heads"][str(i)] = list(range(n_heads - max(1, round(n_heads * heads))))
        if neurons < 1:
            plan["keep_ffn"][str(i)] = list(range(max(1, round(width * neurons))))
    apply_plan(bert, plan)
    counts = (
        sum(m.attention.self.num_attention_heads for m in bert.encoder.layer),
        sum(m.intermediate.dense.out_features for m in bert.encoder.layer),
    )
    return trial, counts


def latency_table(ctx, module, threads: int = 1) -> dict:
    """Fit the per-head and per-neuron time of `module` (the student before pruning) at `threads`
    onnxruntime threads on the recipe's input shapes; returns the table with its fit residual."""
    from exporter.compress.measure import timing_feed
    from exporter.hf.source import export_canonical
    from exporter.measure import time_interleaved
    from exporter.recipe import BenchSection

    recipe = ctx.loaded.recipe
    feed = timing_feed(ctx)
    counts, paths = {}, {}
    with tempfile.TemporaryDirectory(prefix="edgex-latency-table-") as tmp:
        for name, (heads, neurons) in _POINTS.items():
            log.info(f"  latency table: exporting the {name} encoder")
            trial, counts[name] = _variant(module, heads, neurons)
            folder = Path(tmp) / name.replace(" ", "-")
            folder.mkdir()
            paths[name], _ = export_canonical(None, recipe.model, folder, 18, ctx.loaded.path, model=trial.model)
        settings = BenchSection(warmup_runs=5, min_runs=40, min_seconds=1.0, max_seconds=4.0)
        measured: dict = {}
        for attempt in range(1, _ATTEMPTS + 1):
            log.info(f"  latency table: timing {len(paths)} exports side by side ({threads} thread(s), try {attempt})")
            stats = time_interleaved(paths, feed, threads, settings, rounds=3)
            # the lowest median over the tries: a burst of load on a shared host only ever adds time
            measured = {n: min(measured.get(n, math.inf), stats[n].percentile(50)) for n in paths}
            table = _fit(measured, counts)
            if table["fit_error"] <= _GOOD_FIT:
                break
    table = {"threads": threads, "tries": attempt, **table}
    if table["head_ms"] <= 0 or table["neuron_ms"] <= 0:
        raise GateFailure(
            f"the latency table could not be measured on this host (per head {table['head_ms']} ms, per neuron "
            f"{table['neuron_ms']} ms after {attempt} tries: removing units did not make the exports faster, "
            "a loaded host or a model too small to time) — rerun on a quieter host, or prune to goal: {macs: ...}"
        )
    if table["fit_error"] > _GOOD_FIT:
        log.info(
            f"  latency table: the line misses a timed point by {100 * table['fit_error']:.0f}% after {attempt} "
            "tries (a loaded host); the plan is made with it and the build's measured speed-ups say what it bought"
        )
    log.info(
        f"  latency table: fixed {table['fixed_ms']} ms, {table['head_ms']} ms per head, "
        f"{table['neuron_ms']} ms per neuron (worst fit error {100 * table['fit_error']:.1f}%)"
    )
    return table


def _fit(measured: dict, counts: dict) -> dict:
    """Least squares of time on (1, heads, neurons), rounded to two significant figures, and the
    worst relative miss of the rounded line on the four timed points."""
    names = list(measured)
    rows = np.array([[1.0, *counts[n]] for n in names])
    times = np.array([measured[n] for n in names])
    fixed, head_ms, neuron_ms = np.linalg.lstsq(rows, times, rcond=None)[0]
    if fixed < 0:  # time cannot be negative with nothing kept: the line through the origin instead
        fixed, (head_ms, neuron_ms) = 0.0, np.linalg.lstsq(rows[:, 1:], times, rcond=None)[0]
    table = {
        "fixed_ms": _two_figures(float(fixed)),
        "head_ms": _two_figures(float(head_ms)),
        "neuron_ms": _two_figures(float(neuron_ms)),
        "measured_p50_ms": {n: round(measured[n], 3) for n in names},
        "counts": {n: {"heads": counts[n][0], "neurons": counts[n][1]} for n in names},
    }
    table["predicted_p50_ms"] = {n: round(predict(table, *counts[n]), 3) for n in names}
    table["fit_error"] = round(max(abs(table["predicted_p50_ms"][n] - measured[n]) / measured[n] for n in names), 4)
    return table


def predict(table: dict, heads: int, neurons: int) -> float:
    """The table's time for an encoder with this many heads and FFN neurons in all."""
    return table["fixed_ms"] + heads * table["head_ms"] + neurons * table["neuron_ms"]
