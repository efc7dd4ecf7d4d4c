"""Speed guard: an INT8 model slower than its FP32 source is not shipped as a speed-up.

Measured on this host (AVX2, no VNNI): onnxruntime's int8 convolutions run no faster than its
FP32 NCHWc convolutions, and every Q/DQ pair around an op without an integer kernel (HardSigmoid,
ReduceMean) adds work, so a mobilenet_v3-style CNN quantized everywhere is ~20% slower. The guard
times INT8 against FP32 side by side, and when INT8 loses by more than the tolerance it retries
with fewer op types quantized (the ladder below), keeping the first rung that is fast enough and
still meets the accuracy budget. What it tried and why it stopped goes into the report.

The guard shapes the static INT8 file (with or without the accuracy search); the promise itself
is kept by the build: on a CPU target every INT8 variant, static and dynamic, gets the verdict
`int8_speed_vs_fp32` (its p50 over FP32's in the same interleaved run, at most 1 + TOLERANCE), so
an INT8 file slower than FP32 never ships while FP32 meets the budgets
(`pipeline.deliverable.speed_verdicts`). On NPU targets the host's ratio is not a device figure,
and the report says so instead of judging it.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from exporter.runtime import make_session

TOLERANCE = 0.05  # an INT8 artifact may be at most 5% slower than FP32
LADDER: list[tuple[str, list[str] | None, bool]] = [
    # (rung, op types to quantize, keep depthwise convolutions in float)
    ("matrix ops and convolutions", ["Conv", "Gemm", "MatMul"], False),
    ("matrix ops and dense convolutions (depthwise kept in float)", ["Conv", "Gemm", "MatMul"], True),
    ("matrix ops only", ["Gemm", "MatMul"], False),
]


def time_ratio(baseline: Path, candidate: Path, feed: dict[str, np.ndarray], seconds: float = 1.5) -> float:
    """candidate p50 / baseline p50 on one thread, alternating run by run (1-thread figures repeat within ~10%)."""
    a, b = make_session(baseline, 1), make_session(candidate, 1)
    for s in (a, b, a, b):
        s.run(None, feed)
    ta: list[float] = []
    tb: list[float] = []
    start = time.perf_counter()
    while len(ta) < 15 or time.perf_counter() - start < seconds:
        for s, out in ((a, ta), (b, tb)):
            t0 = time.perf_counter()
            s.run(None, feed)
            out.append(time.perf_counter() - t0)
        if time.perf_counter() - start > 6 * seconds:
            break
    return float(np.median(tb) / np.median(ta))
