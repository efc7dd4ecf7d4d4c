"""Bench stage for one profile: evaluate and time every variant side by side, in one run.

Variants are timed interleaved (A B A B ...) so a noisy neighbour on the shared machine hits
them alike and their ratio stays meaningful.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from exporter import log
from exporter.bench.board_script import block_limits, timed_block
from exporter.bench.latency import LatencyStats, summarize
from exporter.bench.memory import peak_memory
from exporter.bench.power import Meter, meter_for
from exporter.errors import GateFailure
from exporter.feeding import Feeding
from exporter.recipe import BenchSection
from exporter.runtime import make_session, run_all, run_sequences


@dataclass(frozen=True)
class Measurement:
    latency: LatencyStats
    memory: dict
    outputs: list[np.ndarray]
    power: dict | None = None  # measured power (exporter.bench.power) or why there is none


def profile_meter(profile, sensor: str | None = None) -> tuple[Meter | None, dict]:
    """The power meter a profile asks for (`power_sensor:`), or `sensor` ("none": no measurement).

    A sensor the profile names but this machine lacks gives (None, reason): the build says so and
    judges energy on the estimate. A sensor asked for by name (`--power-sensor`) must be there.
    """
    from exporter.errors import UsageError

    spec = profile.power_sensor
    if sensor == "none":
        return None, {"available": False, "reason": "power measurement turned off (--power-sensor none)"}
    if sensor is not None:
        meter, missing = meter_for(sensor, None, tuple(spec.channels) if spec and spec.sensor == sensor else ())
        if meter is None:
            raise UsageError(
                missing["reason"], field="--power-sensor", fix="name a sensor this machine has, or leave it out"
            )
        if spec is not None:
            meter.rate_hz, meter.idle_seconds = spec.rate_hz, spec.idle_seconds
        return meter, {}
    if spec is None:
        return meter_for(None)
    return meter_for(spec.sensor, None, tuple(spec.channels), spec.rate_hz, spec.idle_seconds)


def evaluate_outputs(
    path: Path,
    inputs: dict[str, np.ndarray],
    threads: int,
    name: str,
    mode: str = "deployed",
    feeding: Feeding | None = None,
) -> list[np.ndarray]:
    """A variant's outputs on the evaluation samples; with state, each sequence is run chunk by
    chunk carrying the variant's own state, so its errors compound as they will in the app."""
    session = make_session(path, threads, mode)
    if feeding is not None and feeding.carried:
        outputs = run_sequences(session, inputs, feeding)[0]
    else:
        outputs = run_all(session, inputs, feeding=feeding)
    for i, out in enumerate(outputs):
        if np.issubdtype(out.dtype, np.floating) and not np.isfinite(out).all():
            raise GateFailure(f"variant '{name}': output {i} contains NaN/Inf on the evaluation set")
    return outputs


def time_interleaved(
    paths: dict[str, Path],
    feed: dict[str, np.ndarray],
    threads: int,
    settings: BenchSection,
    rounds: int = 2,
    meter: Meter | None = None,
    affinity: dict | None = None,
) -> dict[str, LatencyStats]:
    """Each variant gets `rounds` alternating blocks; minimums apply to the sum of its blocks.

    With a power meter, the idle draw is measured once before timing and each block's energy
    during it (the sampling thread sleeps between reads, so the timed loop keeps its core).
    `affinity`: exporter.bench.affinity.plan of the profile's cores, pinned around session
    creation and timing when the plan applies them."""
    from exporter.bench.affinity import pinned

    with pinned(affinity):
        return _time_interleaved(paths, feed, threads, settings, rounds, meter)


def _time_interleaved(
    paths: dict[str, Path],
    feed: dict[str, np.ndarray],
    threads: int,
    settings: BenchSection,
    rounds: int,
    meter: Meter | None,
) -> dict[str, LatencyStats]:
    sessions = {name: make_session(p, threads) for name, p in paths.items()}
    # Each model gets the inputs it declares (a fused and an unfused export may differ in optional ones).
    feeds = {name: {i.name: feed[i.name] for i in s.get_inputs()} for name, s in sessions.items()}
    samples: dict[str, list[float]] = {name: [] for name in paths}
    seconds: dict[str, float] = {name: 0.0 for name in paths}
    for name, sess in sessions.items():
        for _ in range(settings.warmup_runs):
            sess.run(None, feeds[name])
    limits = block_limits(settings.min_runs, settings.min_seconds, settings.max_seconds, rounds)
    if meter is not None:
        meter.idle()
    for _ in range(rounds):
        for name, sess in sessions.items():
            if meter is not None:
                meter.block_start(name)
            count, spent = timed_block(sess.run, feeds[name], limits, samples[name])
            seconds[name] += spent
            if meter is not None:
                meter.block_stop(name, count)
    for name in paths:
        if len(samples[name]) < settings.min_runs:
            log.info(
                f"{name}: {len(samples[name])} queries within the {settings.max_seconds:g} s cap, fewer "
                f"than the {settings.min_runs} asked for (raise bench.max_seconds)"
            )
    return {name: summarize(np.asarray(samples[name]), seconds[name]) for name in paths}


def measure_variants(
    paths: dict[str, Path],
    eval_inputs: dict[str, np.ndarray],
    feed: dict[str, np.ndarray],
    threads: int,
    settings: BenchSection,
    label: str,
    mode: str = "deployed",
    meter: Meter | None = None,
    unmeasured: dict | None = None,
    rate_hz: float | None = None,
    affinity: dict | None = None,
    feeding: Feeding | None = None,
) -> dict[str, Measurement]:
    """`feeding`: the evaluation set's (states carried per variant); `feed`: one timed query."""
    outputs = {}
    for name, path in paths.items():
        log.info(f"[{label}] evaluate {name} on {len(next(iter(eval_inputs.values())))} samples")
        outputs[name] = evaluate_outputs(path, eval_inputs, threads, name, mode, feeding)
    log.info(
        f"[{label}] time {', '.join(paths)} interleaved ({threads} thread(s), >= {settings.min_runs} runs "
        f"and {settings.min_seconds:g} s each)"
    )
    latency = time_interleaved(paths, feed, threads, settings, meter=meter, affinity=affinity)
    memory = {name: peak_memory(path, threads, feed) for name, path in paths.items()}
    power = {name: meter.result(name, rate_hz) if meter else unmeasured for name in paths}
    return {name: Measurement(latency[name], memory[name], outputs[name], power[name]) for name in paths}
