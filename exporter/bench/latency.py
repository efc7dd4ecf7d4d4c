"""Latency statistics of a single-stream run (MLPerf style: each query after the previous one).

The timing loop itself is `exporter.bench.board_script.timed_block` (the host and boards run the
same one); this module turns its raw samples into percentiles and a seeded bootstrap interval of
the percentile a budget names.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


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
    samples: np.ndarray = field(repr=False, compare=False, default_factory=lambda: np.zeros(0))

    def percentile(self, q: float) -> float:
        """Any percentile a budget names, from the raw samples (not only the summary ones)."""
        return float(np.percentile(self.samples, q))

    def as_dict(self) -> dict:
        keys = ("runs", "seconds", "p50", "p90", "p99", "p999", "mean", "stdev", "min")
        return {
            k: round(getattr(self, k), 4) if isinstance(getattr(self, k), float) else getattr(self, k) for k in keys
        }


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
        samples=samples_ms,
    )


def bootstrap_interval(samples: np.ndarray, q: float, resamples: int = 1000, seed: int = 0) -> tuple[float, float]:
    """95% percentile-bootstrap interval of the q-th percentile (seeded, so the same samples give the same interval)."""
    if samples.size < 2:
        value = float(samples[0]) if samples.size else float("nan")
        return value, value
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, samples.size, size=(resamples, samples.size))
    stats = np.percentile(samples[draws], q, axis=1)
    lo, hi = np.percentile(stats, [2.5, 97.5])
    return float(lo), float(hi)
