"""The suite's own arithmetic (the full run is `benchmarks/suite.py`, ~15 min; `--quick` ~2 min)."""

from __future__ import annotations

import sys
from types import SimpleNamespace

import numpy as np
from conftest import ROOT

sys.path.insert(0, str(ROOT))

from benchmarks.suite import SCENARIOS, _ratio_interval, _spread, _summary, _versus_peer  # noqa: E402


def test_speedup_interval_brackets_the_true_ratio():
    rng = np.random.default_rng(1)
    base = 2.0 + 0.05 * rng.standard_normal(400)
    fast = 1.0 + 0.05 * rng.standard_normal(400)
    lo, hi = _ratio_interval(base, fast)
    assert lo < 2.0 < hi and hi - lo < 0.1
    lo, hi = _ratio_interval(base, base.copy())
    assert lo <= 1.0 <= hi


def test_spread_tells_constant_outputs_from_informative_ones():
    constant = np.tile(np.linspace(-1, 1, 10), (48, 1))  # every input gives the same logits
    assert _spread(constant) < 1e-12
    assert _spread(np.random.default_rng(0).standard_normal((48, 10))) > 0.9


def _timed(rows: list[dict], rng) -> dict:
    """Timing samples around each row's p50, and the speed-up intervals the suite derives from them."""
    stats = {
        r["name"]: SimpleNamespace(p50=r["p50"], samples=r["p50"] * (1 + 0.01 * rng.standard_normal(300)))
        for r in rows
        if "p50" in r
    }
    for r in rows:
        if r["name"] in stats:
            r["speedup_interval"] = _ratio_interval(stats["FP32 (edgex baseline)"].samples, stats[r["name"]].samples)
    return stats


def test_summary_names_the_fastest_peer_within_the_budget():
    rows = [
        {"name": "FP32 (edgex baseline)", "kind": "fp32", "p50": 10.0, "speedup": 1.0, "metric": 0.99},
        {"name": "edgex int8", "kind": "edgex", "p50": 5.0, "speedup": 2.0, "metric": 0.985},
        {"name": "peer: fast but wrong", "kind": "peer", "p50": 3.0, "speedup": 3.3, "metric": 0.5},
        {"name": "peer: slower, right", "kind": "peer", "p50": 6.0, "speedup": 1.7, "metric": 0.984},
        {"name": "peer: failed", "kind": "peer", "error": "boom"},
    ]
    stats = _timed(rows, np.random.default_rng(0))
    vs = _versus_peer(rows, stats, "int8", 0.99, 0.01)
    assert vs["peer"] == "peer: slower, right" and vs["verdict"] == "edgex ahead" and 1.1 < vs["ratio"] < 1.3
    res = {"rows": rows, "deliverable": "int8", "max_accuracy_drop": 0.01, "baseline_metric": 0.99, "metric": "top1"}
    text = _summary({**res, "versus_peer": vs})
    assert "edgex ships edgex int8 at 2.00x" in text and "peer: slower, right at 1.70x" in text
    # a peer within budget and clearly faster is flagged; one within the timing noise is a tie
    rows[3].update(p50=4.0, speedup=2.5)
    vs = _versus_peer(rows, _timed(rows, np.random.default_rng(0)), "int8", 0.99, 0.01)
    assert vs["verdict"] == "peer wins" and "PEER WINS" in _summary({**res, "versus_peer": vs})
    rows[3].update(p50=4.98, speedup=2.008)
    vs = _versus_peer(rows, _timed(rows, np.random.default_rng(0)), "int8", 0.99, 0.01)
    assert vs["verdict"].startswith("tie")
    assert set(SCENARIOS) == {"digits", "minilm", "mobilenet"}
