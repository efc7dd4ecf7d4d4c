"""Single-stream latency (MLPerf style): warm-up, then each query after the previous one.

The loop is kept bare (prebuilt feeds, perf_counter_ns, no per-run allocation beyond ORT's own)
so the harness adds as little as possible to what it measures.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import numpy as np
import onnxruntime as ort


@dataclass(frozen=True)
class LatencyStats:
    runs: int
    seconds: float
    p50: float
    p90: float
    p99: float
    p999: float
    mean: float
    stdev: float
    min: float

    def percentile(self, q: float) -> float:
        return {50.0: self.p50, 90.0: self.p90, 99.0: self.p99, 99.9: self.p999}.get(float(q), float("nan"))

    def as_dict(self) -> dict:
        return {k: round(v, 4) if isinstance(v, float) else v for k, v in asdict(self).items()}


def summarize(samples_ms: np.ndarray, seconds: float) -> LatencyStats:
    q = np.percentile(samples_ms, [50, 90, 99, 99.9])
    return LatencyStats(
        runs=int(samples_ms.size),
        seconds=seconds,
        p50=float(q[0]),
        p90=float(q[1]),
        p99=float(q[2]),
        p999=float(q[3]),
        mean=float(samples_ms.mean()),
        stdev=float(samples_ms.std(ddof=1)) if samples_ms.size > 1 else 0.0,
        min=float(samples_ms.min()),
    )


def measure(
    session: ort.InferenceSession,
    feed: dict[str, np.ndarray],
    warmup: int = 10,
    min_runs: int = 100,
    min_seconds: float = 1.0,
    max_seconds: float = 10.0,
) -> tuple[LatencyStats, np.ndarray]:
    """Time whole session.run calls until both minimums are met (or max_seconds passes)."""
    run = session.run
    for _ in range(warmup):
        run(None, feed)
    clock = time.perf_counter_ns
    times: list[int] = []
    start = clock()
    min_ns, max_ns = int(min_seconds * 1e9), int(max_seconds * 1e9)
    while True:
        t0 = clock()
        run(None, feed)
        t1 = clock()
        times.append(t1 - t0)
        elapsed = t1 - start
        if (len(times) >= min_runs and elapsed >= min_ns) or elapsed >= max_ns:
            break
    samples = np.asarray(times, dtype=np.float64) / 1e6
    return summarize(samples, (clock() - start) / 1e9), samples
