"""Packages per target: .ort for mobile runtimes, static-shape QDQ for NPUs, runtime.json, reference check,
and the operator-coverage preflight."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import yaml
from conftest import FAST_BENCH, ROOT, run_cli, write_tiny_project
from onnx import TensorProto, helper

ONE_PER_TARGET = {
    "raspberry-pi-5-cpu": "cpu",
    "raspberry-pi-5-xnnpack": "xnnpack",
    "snapdragon-7s-gen2-nnapi": "nnapi",
    "apple-a17-pro-coreml": "coreml",
    "sa8295p-qnn": "qnn",
    "jetson-orin-nano-tensorrt": "tensorrt",
}
STATIC = {"nnapi", "coreml", "qnn"}
ORT_FORMAT = {"nnapi", "coreml", "xnnpack"}


@pytest.fixture(scope="session")
def packages(tmp_path_factory):
    folder = tmp_path_factory.mktemp("packages")
    recipe = write_tiny_project(folder, profiles=list(ONE_PER_TARGET), bench=dict(FAST_BENCH, min_runs=10))
    proc = run_cli("-q", "build", str(recipe), "--json")
    assert proc.returncode in (0, 1), proc.stderr[-3000:]
    manifest = json.loads(proc.stdout)
    return {
        "out": folder / "out",
        "manifest": manifest,
        "by_id": {p["id"]: p for p in manifest["profiles"]},
        "folder": folder,
    }


def test_every_target_has_a_registered_profile_here():
    """Coverage: a new target without a packaging test fails here."""
    targets = {p.stem for p in (ROOT / "targets").glob("*.yaml")}
    assert targets == set(ONE_PER_TARGET.values())


@pytest.mark.parametrize("profile_id", sorted(ONE_PER_TARGET))
def test_package_loads_matches_and_is_described(packages, profile_id):
    target = ONE_PER_TARGET[profile_id]
    prof = packages["by_id"][profile_id]
    folder = packages["out"] / profile_id
    runtime = json.loads((folder / "runtime.json").read_text())
    assert runtime["execution_provider"] == prof["execution_provider"] and runtime["target"] == target
    assert runtime["session_options"]["intra_op_num_threads"] >= 1
    assert [i["name"] for i in runtime["inputs"]] == ["image"]
    model = folder / runtime["model"]
    assert model.suffix == (".ort" if target in ORT_FORMAT else ".onnx")
    assert prof["package"]["model"] == f"{profile_id}/{runtime['model']}"
    session = ort.InferenceSession(str(model))  # loads in onnxruntime here
    shape = session.get_inputs()[0].shape
    if target in STATIC:
        assert shape == [1, 3, 16, 16], shape  # no dynamic dimension for NPUs
    for v in prof["variants"]:
        pkg = v["package"]
        assert (packages["out"] / pkg["path"]).is_file()
        if target in ORT_FORMAT:
            config = (packages["out"] / pkg["required_operators"]).read_text()
            assert "ai.onnx;" in config and "/tmp" not in config
            assert pkg["parity"]["argmax_agreement"] >= 0.99 and pkg["parity"]["max_abs_diff"] < 1e-3, pkg["parity"]
            assert pkg["parity"]["load_seconds"]["package"] > 0 and pkg["reproducible"] is True
        pf = v["preflight"]
        assert pf["nodes"] > 0 and pf["nodes"] == pf["supported_nodes"] + pf["cpu_fallback_nodes"], pf
        assert sum(pf["partition_map"]) == pf["supported_nodes"] and len(pf["partition_map"]) == pf["partitions"], pf


@pytest.mark.parametrize("profile_id", sorted(ONE_PER_TARGET))
def test_reference_bundle_script_passes_here(packages, profile_id):
    script = packages["out"] / profile_id / "reference" / "check_reference.py"
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.startswith("PASS"), proc.stdout + proc.stderr


def test_reference_script_fails_on_a_broken_model(packages, tmp_path):
    """The device check has teeth: a package with corrupted weights fails it."""
    import shutil

    src = packages["out"] / "raspberry-pi-5-cpu"
    dst = tmp_path / "pkg"
    shutil.copytree(src, dst)
    runtime = json.loads((dst / "runtime.json").read_text())
    model = onnx.load(str(dst / runtime["model"]))
    # the deliverable may be FP32 or INT8 (the faster on this host): corrupt conv weights of either
    flip = {
        TensorProto.FLOAT: lambda a: a * -3.0,
        TensorProto.INT8: lambda a: (-a.astype(np.int16)).clip(-127, 127).astype(np.int8),
        TensorProto.UINT8: lambda a: (255 - a).astype(np.uint8),
    }
    corrupted = 0
    for init in model.graph.initializer:
        if init.data_type in flip and len(init.dims) == 4:
            arr = flip[init.data_type](onnx.numpy_helper.to_array(init))
            init.CopyFrom(onnx.numpy_helper.from_array(arr, init.name))
            corrupted += 1
    assert corrupted
    onnx.save(model, str(dst / runtime["model"]))
    proc = subprocess.run(
        [sys.executable, str(dst / "reference" / "check_reference.py")], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 1 and proc.stdout.startswith("FAIL")


def _erf_model(path: Path) -> Path:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])
    w = onnx.numpy_helper.from_array(np.ones((4, 3, 1, 1), np.float32), "w")
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
        helper.make_node("Erf", ["c"], ["e"], name="erf"),
        helper.make_node("Relu", ["e"], ["y"], name="relu"),
    ]
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y], [w]), opset_imports=[helper.make_opsetid("", 18)])
    onnx.save(model, str(path))
    return path


def test_preflight_names_the_operator_the_accelerator_refuses(tmp_path):
    from exporter.preflight import preflight
    from exporter.targets import get_target

    path = _erf_model(tmp_path / "erf.onnx")
    nnapi = preflight(path, get_target("nnapi"))
    assert nnapi["unsupported_ops"] == {"Erf": 1} and nnapi["cpu_fallback_nodes"] == 1
    assert nnapi["partitions"] == 2 and nnapi["partition_map"] == [1, 1]  # Conv | Erf on CPU | Relu
    assert "Erf" in nnapi["advice"]
    cpu = preflight(path, get_target("cpu"))
    assert cpu["cpu_fallback_nodes"] == 0 and cpu["partitions"] == 1


class GeluNet:
    """Source for a recipe factory: GELU (exact) exports as Erf, which NNAPI does not take."""

    SOURCE = (
        "import torch\n\n\nclass Net(torch.nn.Module):\n"
        "    def __init__(self):\n        super().__init__()\n"
        "        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)\n        self.head = torch.nn.Linear(8, 5)\n\n"
        "    def forward(self, image):\n"
        "        return self.head(torch.nn.functional.gelu(self.conv(image)).mean(dim=(2, 3)))\n\n\n"
        "def build():\n    torch.manual_seed(0)\n    return Net()\n"
    )


def test_profile_forbidding_cpu_fallback_fails_the_build(tmp_path):
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    data = yaml.safe_load((ROOT / "device_profiles" / "snapdragon-7s-gen2-nnapi.yaml").read_text())
    data["id"] = "strict-nnapi"
    data["preflight"] = {"allow_cpu_fallback": False, "max_partitions": 1}
    (profiles / "strict-nnapi.yaml").write_text(yaml.safe_dump(data))
    recipe = write_tiny_project(
        tmp_path / "proj",
        profiles=["strict-nnapi"],
        bench=dict(FAST_BENCH, min_runs=5),
        model={"source": "torch", "factory": "gelu_net.py:build"},
    )
    (tmp_path / "proj" / "gelu_net.py").write_text(GeluNet.SOURCE)
    proc = run_cli("--profiles-dir", str(profiles), "build", str(recipe), "--json")
    assert proc.returncode == 1, proc.stderr[-2000:]
    prof = json.loads(proc.stdout)["profiles"][0]
    failed = {v["budget"] for v in prof["verdicts"] if v["ok"] is False}
    assert {"cpu_fallback_nodes", "accelerator_partitions"} <= failed
    assert "Erf" in prof["variants"][0]["preflight"]["unsupported_ops"]
    report = (tmp_path / "proj" / "out" / "report.md").read_text()
    assert "Erf" in report and "stays on the CPU" in report
    assert "preflight" in proc.stderr and "Erf" in proc.stderr  # said early, while building


def test_ort_packages_are_byte_identical_across_builds(packages, tmp_path):
    proc = run_cli(
        "-q",
        "build",
        str(packages["folder"] / "recipe.yaml"),
        "--profile",
        "snapdragon-7s-gen2-nnapi",
        "--out",
        str(tmp_path / "again"),
        "--json",
    )
    assert proc.returncode in (0, 1), proc.stderr[-2000:]
    again = {f["path"]: f["sha256"] for f in json.loads(proc.stdout)["files"]}
    first = {f["path"]: f["sha256"] for f in packages["manifest"]["files"]}
    shipped = [p for p in again if p.startswith("snapdragon-7s-gen2-nnapi/") and not p.endswith((".md", ".png"))]
    assert any(p.endswith(".ort") for p in shipped)
    assert {p: again[p] for p in shipped} == {p: first[p] for p in shipped}


@pytest.mark.slow
def test_digits_packages_for_every_runtime(digits_build):
    """The issue's floor on the real example: NNAPI, CoreML, QNN, TensorRT and CPU packages match their source."""
    out = digits_build["out"]
    targets = {p["target"] for p in digits_build["manifest"]["profiles"]}
    assert {"nnapi", "coreml", "qnn", "tensorrt", "cpu"} <= targets
    for prof in digits_build["manifest"]["profiles"]:
        runtime = json.loads((out / prof["id"] / "runtime.json").read_text())
        session = ort.InferenceSession(str(out / prof["id"] / runtime["model"]))
        assert session.get_inputs()[0].name == "image"
        if prof["target"] in STATIC:
            assert session.get_inputs()[0].shape == [1, 1, 32, 32]
        for v in prof["variants"]:
            parity = v["package"].get("parity")
            if parity:
                assert parity["argmax_agreement"] >= 0.99, (prof["id"], v["name"], parity)
                assert (out / v["package"]["required_operators"]).is_file()
        script = out / prof["id"] / "reference" / "check_reference.py"
        assert subprocess.run([sys.executable, str(script)], capture_output=True).returncode == 0


def test_tensorrt_dynamic_shapes_are_bounded(packages):
    runtime = json.loads((packages["out"] / "jetson-orin-nano-tensorrt" / "runtime.json").read_text())
    options = runtime["provider_options"]
    assert options["trt_profile_min_shapes"] == "image:1x3x16x16"
    assert options["trt_profile_opt_shapes"] == options["trt_profile_max_shapes"] == "image:1x3x16x16"
    assert options["trt_int8_enable"] is True
