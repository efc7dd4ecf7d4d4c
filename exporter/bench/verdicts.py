"""Budget verdicts: each budget is judged on one number, with its margin and its basis.

A budget the build cannot evaluate (no energy model yet) is `ok: null`, never passed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from exporter.profiles import Budgets, PreflightLimits

HOST = "host measurement (onnxruntime CPU on the build machine)"
ESTIMATE = "device estimate (roofline + energy model with the profile's constants), not a measurement"


@dataclass(frozen=True)
class Verdict:
    budget: str
    limit: float | None
    value: float | None
    ok: bool | None
    unit: str
    basis: str
    margin: float | None = None  # limit - value in the budget's unit; negative means missed
    interval: tuple[float, float] | None = None  # 95% bootstrap interval of the value (latency)
    decided: bool | None = None  # False: the limit lies inside the interval, the verdict is noise-sensitive

    def as_dict(self) -> dict:
        d = asdict(self)
        for key in ("limit", "value", "margin"):
            if isinstance(d[key], float):
                d[key] = round(d[key], 6)
        return d


def _upper(budget: str, limit: float | None, value: float | None, unit: str, basis: str) -> Verdict | None:
    if limit is None:
        return None
    if value is None:
        return Verdict(budget, limit, None, None, unit, "not evaluated: " + basis)
    return Verdict(budget, limit, value, value <= limit, unit, basis, limit - value)


def judge_preflight(limits: PreflightLimits, preflight: dict) -> list[Verdict]:
    """Operator-coverage gates of the profile (only those it sets)."""
    basis = f"preflight estimate ({preflight['checker']})"
    found = []
    if limits.max_partitions is not None:
        found.append(
            _upper(
                "accelerator_partitions",
                float(limits.max_partitions),
                float(preflight["partitions"]),
                "partitions",
                basis,
            )
        )
    if not limits.allow_cpu_fallback:
        found.append(_upper("cpu_fallback_nodes", 0.0, float(preflight["cpu_fallback_nodes"]), "nodes", basis))
    return [v for v in found if v is not None]


def judge(
    budgets: Budgets,
    *,
    latency_ms: float | None,
    peak_memory_mb: float | None,
    size_mb: float,
    accuracy_drop: float | None,
    max_accuracy_drop: float,
    estimate: dict | None = None,
    latency_interval: tuple[float, float] | None = None,
    measured: dict | None = None,
    latency_basis: str = HOST,
    measured_on: str = "the build machine",
) -> list[Verdict]:
    """Verdicts in a fixed order; budgets absent from the profile are omitted.

    Energy and power are judged on measured power (exporter.bench.power) when a sensor was read,
    else on the device estimate; the basis of each verdict says which.
    """
    pct = budgets.latency.percentile
    label = f"latency_p{pct:g}_ms"
    est = estimate if estimate and estimate.get("available") else None
    why = (estimate or {}).get("reason", "no estimate")
    basis = ESTIMATE
    if measured and measured.get("available"):
        est = measured
        basis = f"measured by {measured['sensor']} on {measured_on} ({measured['method']})"
    energy = est["energy_mj"] if est else None
    power = est.get("average_power_w") if est else None
    power_basis = basis
    if est and est.get("sustains_rate") is False:
        power_basis = f"{basis}; the latency cannot sustain {est['rate_hz']:g} Hz"
    found = [
        _upper(label, budgets.latency.max_ms, latency_ms, "ms", latency_basis),
        _upper("peak_memory_mb", budgets.peak_memory_mb, peak_memory_mb, "MB", HOST),
        _upper("model_size_mb", budgets.model_size_mb, size_mb, "MB", "file size"),
        _upper(
            "accuracy_drop",
            max_accuracy_drop,
            accuracy_drop,
            "metric units",
            "evaluation set vs FP32 baseline" if accuracy_drop is not None else "no evaluation data",
        ),
        _upper("energy_mj", budgets.energy_mj, energy, "mJ", basis if est else why),
        _upper(
            "average_power_w",
            budgets.average_power.max_w if budgets.average_power else None,
            power,
            "W",
            power_basis if est else why,
        ),
    ]
    verdicts = [v for v in found if v is not None]
    if est and est.get("sustains_rate") is False:
        verdicts = [replace(v, ok=False) if v.budget == "average_power_w" else v for v in verdicts]
    if latency_interval is not None and verdicts and verdicts[0].value is not None:
        lo, hi = latency_interval
        limit = verdicts[0].limit
        decided = not (lo <= limit <= hi)
        verdicts[0] = replace(verdicts[0], interval=(round(lo, 6), round(hi, 6)), decided=decided)
    return verdicts


def overall(verdicts: list[Verdict]) -> bool:
    """Passes when no evaluated budget failed; unevaluated ones are listed, not counted as passes."""
    return all(v.ok is not False for v in verdicts)
