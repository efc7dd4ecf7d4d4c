"""The bundled demo, end to end (what `make demo` runs): the issue's floor for INT8 quality and size."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.slow


def test_demo_builds_phone_car_and_board(digits_build):
    proc = digits_build["proc"]
    assert proc.returncode == 0, proc.stderr[-2000:]
    m = digits_build["manifest"]
    classes = {p["class"] for p in m["profiles"]}
    assert any(c.startswith("phone") for c in classes)
    assert any(c.startswith("automotive") for c in classes)
    assert classes & {"embedded", "robot"}
    for prof in m["profiles"]:
        assert prof["id"] in proc.stdout  # the per-profile summary line


def test_int8_within_one_point_and_under_30_percent(digits_build):
    m = digits_build["manifest"]
    assert m["data"]["evaluation"]["samples"] >= 500
    for prof in m["profiles"]:
        base, int8 = prof["variants"][0], prof["variants"][1]
        assert base["name"] == "baseline" and int8["name"] == "int8"
        assert base["metric"]["value"] >= 0.97, "the bundled weights should be a well-trained CNN"
        assert base["metric"]["value"] - int8["metric"]["value"] <= 0.01, prof["id"]
        assert int8["artifact"]["bytes"] < 0.30 * base["artifact"]["bytes"], prof["id"]
        assert base["macs"] >= 20_000_000  # heavy enough that latency is measurable


def test_demo_report_has_plot_and_tables(digits_build):
    out = digits_build["out"]
    report = (out / "report.md").read_text()
    assert "latency_vs_accuracy.png" in report and (out / "latency_vs_accuracy.png").stat().st_size > 10_000
    assert "host measurement" in report


def test_board_int8_comes_from_the_preset_race(digits_build):
    """The CPU board's INT8 preset was raced among what a Cortex-A76 runs; the NPU profiles' was not."""
    m = digits_build["manifest"]
    races = {
        p["id"]: next(v for v in p["variants"] if v["name"] == "int8")["produced_by"].get("preset_race")
        for p in m["profiles"]
    }
    race = races["raspberry-pi-5-cpu"]
    assert race["device_isa"] == "arm64 dotprod neon"
    names = [c["candidate"] for c in race.get("candidates", [])]
    assert "Optimum avx512_vnni static preset" in [e["candidate"] for e in race["excluded"]]
    assert {"target preset", "U8U8 (unsigned weights)", "Optimum arm64 static preset"} <= set(names)
    kept = next(c for c in race["candidates"] if c["candidate"] == race["kept"])
    assert kept["within_budget"] and kept["p50_ms"] > 0
    assert races["sa8295p-qnn"] is None  # simulated on the host: no host timing decides an NPU preset
    assert "Preset race for `int8`" in (digits_build["out"] / "report.md").read_text()
