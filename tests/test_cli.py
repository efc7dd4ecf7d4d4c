"""The CLI's informational commands and the Python API that mirrors it."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from conftest import ROOT, run_cli

import exporter


def test_version_and_help():
    proc = run_cli("--version")
    assert proc.returncode == 0 and exporter.__version__ in proc.stdout
    proc = run_cli("--help")
    assert proc.returncode == 0 and "Examples:" in proc.stdout
    for cmd in ("build", "bench", "inspect", "validate", "schema", "profiles", "targets"):
        assert cmd in proc.stdout


def test_schema_commands_emit_json_schema():
    for kind in ("recipe", "profile", "target"):
        proc = run_cli("schema", kind)
        assert proc.returncode == 0, proc.stderr
        schema = json.loads(proc.stdout)
        assert schema["type"] == "object" and schema["additionalProperties"] is False
    recipe_schema = json.loads(run_cli("schema", "recipe").stdout)
    assert {"version", "model", "data", "profiles"} <= set(recipe_schema["required"])


def test_targets_list_and_show():
    proc = run_cli("targets", "list", "--json")
    ids = {t["id"] for t in json.loads(proc.stdout)}
    assert ids == {"cpu", "xnnpack", "nnapi", "coreml", "qnn", "tensorrt"}
    shown = json.loads(run_cli("targets", "show", "tensorrt", "--json").stdout)
    assert shown["quantization"]["activation_type"] == "int8" and shown["quantization"]["activation_symmetric"]


def test_profiles_cover_device_classes_and_cite_sources():
    proc = run_cli("profiles", "list", "--json")
    assert proc.returncode == 0
    profiles = json.loads(proc.stdout)
    assert len(profiles) >= 12
    classes = {p["class"] for p in profiles}
    assert {"phone-flagship", "phone-mid", "phone-budget", "embedded"} <= classes
    assert classes & {"automotive-cockpit", "automotive-adas"}
    targets_used = {p["target"] for p in profiles}
    assert targets_used == {"cpu", "xnnpack", "nnapi", "coreml", "qnn", "tensorrt"}  # every target has a profile
    for path in sorted((ROOT / "device_profiles").glob("*.yaml")):
        data = yaml.safe_load(path.read_text())
        assert data["soc"], path
        assert all(len(f["source"]) >= 3 for f in data["soc"].values()), path
        if data["class"].startswith("automotive"):
            assert data["budgets"]["latency"]["percentile"] == 99.9, path


def test_profiles_show_and_validate():
    shown = json.loads(run_cli("profiles", "show", "sa8295p-qnn", "--json").stdout)
    assert shown["class"] == "automotive-cockpit" and shown["target"] == "qnn"
    proc = run_cli("profiles", "validate", str(ROOT / "device_profiles"), "--json")
    assert proc.returncode == 0 and len(json.loads(proc.stdout)["valid"]) >= 12


def test_validate_bundled_recipe():
    proc = run_cli("validate", str(ROOT / "examples" / "digits.yaml"), "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["ok"] and result["evaluation_samples"] >= 500 and result["profiles"] == 3


def test_inspect_and_bench_a_built_model(tiny_build):
    model = tiny_build["out"] / "raspberry-pi-5-cpu" / "baseline.onnx"
    shape = ["--shape", "image=1x3x16x16"]  # the CPU file keeps its batch axis dynamic
    info = json.loads(run_cli("inspect", str(model), *shape, "--json").stdout)
    base = tiny_build["manifest"]["profiles"][0]["variants"][0]
    assert info["macs"] == base["macs"] > 0 and info["parameters"] == base["params"]
    assert info["inputs"][0]["name"] == "image" and info["opset"]["ai.onnx"] == 18
    assert "Conv" in info["op_histogram"]
    proc = run_cli(
        "bench", str(model), "--profile", "raspberry-pi-5-cpu", "--runs", "20", "--seconds", "0.05", *shape, "--json"
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["latency_ms"]["runs"] >= 20
    # A session costs memory, and the child's peak includes what it held before the session.
    assert 0 < result["memory"]["session_mb"] < result["memory"]["peak_rss_mb"]
    accuracy = [v for v in result["verdicts"] if v["budget"] == "accuracy_drop"]
    assert accuracy and accuracy[0]["ok"] is None  # no data given: not evaluated, not passed
    text = run_cli("inspect", str(model), *shape)
    assert text.returncode == 0 and "MACs" in text.stdout


def test_a_shipped_file_runs_at_the_shapes_its_build_recorded(tiny_build, tmp_path):
    """A file edgex shipped says the shapes it was judged at (metadata_props), so it needs no
    --shape; the same graph without that record is exit 2 naming the dynamic batch, never a 1."""
    import onnx

    model = tiny_build["out"] / "raspberry-pi-5-cpu" / "baseline.onnx"
    info = json.loads(run_cli("inspect", str(model), "--json").stdout)
    assert info["shapes"] == {"image": [1, 3, 16, 16]}
    bare = onnx.load(str(model))
    del bare.metadata_props[:]
    onnx.save(bare, str(tmp_path / "bare.onnx"))
    proc = run_cli("inspect", str(tmp_path / "bare.onnx"))
    assert proc.returncode == 2 and "axis 0" in proc.stderr and "--shape" in proc.stderr


def test_bench_exit_1_on_budget_miss(tiny_build, tmp_path):
    data = yaml.safe_load((ROOT / "device_profiles" / "raspberry-pi-5-cpu.yaml").read_text())
    data["id"] = "tight"
    data["budgets"]["model_size_mb"] = 0.000001
    (tmp_path / "tight.yaml").write_text(yaml.safe_dump(data))
    model = tiny_build["out"] / "raspberry-pi-5-cpu" / "int8.onnx"
    proc = run_cli(
        "--profiles-dir", str(tmp_path), "bench", str(model), "--profile", "tight", "--runs", "5", "--seconds", "0",
        "--shape", "image=1x3x16x16",
    )  # fmt: skip
    assert proc.returncode == 1
    assert "model_size_mb" in proc.stdout and "FAIL" in proc.stdout


def test_python_api_mirrors_cli(tiny_build, tmp_path):
    info = exporter.inspect(tiny_build["out"] / "sa8295p-qnn" / "int8.onnx")
    assert info["op_histogram"].get("QuantizeLinear", 0) >= 1
    summary = exporter.validate(tiny_build["recipe"])
    assert summary["ok"] is True
    manifest = exporter.build(tiny_build["recipe"], profiles=["raspberry-pi-5-cpu"], out=tmp_path / "api")
    assert manifest["profiles"][0]["id"] == "raspberry-pi-5-cpu"
    assert Path(tmp_path / "api" / "manifest.json").is_file()


def test_click_usage_errors_follow_the_contract():
    proc = run_cli("build", "--json")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    err = json.loads(proc.stdout)["error"]
    assert err["exit_code"] == 2 and "RECIPE" in err["message"] and "edgex build --help" in err["message"]
    proc = run_cli("no-such-command")
    assert proc.returncode == 2 and proc.stderr.startswith("edgex: error:")


def test_any_latency_percentile_is_judged(tiny_build, tmp_path):
    data = yaml.safe_load((ROOT / "device_profiles" / "raspberry-pi-5-cpu.yaml").read_text())
    data["id"] = "p95-board"
    data["budgets"]["latency"] = {"percentile": 95, "max_ms": 1000}
    (tmp_path / "p95-board.yaml").write_text(yaml.safe_dump(data))
    model = tiny_build["out"] / "raspberry-pi-5-cpu" / "baseline.onnx"
    proc = run_cli(
        "--profiles-dir",
        str(tmp_path),
        "bench",
        str(model),
        "--profile",
        "p95-board",
        "--runs",
        "20",
        "--seconds",
        "0",
        "--json",
    )
    assert proc.returncode == 0, proc.stdout
    verdict = json.loads(proc.stdout)["verdicts"][0]
    assert verdict["budget"] == "latency_p95_ms" and verdict["ok"] is True and 0 < verdict["value"] < 1000
