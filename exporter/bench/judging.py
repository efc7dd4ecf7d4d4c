"""One timed model judged against a profile: latency interval, device estimate, verdicts, power basis.

A build (each variant) and `edgex bench` (any ONNX file, here or on a board) judge the same way,
so they share this one function; they differ only in what they pass (accuracy, where it ran).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from exporter.bench.estimate import estimate
from exporter.bench.latency import LatencyStats, bootstrap_interval
from exporter.bench.verdicts import HOST, Verdict, judge
from exporter.profiles import DeviceProfile
from exporter.targets import Target


@dataclass(frozen=True)
class Judged:
    interval: tuple[float, float]  # 95% bootstrap interval of the budget's percentile
    device: dict  # the device estimate
    verdicts: list[Verdict]
    power_judged_on: str | None  # "measured", "estimate", or None when neither exists


def compute_precision(precision: str, target: Target) -> str:
    """The arithmetic the estimate assumes: float graphs in the runtime's float precision; INT4 is
    weight-only, its products run as int8 (accuracy_level 4) or float, estimated as int8."""
    if precision == "fp32":
        return target.float_compute
    return {"int4": "int8"}.get(precision, precision)


def power_judged_on(measured: dict | None, device: dict) -> str | None:
    if (measured or {}).get("available"):
        return "measured"
    return "estimate" if device.get("available") else None


def judge_timed(
    path: Path,
    profile: DeviceProfile,
    target: Target,
    precision: str,
    stats: LatencyStats,
    threads: int,
    *,
    peak_memory_mb: float | None,
    size_mb: float,
    accuracy_drop: float | None,
    max_accuracy_drop: float,
    measured: dict | None,
    device_latency_ms: float | None = None,
    latency_basis: str = HOST,
    measured_on: str = "the build machine",
    shapes: dict[str, list[int]] | None = None,
) -> Judged:
    """Budgets are judged at the profile's percentile; energy and power on the sensor when it was
    read, else on the estimate (device_latency_ms: latency measured on the device replaces the
    roofline's)."""
    pct = profile.budgets.latency.percentile
    interval = bootstrap_interval(stats.samples, pct)
    rate = profile.budgets.average_power.rate_hz if profile.budgets.average_power else None
    compute = compute_precision(precision, target)
    device = estimate(
        path, compute, stats.p50, threads, profile.estimates, rate, device_latency_ms=device_latency_ms, shapes=shapes
    )
    verdicts = judge(
        profile.budgets,
        latency_ms=stats.percentile(pct),
        peak_memory_mb=peak_memory_mb,
        size_mb=size_mb,
        accuracy_drop=accuracy_drop,
        max_accuracy_drop=max_accuracy_drop,
        estimate=device,
        latency_interval=interval,
        measured=measured,
        latency_basis=latency_basis,
        measured_on=measured_on,
    )
    return Judged(interval, device, verdicts, power_judged_on(measured, device))
