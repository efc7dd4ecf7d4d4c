"""End-to-end builds of TinyNet through the CLI: the manifest contract, determinism, gates."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import yaml
from conftest import FAST_BENCH, run_cli, write_tiny_project

VARIANT_KEYS = {"name", "artifact", "latency_ms", "metric", "params", "macs", "produced_by", "parent", "verdicts"}


def test_manifest_contract(tiny_build):
    m = tiny_build["manifest"]
    assert m["schema_version"] == 1
    recipe = tiny_build["recipe"]
    assert m["recipe"]["sha256"] == hashlib.sha256(recipe.read_bytes()).hexdigest()
    assert {"torch", "onnx", "onnxruntime", "python"} <= set(m["tool_versions"])
    assert m["seed"] == 0
    assert [p["id"] for p in m["profiles"]] == ["raspberry-pi-5-cpu", "sa8295p-qnn"]
    for prof in m["profiles"]:
        assert {"id", "target", "deliverable", "variants", "verdicts", "ok"} <= set(prof)
        assert prof["bench"]["mlperf"] is False and prof["bench"]["min_runs"] >= 1  # the settings it was timed with
        names = [v["name"] for v in prof["variants"]]
        # CPU runtimes are offered dynamic INT8 beside the static artifact; NPUs take static only
        assert names == (["baseline", "int8", "int8-dynamic"] if prof["target"] == "cpu" else ["baseline", "int8"])
        assert prof["deliverable"] in names
        for v in prof["variants"]:
            assert VARIANT_KEYS <= set(v)
            assert {"path", "sha256", "bytes", "precision"} <= set(v["artifact"])
            assert {"p50", "p90", "p99"} <= set(v["latency_ms"])
            assert v["latency_ms"]["p50"] <= v["latency_ms"]["p90"] <= v["latency_ms"]["p99"]
            assert v["metric"]["name"] == "cosine"
            for verdict in v["verdicts"]:
                assert {"budget", "limit", "value", "ok"} <= set(verdict)
        int8 = prof["variants"][1]
        assert int8["parent"] == "baseline" and int8["produced_by"]["step"] == "quantize"
        search = int8["produced_by"]["search"]
        assert search["steps"] and search["met"] is (int8["metric"]["drop"] <= search["budget"] + 1e-9)
        guard = int8["produced_by"]["speed_guard"]
        assert (guard is not None) is (prof["target"] == "cpu")  # only where the host runs the target's kernels
        assert prof["variants"][0]["produced_by"]["parity"]["ok"] is True
        # energy is judged on the device estimate, and says so
        energy = [x for x in prof["verdicts"] if x["budget"] == "energy_mj"]
        assert all(x["ok"] is not None and "estimate" in x["basis"] for x in energy)


def test_every_file_is_listed_with_its_hash(tiny_build):
    out: Path = tiny_build["out"]
    listed = {f["path"]: f for f in tiny_build["manifest"]["files"]}
    on_disk = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file() and p.name != "manifest.json"}
    assert set(listed) == on_disk
    for rel, entry in listed.items():
        data = (out / rel).read_bytes()
        assert entry["sha256"] == hashlib.sha256(data).hexdigest() and entry["bytes"] == len(data)
    assert (out / "report.md").read_text().count("## ") == 2
    assert (out / "latency_vs_accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((out / "manifest.json").read_text()) == tiny_build["manifest"]
    assert not list(out.parent.glob(".out.edgex-*")), "staging folders left behind"


def test_static_and_dynamic_exports_follow_the_target(tiny_build):
    out: Path = tiny_build["out"]
    for profile, static in (("raspberry-pi-5-cpu", False), ("sa8295p-qnn", True)):
        for name in ("baseline", "int8"):
            model = onnx.load(str(out / profile / f"{name}.onnx"))
            dims = model.graph.input[0].type.tensor_type.shape.dim
            assert all(d.HasField("dim_value") for d in dims) is static, (profile, name)


def test_int8_is_real_qdq_with_the_target_preset(tiny_build):
    out: Path = tiny_build["out"]
    for profile, act, weight in (("raspberry-pi-5-cpu", 2, 3), ("sa8295p-qnn", 2, 2)):  # onnx: UINT8=2, INT8=3
        model = onnx.load(str(out / profile / "int8.onnx"))
        ops = [n.op_type for n in model.graph.node]
        # >= 3: the speed guard may keep only the matrix ops in INT8 on CPU (input, weight and bias of the head)
        assert ops.count("QuantizeLinear") >= 1 and ops.count("DequantizeLinear") >= 3
        weight_types = {i.data_type for i in model.graph.initializer if i.name.endswith("_quantized")}
        assert weight in weight_types
        zero_points = {i.data_type for i in model.graph.initializer if i.name.endswith("_zero_point")}
        assert act in zero_points


def test_artifacts_run_and_match_recorded_metric(tiny_build):
    """Re-run the shipped files in a fresh onnxruntime session: the recorded metric is real."""
    out: Path = tiny_build["out"]
    folder = tiny_build["recipe"].parent
    ev = np.load(folder / "eval.npz")["image"]
    prof = tiny_build["manifest"]["profiles"][0]
    base = ort.InferenceSession(str(out / prof["variants"][0]["artifact"]["path"]))
    q = ort.InferenceSession(str(out / prof["variants"][1]["artifact"]["path"]))
    ref = np.concatenate([base.run(None, {"image": ev[i : i + 1]})[0] for i in range(len(ev))])
    got = np.concatenate([q.run(None, {"image": ev[i : i + 1]})[0] for i in range(len(ev))])
    cos = np.mean(np.sum(ref * got, 1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(got, axis=1)))
    assert abs(cos - prof["variants"][1]["metric"]["value"]) < 1e-4


def test_rebuild_is_byte_identical(tiny_build, tmp_path):
    """Same recipe and seed: every model file has the same sha256 (timings aside). The speed guard
    decides from timings, so the rebuild replays the first build's decisions (`--replay`); without it
    a loaded host can flip the guard's rung and with it the INT8 bytes."""
    out2 = tmp_path / "again"
    replay = str(tiny_build["out"] / "manifest.json")
    proc = run_cli("-q", "build", str(tiny_build["recipe"]), "--out", str(out2), "--json", "--replay", replay)
    # exit 1 is a latency budget missed on a busy host: the release is still written, and its
    # bytes are what this test is about
    assert proc.returncode in (0, 1), proc.stderr
    first = {f["path"]: f["sha256"] for f in tiny_build["manifest"]["files"] if f["path"].endswith(".onnx")}
    second = {f["path"]: f["sha256"] for f in json.loads(proc.stdout)["files"] if f["path"].endswith(".onnx")}
    # 5 models + the QNN context binary (compiled in a fresh process from the model's bytes: same bytes too)
    assert first == second and len(first) == 6 and "sa8295p-qnn/int8.ctx.onnx" in first


def test_impossible_budget_exits_1_and_still_writes(tmp_path):
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    shipped = yaml.safe_load((Path(__file__).parent.parent / "device_profiles" / "raspberry-pi-5-cpu.yaml").read_text())
    shipped["id"] = "impossible-board"
    shipped["budgets"]["latency"]["max_ms"] = 0.0001
    (profiles / "impossible-board.yaml").write_text(yaml.safe_dump(shipped))
    recipe = write_tiny_project(tmp_path / "proj", profiles=["impossible-board"], quantize={"enabled": False})
    proc = run_cli("--profiles-dir", str(profiles), "build", str(recipe), "--json")
    assert proc.returncode == 1, proc.stderr
    m = json.loads(proc.stdout)
    prof = m["profiles"][0]
    assert m["ok"] is False and prof["ok"] is False
    missed = [v for v in prof["verdicts"] if v["ok"] is False]
    assert [v["budget"] for v in missed] == ["latency_p90_ms"]
    assert missed[0]["margin"] < 0
    assert (tmp_path / "proj" / "out" / "impossible-board" / "baseline.onnx").is_file()
    assert "BUDGET MISSED" in (tmp_path / "proj" / "out" / "report.md").read_text()


def test_profile_flag_replaces_recipe_list(tmp_path):
    recipe = write_tiny_project(tmp_path, quantize={"enabled": False}, bench=dict(FAST_BENCH, min_runs=5))
    proc = run_cli("-q", "build", str(recipe), "--profile", "tda4vm-cpu", "--out", str(tmp_path / "o"), "--json")
    assert proc.returncode == 0, proc.stderr
    m = json.loads(proc.stdout)
    assert [p["id"] for p in m["profiles"]] == ["tda4vm-cpu"]
    assert [v["name"] for v in m["profiles"][0]["variants"]] == ["baseline"]
    latency = m["profiles"][0]["verdicts"][0]
    assert latency["budget"] == "latency_p99.9_ms"  # automotive profiles judge the 99.9th percentile


def test_rebuild_replaces_previous_release_but_never_other_folders(tmp_path):
    recipe = write_tiny_project(tmp_path, quantize={"enabled": False}, bench=dict(FAST_BENCH, min_runs=5))
    out = tmp_path / "rel"
    args = ("-q", "build", str(recipe), "--profile", "raspberry-pi-5-cpu", "--out", str(out))
    assert run_cli(*args).returncode == 0
    (out / "stale.txt").write_text("left in an older release")
    proc = run_cli(*args)
    assert proc.returncode == 0, proc.stderr
    assert not (out / "stale.txt").exists() and (out / "manifest.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".rel")) == []
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("not ours")
    proc = run_cli("build", str(recipe), "--profile", "raspberry-pi-5-cpu", "--out", str(precious))
    assert proc.returncode == 2 and "not an edgex release" in proc.stderr
    assert (precious / "notes.txt").read_text() == "not ours"


def test_int8_only_target_never_ships_fp32(tiny_build):
    """QNN's HTP runs INT8 only: its deliverable is INT8 even when FP32 times faster on the host."""
    prof = next(p for p in tiny_build["manifest"]["profiles"] if p["target"] == "qnn")
    assert prof["deliverable"] == "int8"


def test_int8_only_target_refuses_a_float_build(tmp_path):
    recipe = write_tiny_project(tmp_path, quantize={"enabled": False}, profiles=["sa8295p-qnn"])
    proc = run_cli("build", str(recipe))
    assert proc.returncode == 2
    assert "quantize.enabled" in proc.stderr and "cannot run fp32" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_duplicate_profiles_are_refused(tmp_path):
    recipe = write_tiny_project(tmp_path)
    proc = run_cli("build", str(recipe), "--profile", "tda4vm-cpu", "--profile", "tda4vm-cpu")
    assert proc.returncode == 2 and "listed twice" in proc.stderr


def test_lower_is_better_custom_metric(tmp_path):
    """A callable error metric (lower is better): a worse INT8 model must show a positive drop."""
    recipe = write_tiny_project(
        tmp_path,
        metric={"callable": "err.py:rmse", "name": "rmse", "higher_is_better": False},
        profiles=["raspberry-pi-5-cpu"],
        bench=dict(FAST_BENCH, min_runs=5),
        max_accuracy_drop=1000.0,
    )
    (tmp_path / "err.py").write_text(
        "import numpy as np\n\n\ndef rmse(output, labels, reference):\n"
        "    return float(np.sqrt(np.mean((output - reference) ** 2)))\n"
    )
    proc = run_cli("-q", "build", str(recipe), "--json")
    assert proc.returncode == 0, proc.stderr
    base, int8 = json.loads(proc.stdout)["profiles"][0]["variants"][:2]
    assert base["metric"]["value"] == 0.0 and int8["metric"]["value"] > 0
    assert int8["metric"]["drop"] == pytest.approx(int8["metric"]["value"])  # worse = positive drop


def test_two_builds_into_one_folder_cannot_interleave(tmp_path):
    """While one build holds the output folder, a second one refuses clearly and writes nothing."""
    import subprocess
    import sys
    import time

    recipe = write_tiny_project(tmp_path, quantize={"enabled": False}, bench=dict(FAST_BENCH, min_seconds=3.0))
    out = tmp_path / "shared"
    first = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "exporter.cli",
            "-q",
            "build",
            str(recipe),
            "--profile",
            "raspberry-pi-5-cpu",
            "--out",
            str(out),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not any(p.name.startswith(".shared.edgex-tmp-") for p in tmp_path.iterdir()):
            assert first.poll() is None and time.monotonic() < deadline, "first build never started staging"
            time.sleep(0.2)
        second = run_cli("build", str(recipe), "--profile", "raspberry-pi-5-cpu", "--out", str(out))
        assert second.returncode == 2 and "another edgex build" in second.stderr, second.stderr
    finally:
        assert first.wait(timeout=300) == 0, first.stderr.read()
    assert (out / "manifest.json").is_file()
    assert run_cli("verify", str(out)).returncode == 0


def test_models_carry_their_provenance(tiny_build):
    for prof in tiny_build["manifest"]["profiles"]:
        for v in prof["variants"]:
            model = onnx.load(str(tiny_build["out"] / v["artifact"]["path"]))
            meta = {p.key: p.value for p in model.metadata_props}
            assert meta["edgex.profile"] == prof["id"] and meta["edgex.variant"] == v["name"]
            assert meta["edgex.recipe_sha256"] == tiny_build["manifest"]["recipe"]["sha256"]
            assert meta["edgex.onnxruntime"] == tiny_build["manifest"]["tool_versions"]["onnxruntime"]
            if v["name"] == "int8":
                assert meta["edgex.calibration_sha256"] == v["produced_by"]["calibration_sha256"]
