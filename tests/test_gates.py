"""CI gates: latency intervals, device estimates, JUnit output and `edgex compare`."""

from __future__ import annotations

import json
import shutil
import xml.etree.ElementTree as ET

import numpy as np
import pytest
import torch
from conftest import FAST_BENCH, run_cli, write_tiny_project

from exporter.bench.latency import bootstrap_interval


def test_bootstrap_interval_brackets_the_percentile():
    samples = np.random.default_rng(1).normal(10.0, 1.0, 2000)
    lo, hi = bootstrap_interval(samples, 90)
    assert lo < np.percentile(samples, 90) < hi and hi - lo < 0.5
    assert bootstrap_interval(samples, 90) == (lo, hi)  # seeded: same samples, same interval


def test_latency_interval_and_estimates_in_manifest(tiny_build):
    for prof in tiny_build["manifest"]["profiles"]:
        for v in prof["variants"]:
            lat = v["latency_ms"]
            lo, hi = lat["interval95"]
            point = lat[f"p{lat['budget_percentile']:g}"]  # the percentile the budget names, as summarised
            assert lo - 1e-4 <= point <= hi + 1e-4  # the interval brackets its own estimate (4-decimal rounding)
            half_width = 100 * (hi - lo) / 2 / point
            # lo, hi and the point are each rounded to 4 decimals: an absolute error in the bounds and a
            # relative one (5e-5 / point) through the denominator, which matters when the interval is wide
            rounding = 1e-3 + 5e-5 / point
            assert lat["interval95_half_width_pct"] == pytest.approx(half_width, rel=rounding, abs=100 * 1e-4 / point)
            verdict = v["verdicts"][0]
            assert verdict["budget"].startswith("latency")
            # judged on device evidence: the estimate's band decides, a host interval never does
            assert not verdict["basis"].startswith("host measurement")
            if verdict["interval"] is not None:
                assert verdict["decided"] in (True, False)
            else:  # no band (an unvalidated estimate) or no evidence (the HTP runs no FP32)
                assert verdict["decided"] is None
                assert verdict["value"] is None or "unvalidated" in verdict["basis"]
            est = v["device_estimate"]
            if prof["target"] == "qnn" and v["artifact"]["precision"] == "fp32":
                assert est["available"] is False and "fp32" in est["reason"]  # the HTP runs no FP32
                continue
            assert est["available"] is True, est
            assert est["device_latency_ms"] > 0 and est["energy_mj"] > 0
            assert "estimate" in est["method"]
            if est.get("error_band"):  # fitted on published timings: the host's efficiency plays no part
                assert est["efficiency"] is None and est["latency_interval_ms"][0] < est["device_latency_ms"]
            else:
                assert 0 < est["efficiency"] <= 1


def test_energy_budget_judged_on_the_estimate(tiny_build):
    pi = next(p for p in tiny_build["manifest"]["profiles"] if p["id"] == "raspberry-pi-5-cpu")
    energy = next(v for v in pi["verdicts"] if v["budget"] == "energy_mj")
    assert energy["ok"] in (True, False) and energy["value"] > 0 and "estimate" in energy["basis"]


def test_junit_written_for_a_budget_miss(tmp_path):
    import yaml
    from conftest import ROOT

    data = yaml.safe_load((ROOT / "device_profiles" / "raspberry-pi-5-cpu.yaml").read_text())
    data["id"] = "tiny-board"
    data["budgets"]["model_size_mb"] = 0.000001
    (tmp_path / "tiny-board.yaml").write_text(yaml.safe_dump(data))
    recipe = write_tiny_project(
        tmp_path / "p", profiles=["tiny-board"], quantize={"enabled": False}, bench=dict(FAST_BENCH, min_runs=5)
    )
    junit = tmp_path / "junit.xml"
    proc = run_cli("-q", "--profiles-dir", str(tmp_path), "build", str(recipe), "--junit", str(junit))
    assert proc.returncode == 1
    root = ET.parse(junit).getroot()
    suite = root.find("testsuite")
    assert suite.get("name") == "tiny-board/baseline" and int(suite.get("failures")) == 1
    failed = [c.get("name") for c in suite.iter("testcase") if c.find("failure") is not None]
    assert failed == ["model_size_mb"]


def _heavy_model(path):
    """Same inputs and outputs as the tiny model, about 100x the work."""

    class Heavy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.body = torch.nn.Sequential(*[torch.nn.Conv2d(3 if i == 0 else 64, 64, 3, padding=1) for i in range(6)])
            self.head = torch.nn.Linear(64, 5)

        def forward(self, image):
            return self.head(self.body(image).mean(dim=(2, 3)))

    torch.manual_seed(0)
    torch.onnx.export(
        Heavy().eval(),
        (torch.zeros(1, 3, 16, 16),),
        str(path),
        input_names=["image"],
        output_names=["logits"],
        dynamo=True,
    )


def test_compare_ignores_noise_and_flags_a_real_slowdown(tiny_build, tmp_path):
    same = run_cli("compare", str(tiny_build["out"]), str(tiny_build["out"]), "--rounds", "3", "--json")
    assert same.returncode == 0, same.stdout
    result = json.loads(same.stdout)
    assert result["compared"] and all(
        c["detail"]["calibrated"] for f in result["compared"] for c in f["checks"] if c["check"] == "latency p50"
    )
    new = tmp_path / "new"
    shutil.copytree(tiny_build["out"], new)
    _heavy_model(new / "raspberry-pi-5-cpu" / "baseline.onnx")
    proc = run_cli("compare", str(tiny_build["out"]), str(new), "--rounds", "3", "--json")
    assert proc.returncode == 1, proc.stdout
    flagged = [(f["profile"], f["variant"]) for f in json.loads(proc.stdout)["compared"] if f["regression"]]
    assert flagged == [("raspberry-pi-5-cpu", "baseline")]


def test_compare_refuses_what_is_not_a_manifest(tmp_path):
    (tmp_path / "manifest.json").write_text("{}")
    proc = run_cli("compare", str(tmp_path), str(tmp_path))
    assert proc.returncode == 2 and "not an edgex manifest" in proc.stderr
