"""`edgex bench`: benchmark any ONNX file against a profile's latency, memory and size budgets."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from exporter.bench.estimate import estimate
from exporter.bench.latency import bootstrap_interval
from exporter.bench.memory import peak_memory
from exporter.bench.verdicts import judge, overall
from exporter.measure import time_interleaved
from exporter.onnx_io import check_onnx_file
from exporter.profiles import DeviceProfile
from exporter.recipe import BenchSection
from exporter.runtime import host_threads, make_session, synthetic_inputs


def synthetic_feed(path: Path, seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded inputs in the model's declared shapes (dynamic dimensions as 1)."""
    return synthetic_inputs(make_session(path), seed)


def _precision(path: Path) -> str:
    """int8 when the graph computes with quantized tensors, else fp32 (for the estimate's constants)."""
    import onnx

    ops = {n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node}
    quantized = {"QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul", "MatMulInteger", "ConvInteger"}
    return "int8" if ops & quantized else "fp32"


def bench_file(path: Path, profile: DeviceProfile, settings: BenchSection | None = None) -> dict:
    settings = settings or BenchSection()
    check_onnx_file(path)
    threads = host_threads(profile.threads)
    feed = synthetic_feed(path)
    stats = time_interleaved({"model": path}, feed, threads, settings)["model"]
    memory = peak_memory(path, threads, feed)
    size_mb = path.stat().st_size / 1e6
    pct = profile.budgets.latency.percentile
    interval = bootstrap_interval(stats.samples, pct)
    rate = profile.budgets.average_power.rate_hz if profile.budgets.average_power else None
    precision = _precision(path)
    if precision == "fp32":
        from exporter.targets import get_target

        precision = get_target(profile.target).float_compute
    device = estimate(path, precision, stats.p50, threads, profile.estimates, rate)
    verdicts = judge(
        profile.budgets,
        latency_ms=stats.percentile(pct),
        estimate=device,
        latency_interval=interval,
        peak_memory_mb=memory["session_mb"],
        size_mb=size_mb,
        accuracy_drop=None,
        max_accuracy_drop=profile.budgets.max_accuracy_drop,
    )
    return {
        "model": str(path),
        "profile": profile.id,
        "threads": {"profile": profile.threads, "host": threads},
        "latency_ms": {
            **stats.as_dict(),
            "interval95": [round(interval[0], 4), round(interval[1], 4)],
            "budget_percentile": pct,
        },
        "device_estimate": device,
        "memory": memory,
        "size_mb": round(size_mb, 6),
        "inputs": "synthetic (seeded normal / zeros), in the declared shapes",
        "verdicts": [v.as_dict() for v in verdicts],
        "ok": overall(verdicts),
    }
