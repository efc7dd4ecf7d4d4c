"""What the compression benchmarks (pruning.py, lowrank.py) share: how a compressed model is
judged and timed against its teacher, the page's host line, and the run-selected-scenarios loop
that keeps the other scenarios' last figures when one is rerun alone."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from exporter.recipe import BenchSection
from exporter.runtime import make_session, run_all
from exporter.versions import host_facts, tool_versions

TIMING = BenchSection(warmup_runs=10, min_runs=200, min_seconds=3.0, max_seconds=20.0)


def onnx_metric(ctx, path: Path) -> float:
    out = run_all(make_session(path, 2), ctx.evaluation.inputs)[0]
    return float(ctx.metric_fn(out, ctx.evaluation.labels, ctx.reference[0]))


def interleaved_p50(paths: dict[str, Path], ctx) -> dict[str, float]:
    from exporter.measure import time_interleaved

    feed = {s.name: ctx.evaluation.inputs[s.name][: s.shape[0]] for s in ctx.inputs}
    # short blocks, many rounds: a burst of load on the shared host spreads over every model
    stats = time_interleaved(paths, feed, 1, TIMING, rounds=12)
    return {k: v.p50 for k, v in stats.items()}


def host_line() -> str:
    return f"Host: {json.dumps(host_facts())}; versions: " + ", ".join(
        f"{k} {v}" for k, v in tool_versions().items() if k in ("torch", "onnxruntime", "transformers")
    )


def run_scenarios(
    scenarios: dict[str, Callable[[Path], dict]],
    only: str | None,
    out: Path,
    cache: Path | None,
    plot: Callable[[dict, Path], None],
    image: str,
    write: Callable[[dict, Path], None],
) -> None:
    """Run the chosen scenarios (all, or `only`) and write out.json, the plot and out.md.

    Each run trains from scratch in a private cache folder unless `cache` names one holding
    students already trained; a scenario run alone keeps the others' figures from out.json."""
    previous = out.with_suffix(".json")
    results: dict = json.loads(previous.read_text()) if only and previous.is_file() else {}
    with tempfile.TemporaryDirectory(prefix="edgex-compression-bench-") as tmp:
        os.environ["EDGEX_CACHE_DIR"] = str(cache or Path(tmp) / "cache")
        for name, run in scenarios.items():
            if only in (None, name):
                results[name] = run(Path(tmp))
    results = {k: results[k] for k in scenarios if k in results}
    previous.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
    plot(results, out.parent / image)
    write(results, out)
    print(out.read_text())


def label_axes(ax, xlabel: str, ylabel: str, title: str) -> None:
    """The one look of every trade-off panel in PRUNING.md and LOWRANK.md."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)


def save_figure(fig, path: Path) -> None:
    """Saved without the Software tag (its version string would change the bytes between installs)."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, metadata={"Software": None})
    plt.close(fig)
