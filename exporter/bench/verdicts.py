"""Budget verdicts: each budget is judged on one number, with its margin and its basis.

A budget the build cannot evaluate (no energy model yet) is `ok: null`, never passed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from exporter.profiles import Budgets, PreflightLimits

HOST = "host measurement (onnxruntime CPU on the build machine)"


@dataclass(frozen=True)
class Verdict:
    budget: str
    limit: float | None
    value: float | None
    ok: bool | None
    unit: str
    basis: str
    margin: float | None = None  # limit - value in the budget's unit; negative means missed

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
) -> list[Verdict]:
    """Verdicts in a fixed order; budgets absent from the profile are omitted."""
    pct = budgets.latency.percentile
    label = f"latency_p{pct:g}_ms"
    found = [
        _upper(label, budgets.latency.max_ms, latency_ms, "ms", HOST),
        _upper("peak_memory_mb", budgets.peak_memory_mb, peak_memory_mb, "MB", HOST),
        _upper("model_size_mb", budgets.model_size_mb, size_mb, "MB", "file size"),
        _upper(
            "accuracy_drop",
            max_accuracy_drop,
            accuracy_drop,
            "metric units",
            "evaluation set vs FP32 baseline" if accuracy_drop is not None else "no evaluation data",
        ),
        _upper("energy_mj", budgets.energy_mj, None, "mJ", "no energy model in this version"),
        _upper(
            "average_power_w",
            budgets.average_power.max_w if budgets.average_power else None,
            None,
            "W",
            "no power model in this version",
        ),
    ]
    return [v for v in found if v is not None]


def overall(verdicts: list[Verdict]) -> bool:
    """Passes when no evaluated budget failed; unevaluated ones are listed, not counted as passes."""
    return all(v.ok is not False for v in verdicts)
