"""QNN profiles built with the real runtime in the loop (onnxruntime-qnn's HTP backend, emulated on
x86), and without it: the labelled fallback says what it could not check.

The digits demo is the issue's floor: its QNN packages ship a context binary that loads here with
CPU fallback disabled and matches the QDQ model, and its top-1 on the HTP is within 1 point of FP32.
"""

from __future__ import annotations

import json

import onnx
import pytest
from conftest import run_cli, write_tiny_project

from exporter.profiles import get_profiles

QNN = ("snapdragon-8-gen3-qnn", "sa8295p-qnn")


@pytest.mark.slow
@pytest.mark.parametrize("profile_id", QNN)
def test_digits_runs_on_the_htp_and_ships_a_context_binary(digits_build, profile_id):
    m = digits_build["manifest"]
    prof = next(p for p in m["profiles"] if p["id"] == profile_id)
    soc = get_profiles([profile_id])[0].soc
    int8 = next(v for v in prof["variants"] if v["name"] == "int8")
    npu = int8["npu"]
    assert npu["available"] is True and npu["samples"] >= 32
    assert npu["drop"] <= 0.01, npu  # top-1 on the emulated HTP within 1 point of FP32 on the same samples
    assert f"soc_model {soc['soc_model'].value}" in npu["accuracy_basis"]
    gate = next(v for v in int8["verdicts"] if v["budget"] == "accuracy_drop_on_npu")
    assert gate["ok"] is True and gate["basis"] == npu["accuracy_basis"]
    assert int8["preflight"]["checker"].startswith("onnxruntime-qnn")  # the provider's own node assignment
    assert int8["preflight"]["cpu_fallback_nodes"] == 0

    binary = prof["context_binary"]
    assert binary["compiled"] is True and binary["loaded_back"]["ok"] is True
    assert binary["soc"]["soc_model"] == soc["soc_model"].value
    assert binary["versions"]["qairt"] and binary["versions"]["onnxruntime_qnn"]
    ctx_file = digits_build["out"] / binary["file"]
    ctx_model = onnx.load(str(ctx_file))
    assert [n.op_type for n in ctx_model.graph.node] == ["EPContext"]  # the whole graph is one NPU binary
    runtime = json.loads((digits_build["out"] / profile_id / "runtime.json").read_text())
    assert runtime["context_binary"]["model"] == ctx_file.name
    assert runtime["context_binary"]["soc_model"] == soc["soc_model"].value
    assert runtime["context_binary"]["qnn_sdk"] == binary["versions"]["qairt"]

    latency = prof["verdicts"][0]
    assert latency["budget"].startswith("latency") and latency["ok"] is True
    assert latency["basis"].startswith("device estimate") and "published models" in latency["basis"]


def test_without_the_qnn_extra_the_build_says_what_it_did_not_check(tmp_path):
    """onnxruntime-qnn shadowed by a module that fails to import, as on a machine without edgex[qnn]."""
    blocker = tmp_path / "blocked"
    blocker.mkdir()
    (blocker / "onnxruntime_qnn.py").write_text("raise ImportError('onnxruntime-qnn is not installed here')\n")
    recipe = write_tiny_project(tmp_path / "proj", profiles=["sa8295p-qnn"], quantize={"calibration_samples": 16})
    proc = run_cli("build", str(recipe), "--json", env={"PYTHONPATH": str(blocker)})
    assert proc.returncode in (0, 1), proc.stderr[-2000:]
    prof = json.loads(proc.stdout)["profiles"][0]
    int8 = next(v for v in prof["variants"] if v["name"] == "int8")
    assert int8["npu"]["available"] is False and "edgex[qnn]" in int8["npu"]["reason"]
    assert int8["npu"]["accuracy_basis"] == "Q/DQ simulated on the CPU provider"
    assert not any(v["budget"] == "accuracy_drop_on_npu" for v in int8["verdicts"])
    assert "operator table" in int8["preflight"]["checker"] and "edgex[qnn]" in int8["preflight"]["checker"]
    assert prof["context_binary"]["compiled"] is False and "edgex[qnn]" in prof["context_binary"]["reason"]
    out = tmp_path / "proj" / "out" / "sa8295p-qnn"
    assert not list(out.glob("*.ctx.onnx"))
    assert "context_binary" not in json.loads((out / "runtime.json").read_text())


def test_a16w8_is_the_last_step_on_an_integer_only_npu_and_kept_only_when_it_helps(tmp_path):
    from exporter.quant.search import ALL_ACTIVATIONS, _all_activations_16bit

    asked: list[dict] = []

    def requantize(method: str, overrides: dict[str, str]):
        asked.append(overrides)
        return tmp_path / "a16w8.onnx"

    best = (tmp_path / "keep16.onnx", 0.04, 16)  # the best per-tensor step: 16 tensors at 16-bit, still over
    steps: list[dict] = []
    met = _all_activations_16bit(requantize, lambda p: 0.0007, "minmax", 0.01, steps, "t", best)
    assert asked == [{ALL_ACTIVATIONS: "uint16"}] and met.met and met.path.name == "a16w8.onnx"
    assert met.kept[0]["tensor"] == ALL_ACTIVATIONS and steps[-1]["step"].startswith("every activation 16-bit")
    worse = _all_activations_16bit(requantize, lambda p: 0.2, "minmax", 0.01, [], "t", best)
    assert not worse.met and worse.path == best[0] and worse.drop == 0.04  # A16W8 did worse: the best step stays
