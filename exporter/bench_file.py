"""`edgex bench`: benchmark any ONNX file against a profile's latency, memory and size budgets."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from exporter.bench.memory import peak_memory
from exporter.bench.verdicts import judge, overall
from exporter.measure import time_interleaved
from exporter.onnx_io import check_onnx_file
from exporter.profiles import DeviceProfile
from exporter.recipe import BenchSection
from exporter.runtime import host_threads, make_session

_NP = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(uint8)": np.uint8,
    "tensor(int8)": np.int8,
    "tensor(bool)": np.bool_,
}


def synthetic_feed(path: Path, seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded inputs in the model's declared shapes (dynamic dimensions as 1)."""
    rng = np.random.default_rng(seed)
    feed = {}
    for inp in make_session(path).get_inputs():
        shape = [d if isinstance(d, int) and d > 0 else 1 for d in inp.shape]
        dtype = _NP.get(inp.type, np.float32)
        if np.issubdtype(dtype, np.floating):
            feed[inp.name] = rng.standard_normal(shape).astype(dtype)
        else:
            feed[inp.name] = np.zeros(shape, dtype=dtype)
    return feed


def bench_file(path: Path, profile: DeviceProfile, settings: BenchSection | None = None) -> dict:
    settings = settings or BenchSection()
    check_onnx_file(path)
    threads = host_threads(profile.threads)
    feed = synthetic_feed(path)
    stats = time_interleaved({"model": path}, feed, threads, settings)["model"]
    memory = peak_memory(path, threads, feed)
    size_mb = path.stat().st_size / 1e6
    verdicts = judge(
        profile.budgets,
        latency_ms=stats.percentile(profile.budgets.latency.percentile),
        peak_memory_mb=memory["session_mb"],
        size_mb=size_mb,
        accuracy_drop=None,
        max_accuracy_drop=profile.budgets.max_accuracy_drop,
    )
    return {
        "model": str(path),
        "profile": profile.id,
        "threads": {"profile": profile.threads, "host": threads},
        "latency_ms": stats.as_dict(),
        "memory": memory,
        "size_mb": round(size_mb, 6),
        "inputs": "synthetic (seeded normal / zeros), in the declared shapes",
        "verdicts": [v.as_dict() for v in verdicts],
        "ok": overall(verdicts),
    }
