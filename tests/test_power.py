"""Measured power: every sensor of the registry on a fake sysfs tree, the meter's arithmetic, the profile
field, and `edgex bench` judging energy and power on the measurement (exit 1 + JUnit on a miss)."""

from __future__ import annotations

import json
import os
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, run_cli

from exporter.bench import power
from exporter.errors import UsageError


def run_inprocess(capsys, *args: str) -> tuple[int, str, str]:
    """The console entry point in this process (no interpreter start-up): exit code, stdout, stderr."""
    from exporter.cli import main

    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(list(args))
    out, err = capsys.readouterr()
    return int(exc.value.code or 0), out, err


def _write(path: Path, value: object) -> None:
    """Atomic, like a sysfs attribute: a reader never sees a half-written number."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(f"{value}\n")
    os.replace(tmp, path)


def _rapl_tree(root: Path, start_uj: int = 0, range_uj: int = 262143328850) -> list[tuple[Path, float]]:
    """Two package zones drawing 5 W and 3 W, and a core subzone; returns (energy_uj file, watts) pairs."""
    base = root / "class" / "powercap"
    zones = []
    for zone, name, watts in (("intel-rapl:0", "package-0", 5.0), ("intel-rapl:1", "package-1", 3.0)):
        _write(base / zone / "name", name)
        _write(base / zone / "max_energy_range_uj", range_uj)
        _write(base / zone / "energy_uj", start_uj)
        zones.append((base / zone / "energy_uj", watts))
    # A subzone (core) is part of its package: counting it too would double the energy.
    _write(base / "intel-rapl:0:0" / "name", "core")
    _write(base / "intel-rapl:0:0" / "energy_uj", 123)
    return zones


def _counted_block(meter: power.Meter, zones, seconds: float, runs: int, start_uj: int, range_uj: int) -> None:
    """A timed block during which each counter advances by its watts x the block's own elapsed time
    (written just before the meter's last read, as the hardware would have counted)."""
    meter.block_start("m")
    t0 = time.perf_counter()
    time.sleep(seconds)
    elapsed = time.perf_counter() - t0
    for path, watts in zones:
        _write(path, (start_uj + int(watts * elapsed * 1e6)) % range_uj)
    meter.block_stop("m", runs)


def _hwmon_tree(root: Path) -> None:
    _write(root / "class/hwmon/hwmon0/name", "soc_power")
    _write(root / "class/hwmon/hwmon0/power1_input", 2_500_000)  # uW
    _write(root / "class/hwmon/hwmon0/power1_label", "soc")
    _write(root / "class/hwmon/hwmon1/in1_input", 5000)  # mV
    _write(root / "class/hwmon/hwmon1/curr1_input", 1200)  # mA
    _write(root / "class/hwmon/hwmon1/in1_label", "board_in")


def _time_block(meter: power.Meter, name: str, seconds: float, runs: int) -> None:
    meter.block_start(name)
    time.sleep(seconds)
    meter.block_stop(name, runs)


def test_rapl_counter_before_and_after(tmp_path):
    zones = _rapl_tree(tmp_path)
    reading, why = power.find("rapl", str(tmp_path))
    assert why == "" and reading.kind == "energy_j"
    assert reading.channels == ("package-0", "package-1")  # the core subzone is not added again
    meter = power.Meter(reading, idle_seconds=0.05)
    assert meter.idle() == 0.0  # the counters did not move
    _counted_block(meter, zones, 0.3, 100, 0, 262143328850)
    result = meter.result("m", rate_hz=10)
    assert result["busy_w"] == pytest.approx(8.0, rel=0.1)
    assert result["method"].startswith("energy counter") and result["sampling_hz"] is None
    per_inf = result["seconds"] / result["runs"]
    assert result["energy_mj"] == pytest.approx(result["busy_w"] * per_inf * 1e3, rel=1e-3)
    assert result["dynamic_energy_mj"] == pytest.approx(result["energy_mj"], rel=1e-3)  # idle was 0 W
    assert result["sustains_rate"] is True  # 3 ms per inference at 10 Hz
    assert result["average_power_w"] == pytest.approx(result["dynamic_energy_mj"] * 1e-3 * 10, rel=1e-3)


def test_rapl_counter_that_wraps_during_a_block(tmp_path):
    range_uj, start_uj = 10_000_000, 9_500_000  # 10 J range: 0.5 J from the top, both zones wrap
    zones = _rapl_tree(tmp_path, start_uj=start_uj, range_uj=range_uj)
    reading, _ = power.find("rapl", str(tmp_path))
    assert reading.wraps_j == pytest.approx((10.0, 10.0))
    meter = power.Meter(reading, idle_seconds=0.0)
    _counted_block(meter, zones, 0.3, 10, start_uj, range_uj)
    assert all(float(p.read_text()) < start_uj for p, _ in zones)  # they did wrap
    # Each zone wraps on its own: the delta is taken per counter, with its own range.
    assert meter.result("m")["busy_w"] == pytest.approx(8.0, rel=0.1)


def test_hwmon_power_and_voltage_current_sampled_at_the_set_rate(tmp_path):
    _hwmon_tree(tmp_path)
    reading, _ = power.find("hwmon", str(tmp_path))
    assert reading.kind == "power_w" and set(reading.channels) == {"soc", "board_in"}
    assert reading.read() == pytest.approx(2.5 + 5.0 * 1.2)
    meter = power.Meter(reading, rate_hz=200, idle_seconds=0.1)
    meter.idle()
    _time_block(meter, "m", 0.3, runs=30)
    res = meter.result("m")
    assert res["busy_w"] == pytest.approx(8.5, rel=0.05)  # a constant draw: the mean is exact, time-weighted
    assert res["sampling_hz"] == 200 and 30 <= res["samples"] <= 70
    assert 100 <= res["achieved_hz"] <= 230
    only, _ = power.find("hwmon", str(tmp_path), ("board_in",))
    assert only.read() == pytest.approx(6.0)
    missing, why = power.find("hwmon", str(tmp_path), ("gpu",))
    assert missing is None and "gpu" in why and "board_in" in why


def test_jetson_ina3221_defaults_to_the_module_input_rail(tmp_path):
    dev = tmp_path / "bus/i2c/drivers/ina3221/1-0040/hwmon/hwmon3"
    for idx, label, mv, ma in ((1, "VDD_IN", 5000, 1400), (2, "VDD_CPU_GPU_CV", 5000, 600), (3, "VDD_SOC", 5000, 300)):
        _write(dev / f"in{idx}_label", label)
        _write(dev / f"in{idx}_input", mv)
        _write(dev / f"curr{idx}_input", ma)
    reading, _ = power.find("jetson-ina3221", str(tmp_path))
    assert reading.channels == ("VDD_IN",) and reading.read() == pytest.approx(7.0)
    rails, _ = power.find("jetson-ina3221", str(tmp_path), ("VDD_CPU_GPU_CV", "VDD_SOC"))
    assert rails.read() == pytest.approx(4.5)


def test_jetson_legacy_iio_rails(tmp_path):
    dev = tmp_path / "bus/i2c/drivers/ina3221x/0-0040/iio:device0"
    _write(dev / "rail_name_0", "VDD_IN")
    _write(dev / "in_power0_input", 4200)  # mW
    _write(dev / "rail_name_1", "VDD_GPU")
    _write(dev / "in_power1_input", 900)
    reading, _ = power.find("jetson-ina3221", str(tmp_path))
    assert reading.channels == ("VDD_IN",) and reading.read() == pytest.approx(4.2)


def test_android_battery_uses_the_size_of_current_now(tmp_path):
    bat = tmp_path / "class/power_supply/battery"
    _write(bat / "current_now", -500_000)  # uA, negative while discharging
    _write(bat / "voltage_now", 4_000_000)  # uV
    reading, _ = power.find("android-battery", str(tmp_path))
    assert reading.read() == pytest.approx(2.0)


def test_missing_sensor_says_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.setenv(power.ENV_ROOT, str(tmp_path))
    for name in power.SENSORS:
        reading, why = power.find(name)
        assert reading is None and str(tmp_path) in why
    meter, info = power.meter_for("rapl")
    assert meter is None and info["available"] is False and "intel-rapl" in info["reason"]


def test_profile_power_sensor_is_checked(tmp_path):
    from exporter.profiles import load_profile_file

    data = yaml.safe_load((ROOT / "device_profiles" / "raspberry-pi-5-cpu.yaml").read_text())
    data["id"] = "pi-bad-sensor"
    data["power_sensor"] = {"sensor": "rapel"}
    path = tmp_path / "pi-bad-sensor.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(UsageError, match="power_sensor.*did you mean 'rapl'"):
        load_profile_file(path)


def _tiny_onnx(path: Path) -> Path:
    import onnx
    from tiny_models import matmul_onnx

    onnx.save(matmul_onnx(128, relu=True, opset=18, seed=0), str(path))
    return path


def power_profile(folder: Path, pid: str, sensor: str | None, max_w: float = 100.0) -> Path:
    """A Pi 5 profile with energy and power budgets and (optionally) a power sensor."""
    data = yaml.safe_load((ROOT / "device_profiles" / "raspberry-pi-5-cpu.yaml").read_text())
    data["id"] = pid
    data["budgets"]["average_power"] = {"max_w": max_w, "rate_hz": 30}
    data["budgets"]["latency"]["max_ms"] = 5000  # these tests are about power: a loaded host's tail must not decide
    if sensor:
        data["power_sensor"] = {"sensor": sensor, "rate_hz": 200, "idle_seconds": 0.2}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{pid}.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    return folder


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return _tiny_onnx(tmp_path_factory.mktemp("power") / "tiny.onnx")


def test_bench_judges_energy_on_the_measurement_and_a_miss_exits_1_with_junit(tiny, tmp_path):
    sysfs = tmp_path / "sys"
    _hwmon_tree(sysfs)
    profiles = power_profile(tmp_path / "profiles", "pi-measured", "hwmon", max_w=4.0)
    junit = tmp_path / "junit.xml"
    args = ["--profiles-dir", str(profiles), "bench", str(tiny), "--profile", "pi-measured"]
    proc = run_cli(*args, "--runs", "50", "--seconds", "0.3", "--json", "--junit", str(junit),
                   env={power.ENV_ROOT: str(sysfs)})  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    result = json.loads(proc.stdout)
    m = result["measured_power"]
    assert m["available"] and m["sensor"] == "hwmon" and m["busy_w"] == pytest.approx(8.5, rel=0.05)
    assert result["power_judged_on"] == "measured" and result["device_estimate"]["available"]
    verdicts = {v["budget"]: v for v in result["verdicts"]}
    assert verdicts["energy_mj"]["value"] == m["energy_mj"] and "measured by hwmon" in verdicts["energy_mj"]["basis"]
    # 8.5 W idle and busy: at 30 Hz the board draws ~8.5 W, over the 4 W budget.
    assert verdicts["average_power_w"]["ok"] is False and verdicts["average_power_w"]["value"] > 4.0
    failures = [f.get("message") for f in ET.parse(junit).getroot().iter("failure")]
    assert any("average_power_w" in f and "measured by hwmon" in f for f in failures)


def test_profile_sensor_absent_here_falls_back_to_the_estimate_and_says_so(tiny, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv(power.ENV_ROOT, str(tmp_path / "empty"))
    profiles = power_profile(tmp_path / "profiles", "pi-orin-like", "jetson-ina3221")
    args = ["--profiles-dir", str(profiles), "bench", str(tiny), "--profile", "pi-orin-like", "--json"]
    code, out, err = run_inprocess(capsys, *args, "--runs", "20", "--seconds", "0.1")
    assert code == 0, err
    result = json.loads(out)
    assert result["measured_power"]["available"] is False and "ina3221" in result["measured_power"]["reason"]
    assert result["power_judged_on"] == "estimate"
    energy = next(v for v in result["verdicts"] if v["budget"] == "energy_mj")
    assert energy["basis"].startswith("device estimate")


def test_asking_for_a_sensor_this_machine_lacks_is_exit_2(tiny, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv(power.ENV_ROOT, str(tmp_path))
    args = ["bench", str(tiny), "--profile", "raspberry-pi-5-cpu", "--power-sensor", "rapl", "--runs", "5"]
    code, _, err = run_inprocess(capsys, *args)
    assert code == 2
    assert "--power-sensor" in err and "intel-rapl" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_build_records_measured_power_per_variant_in_manifest_and_report(tmp_path):
    from conftest import write_tiny_project

    sysfs = tmp_path / "sys"
    _hwmon_tree(sysfs)
    profiles = power_profile(tmp_path / "profiles", "pi-measured", "hwmon")
    from conftest import FAST_BENCH

    # FP32 only: the power hook is the same for every variant, and quantizing would only cost time.
    recipe = write_tiny_project(
        tmp_path / "proj", profiles=["pi-measured"], quantize={"enabled": False}, bench=dict(FAST_BENCH, min_runs=10)
    )
    proc = run_cli("--profiles-dir", str(profiles), "build", str(recipe), "--json", env={power.ENV_ROOT: str(sysfs)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    prof = json.loads(proc.stdout)["profiles"][0]
    assert [v["name"] for v in prof["variants"]] == ["baseline"]
    for v in prof["variants"]:
        m = v["measured_power"]
        assert m["available"] and m["sensor"] == "hwmon" and m["samples"] > 0, v["name"]
        assert v["power_judged_on"] == "measured" and v["device_estimate"]["available"]
        assert "static_power_w x latency" in v["device_estimate"]["formula"]  # the estimate stays, with its formula
        power_verdict = next(x for x in v["verdicts"] if x["budget"] == "average_power_w")
        assert power_verdict["value"] == m["average_power_w"] and "measured by hwmon" in power_verdict["basis"]
    report = (tmp_path / "proj" / "out" / "report.md").read_text()
    assert "Measured power (hwmon" in report and "judged on these, not on the estimate" in report
    assert "Formula: latency = the fitted device model where the profile has one" in report
