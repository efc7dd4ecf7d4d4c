"""Bench stage for one profile: evaluate and time every variant side by side, in one run.

Variants are timed interleaved (A B A B ...) so a noisy neighbour on the shared machine hits
them alike and their ratio stays meaningful.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from exporter import log
from exporter.bench.latency import LatencyStats, summarize
from exporter.bench.memory import peak_memory
from exporter.errors import GateFailure
from exporter.recipe import BenchSection
from exporter.runtime import make_session, run_all


@dataclass(frozen=True)
class Measurement:
    latency: LatencyStats
    memory: dict
    outputs: list[np.ndarray]


def evaluate_outputs(
    path: Path, inputs: dict[str, np.ndarray], threads: int, name: str, mode: str = "deployed"
) -> list[np.ndarray]:
    outputs = run_all(make_session(path, threads, mode), inputs)
    for i, out in enumerate(outputs):
        if np.issubdtype(out.dtype, np.floating) and not np.isfinite(out).all():
            raise GateFailure(f"variant '{name}': output {i} contains NaN/Inf on the evaluation set")
    return outputs


def time_interleaved(
    paths: dict[str, Path], feed: dict[str, np.ndarray], threads: int, settings: BenchSection, rounds: int = 2
) -> dict[str, LatencyStats]:
    """Each variant gets `rounds` alternating blocks; minimums apply to the sum of its blocks."""
    import time

    sessions = {name: make_session(p, threads) for name, p in paths.items()}
    samples: dict[str, list[float]] = {name: [] for name in paths}
    seconds: dict[str, float] = {name: 0.0 for name in paths}
    for sess in sessions.values():
        for _ in range(settings.warmup_runs):
            sess.run(None, feed)
    per_runs = max(1, -(-settings.min_runs // rounds))
    per_secs, max_secs = settings.min_seconds / rounds, settings.max_seconds / rounds
    clock = time.perf_counter_ns
    for _ in range(rounds):
        for name, sess in sessions.items():
            run, times, start = sess.run, samples[name], clock()
            count = 0
            while True:
                t0 = clock()
                run(None, feed)
                t1 = clock()
                times.append((t1 - t0) / 1e6)
                count += 1
                if (count >= per_runs and t1 - start >= per_secs * 1e9) or t1 - start >= max_secs * 1e9:
                    break
            seconds[name] += (clock() - start) / 1e9
    return {name: summarize(np.asarray(samples[name]), seconds[name]) for name in paths}


def measure_variants(
    paths: dict[str, Path],
    eval_inputs: dict[str, np.ndarray],
    feed: dict[str, np.ndarray],
    threads: int,
    settings: BenchSection,
    label: str,
    mode: str = "deployed",
) -> dict[str, Measurement]:
    outputs = {}
    for name, path in paths.items():
        log.info(f"[{label}] evaluate {name} on {len(next(iter(eval_inputs.values())))} samples")
        outputs[name] = evaluate_outputs(path, eval_inputs, threads, name, mode)
    log.info(
        f"[{label}] time {', '.join(paths)} interleaved ({threads} thread(s), >= {settings.min_runs} runs "
        f"and {settings.min_seconds:g} s each)"
    )
    latency = time_interleaved(paths, feed, threads, settings)
    memory = {name: peak_memory(path, threads, feed) for name, path in paths.items()}
    return {name: Measurement(latency[name], memory[name], outputs[name]) for name in paths}
