"""One timed model judged against a profile: latency interval, device estimate, verdicts, power basis.

A build (each variant) and `edgex bench` (any ONNX file, here or on a board) judge the same way,
so they share this one function; they differ only in what they pass (accuracy, where it ran).

Which number a latency budget is judged on is the device evidence, in this order: a measurement
on the device itself (`--runner`), else the device estimate with its error band. A timing on the
build host is never the verdict of a phone, car or board budget: a busy x86 box says nothing about
a Hexagon NPU. Host timings still drive what they can compare fairly (ratios, the deliverable's
tie rule, `edgex compare`). Only a profile of the build-host class is judged on the host.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from exporter.bench.estimate import estimate
from exporter.bench.latency import LatencyStats, bootstrap_interval
from exporter.bench.verdicts import HOST, Verdict, judge
from exporter.profiles import DeviceProfile
from exporter.targets import Target

BUILD_HOST_CLASS = "build-host"


@dataclass(frozen=True)
class Evidence:
    """The latency a budget is judged on, where it comes from, and its uncertainty."""

    value_ms: float | None
    interval: tuple[float, float] | None
    basis: str
    kind: str  # "device" (measured there), "estimate", "host" (build-host profiles), "none"


def estimate_basis(device: dict) -> str:
    """The verdict's basis text for an estimate: its model and how far it has been validated."""
    band = device.get("error_band")
    if band:
        caveat = (
            "; this graph's MatMul/attention share lies outside the fitted models': the band does not cover it"
            if band.get("in_domain") is False
            else ""
        )
        return (
            f"device estimate, not a measurement ({device.get('method', 'fitted model')}; leave-one-model-out "
            f"median error {band['loo_median_rel_error']:.0%} over {band['n_models']} published models, "
            f"worst {band['loo_max_ratio']:.2f}x; judged as the typical latency, the tail is not modelled{caveat})"
        )
    return (
        "device estimate, not a measurement (roofline x the host's measured efficiency; unvalidated: no "
        "published timings of this device are fitted, so no error band; the tail is not modelled)"
    )


def latency_evidence(
    profile: DeviceProfile,
    stats: LatencyStats,
    host_interval: tuple[float, float],
    device: dict,
    latency_basis: str,
) -> Evidence:
    """Device measurement, else device estimate; the host only for a build-host profile."""
    pct = profile.budgets.latency.percentile
    if latency_basis != HOST:  # the samples were taken on the device itself
        return Evidence(stats.percentile(pct), host_interval, latency_basis, "device")
    if profile.device_class == BUILD_HOST_CLASS:
        return Evidence(stats.percentile(pct), host_interval, HOST + "; the profile is the build host's class", "host")
    if device.get("available"):
        value = float(device["device_latency_ms"])
        band = device.get("latency_interval_ms")
        interval = (float(band[0]), float(band[1])) if band else None
        return Evidence(value, interval, estimate_basis(device), "estimate")
    reason = device.get("reason", "no estimate")
    return Evidence(
        None,
        None,
        f"no device evidence ({reason}): measure on the device with `edgex bench --runner`; "
        "a host timing does not judge a device budget",
        "none",
    )


@dataclass(frozen=True)
class Judged:
    interval: tuple[float, float]  # 95% bootstrap interval of the budget's percentile
    device: dict  # the device estimate
    verdicts: list[Verdict]
    power_judged_on: str | None  # "measured", "estimate", or None when neither exists
    latency_judged_on: str = "host"  # Evidence.kind


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
    fit_precision: str | None = None,
    work_graph: Path | None = None,
) -> Judged:
    """Budgets are judged at the profile's percentile; energy and power on the sensor when it was
    read, else on the estimate (device_latency_ms: latency measured on the device replaces the
    roofline's)."""
    pct = profile.budgets.latency.percentile
    interval = bootstrap_interval(stats.samples, pct)
    rate = profile.budgets.average_power.rate_hz if profile.budgets.average_power else None
    compute = compute_precision(precision, target)
    device = estimate(
        path,
        compute,
        stats.p50,
        threads,
        profile.estimates,
        rate,
        device_latency_ms=device_latency_ms,
        shapes=shapes,
        profile_id=profile.id,
        fit_precision=fit_precision,
        work_graph=work_graph,
    )
    evidence = latency_evidence(profile, stats, interval, device, latency_basis)
    verdicts = judge(
        profile.budgets,
        latency_ms=evidence.value_ms,
        peak_memory_mb=peak_memory_mb,
        size_mb=size_mb,
        accuracy_drop=accuracy_drop,
        max_accuracy_drop=max_accuracy_drop,
        estimate=device,
        latency_interval=evidence.interval,
        measured=measured,
        latency_basis=evidence.basis,
        measured_on=measured_on,
    )
    return Judged(interval, device, verdicts, power_judged_on(measured, device), evidence.kind)
