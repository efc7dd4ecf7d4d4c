"""Quantization on small real models: every calibration method, every target preset, the accuracy
search (float and 16-bit fallbacks), the speed guard's record, INT4, FP16, dynamic INT8, the
diagnosis, and `edgex quantize` / `edgex diagnose` through the real CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from conftest import run_cli
from torch import nn

from exporter.data import make_dataset
from exporter.errors import UsageError
from exporter.metrics import cosine
from exporter.quant.calibration import bounded_samples
from exporter.quant.diagnose import diagnose, precision_mismatches
from exporter.quant.dynamic import quantize_dynamic_int8
from exporter.quant.fp16 import convert_fp16
from exporter.quant.qdq_graph import activation_pairs, keep_float
from exporter.quant.weight_only import quantize_int4
from exporter.quantize import quantize_int8
from exporter.recipe import Int4Settings, QuantizeSection, SearchSettings
from exporter.runtime import make_session, run_all
from exporter.targets import all_targets, get_target


class Outlier(nn.Module):
    """Two linear layers with a few huge channels between them, like a transformer's FFN output:
    one per-tensor INT8 scale cannot hold both the outliers and the rest."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b = nn.Linear(32, 64), nn.Linear(64, 16)
        gain = torch.ones(64)
        gain[:2] = 400.0
        self.register_buffer("gain", gain)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.a(x) * self.gain)


class Embedder(nn.Module):
    """Token embedding + two projections: the shapes INT4 cares about (Gather tables, MatMuls)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(512, 64)
        self.p1, self.p2 = nn.Linear(64, 128, bias=False), nn.Linear(128, 64, bias=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.p2(torch.relu(self.p1(self.emb(ids)))).mean(1)


def _export(module: nn.Module, example: torch.Tensor, name: str, path: Path) -> Path:
    torch.onnx.export(
        module.eval(),
        example,
        str(path),
        input_names=[name],
        output_names=["out"],
        opset_version=18,
        dynamo=False,
        dynamic_axes={name: {0: "batch"}},
    )
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from tiny_models import build_tiny

    folder = tmp_path_factory.mktemp("quant")
    rng = np.random.default_rng(0)
    tiny = _export(build_tiny(), torch.randn(1, 3, 16, 16), "image", folder / "tiny.onnx")
    outlier = _export(Outlier(), torch.randn(1, 32), "x", folder / "outlier.onnx")
    embed = _export(Embedder(), torch.zeros(1, 8, dtype=torch.long), "ids", folder / "embed.onnx")
    return {
        "folder": folder,
        "tiny": tiny,
        "tiny_data": make_dataset({"image": rng.standard_normal((24, 3, 16, 16)).astype(np.float32)}, None),
        "outlier": outlier,
        "outlier_data": make_dataset({"x": rng.standard_normal((48, 32)).astype(np.float32)}, None),
        "embed": embed,
        "embed_data": make_dataset({"ids": rng.integers(0, 512, (16, 8)).astype(np.int64)}, None),
    }


def _fidelity(fp32: Path, other: Path, data) -> float:
    ref = run_all(make_session(fp32), data.inputs)[0]
    return cosine(run_all(make_session(other, mode="simulated"), data.inputs)[0], None, ref)


def _dropper(fp32: Path, data):
    ref = run_all(make_session(fp32), data.inputs)[0]
    return lambda path: 1.0 - cosine(run_all(make_session(path), data.inputs)[0], None, ref)


@pytest.mark.parametrize("method", ["minmax", "entropy", "percentile", "distribution"])
def test_each_calibration_method_quantizes_and_keeps_fidelity(models, method, tmp_path):
    out = tmp_path / "q.onnx"
    res = quantize_int8(
        models["tiny"],
        out,
        models["tiny_data"],
        QuantizeSection(calibration_method=method, calibration_samples=16),
        get_target("cpu").quantization,
        1,
        0,
    )
    assert res.method == method and res.calibration_samples == 16
    assert res.quantized_nodes.get("Conv", 0) >= 5
    assert _fidelity(models["tiny"], out, models["tiny_data"]) > 0.95


def test_histogram_calibration_is_memory_bounded(models, tmp_path):
    data = models["tiny_data"]
    small, note = bounded_samples(models["tiny"], data, "entropy", memory_mb=1, batch=1, seed=0)
    from exporter.quant.calibration import activation_bytes

    per = activation_bytes(models["tiny"], {"image": data.inputs["image"][:1]})
    assert per > 0
    assert len(small) == min(len(data), 2**20 // per)
    if len(small) < len(data):
        assert note and "calibration_memory_mb" in note
    with pytest.raises(UsageError, match="calibration_memory_mb"):
        bounded_samples(models["tiny"], data, "percentile", memory_mb=0, batch=1, seed=0)
    same, none = bounded_samples(models["tiny"], data, "minmax", memory_mb=0, batch=1, seed=0)
    assert same is data and none is None  # MinMax streams: no bound needed


@pytest.mark.parametrize("target_id", sorted(all_targets()))
def test_each_target_preset_produces_its_declared_types(models, target_id, tmp_path):
    preset = get_target(target_id).quantization
    out = tmp_path / "q.onnx"
    quantize_int8(models["tiny"], out, models["tiny_data"], QuantizeSection(calibration_samples=8), preset, 1, 0)
    model = onnx.load(str(out))
    inits = {i.name: i for i in model.graph.initializer}
    act_types = {
        onnx.helper.tensor_dtype_to_np_dtype(inits[n.input[2]].data_type).name
        for n in model.graph.node
        if n.op_type == "QuantizeLinear" and n.input[0] not in inits and len(n.input) > 2
    }
    assert act_types == {preset.activation_type}
    weight_dq = [n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits]
    weight_types = {onnx.helper.tensor_dtype_to_np_dtype(inits[n.input[0]].data_type).name for n in weight_dq}
    assert preset.weight_type in weight_types
    per_axis = any(onnx.numpy_helper.to_array(inits[n.input[1]]).size > 1 for n in weight_dq)
    assert per_axis == preset.per_channel
    make_session(out, mode="simulated")  # loads and runs in onnxruntime


def test_target_refuses_precisions_it_cannot_run():
    with pytest.raises(UsageError, match="cannot run fp16"):
        get_target("qnn").refuse_precision("fp16", "recipe.yaml", "sa8295p-qnn")
    with pytest.raises(UsageError, match="cannot run int4"):
        get_target("nnapi").refuse_precision("int4", "recipe.yaml")


def test_keep_float_removes_only_the_named_pairs(models, tmp_path):
    out = tmp_path / "q.onnx"
    quantize_int8(
        models["outlier"], out, models["outlier_data"], QuantizeSection(), get_target("cpu").quantization, 1, 0
    )
    model = onnx.load(str(out))
    pairs = activation_pairs(model)
    assert len(pairs) >= 2
    victim = pairs[-1].tensor
    kept = keep_float(model, {victim})
    assert {p.tensor for p in activation_pairs(kept)} == {p.tensor for p in pairs} - {victim}
    onnx.checker.check_model(kept)


@pytest.mark.parametrize("target_id, kept_as", [("cpu", "float"), ("qnn", "uint16")])
def test_search_keeps_the_outlier_tensor_out_of_int8(models, tmp_path, target_id, kept_as):
    fp32, data = models["outlier"], models["outlier_data"]
    evaluate = _dropper(fp32, data)
    settings = QuantizeSection(search=SearchSettings(calibration_methods=["minmax"]))
    preset = get_target(target_id).quantization
    plain = quantize_int8(fp32, tmp_path / "plain.onnx", data, settings, preset, 1, 0)
    plain_drop = evaluate(plain.path)
    budget = 0.0005
    assert plain_drop > budget, "the outlier model must defeat plain INT8, or the test proves nothing"
    res = quantize_int8(fp32, tmp_path / "s.onnx", data, settings, preset, 1, 0, evaluate=evaluate, budget=budget)
    search = res.search
    assert search["met"] is True and search["drop"] <= budget
    assert search["kept_out_of_int8"] and all(k["kept_as"] == kept_as for k in search["kept_out_of_int8"])
    assert search["steps"][0]["drop"] == pytest.approx(plain_drop, abs=1e-4)
    assert evaluate(res.path) == pytest.approx(search["drop"], abs=1e-5)
    if kept_as == "uint16":
        model = onnx.load(str(res.path))
        types = {i.data_type for i in model.graph.initializer}
        assert onnx.TensorProto.UINT16 in types
        assert not search["kept_out_of_int8"] or all(k["tensor"] for k in search["kept_out_of_int8"])


def test_search_says_when_the_budget_cannot_be_met(models, tmp_path):
    fp32, data = models["outlier"], models["outlier_data"]
    settings = QuantizeSection(search=SearchSettings(calibration_methods=["minmax"], max_kept=0))
    res = quantize_int8(
        fp32, tmp_path / "s.onnx", data, settings, get_target("cpu").quantization, 1, 0,
        evaluate=_dropper(fp32, data), budget=0.0,
    )  # fmt: skip
    assert res.search["met"] is False and res.search["drop"] > 0
    assert res.path.is_file()


def test_speed_guard_records_its_decision(models, tmp_path):
    fp32, data = models["tiny"], models["tiny_data"]
    res = quantize_int8(
        fp32, tmp_path / "g.onnx", data, QuantizeSection(calibration_samples=8), get_target("cpu").quantization, 1, 0,
        evaluate=_dropper(fp32, data), budget=0.05, speed_feed={"image": data.inputs["image"][:1]},
    )  # fmt: skip
    guard = res.speed_guard
    assert guard["ratio"] > 0 and guard["tolerance"] == 0.05
    assert "verdict" in guard
    for rung in guard["tried"]:
        assert rung["ratio"] > 0 and 0 <= rung["drop"] <= 2


@pytest.mark.parametrize("algorithm", ["rtn", "hqq"])
def test_int4_quantizes_matmuls_and_the_embedding_table(models, tmp_path, algorithm):
    out = tmp_path / "int4.onnx"
    res = quantize_int4(models["embed"], out, Int4Settings(algorithm=algorithm, block_size=32), "qoperator", [])
    assert res.quantized.get("MatMulNBits") == 2 and res.quantized.get("GatherBlockQuantized") == 1
    assert out.stat().st_size < 0.3 * models["embed"].stat().st_size
    assert _fidelity(models["embed"], out, models["embed_data"]) > 0.97


def test_int4_qdq_form_for_qdq_targets(models, tmp_path):
    out = tmp_path / "int4-qdq.onnx"
    res = quantize_int4(models["embed"], out, Int4Settings(), "qdq", [])
    model = onnx.load(str(out))
    int4 = [i for i in model.graph.initializer if i.data_type in (onnx.TensorProto.INT4, onnx.TensorProto.UINT4)]
    assert len(int4) == 2 and "note" in res.settings  # the Gather table stays float in QDQ, and says so
    assert _fidelity(models["embed"], out, models["embed_data"]) > 0.97
    with pytest.raises(UsageError, match="only as MatMulNBits"):
        quantize_int4(models["embed"], tmp_path / "x.onnx", Int4Settings(algorithm="hqq"), "qdq", [])


def test_fp16_keeps_io_types_and_fidelity(models, tmp_path):
    out = tmp_path / "fp16.onnx"
    info = convert_fp16(models["tiny"], out)
    model = onnx.load(str(out))
    assert info["keep_io_types"] and model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in model.graph.initializer)
    assert _fidelity(models["tiny"], out, models["tiny_data"]) > 0.999


def test_dynamic_int8_uses_integer_matmuls(models, tmp_path):
    out = tmp_path / "dyn.onnx"
    quantize_dynamic_int8(models["embed"], out)
    ops = {n.op_type for n in onnx.load(str(out)).graph.node}
    assert ops & {"DynamicQuantizeLinear", "MatMulInteger"}
    assert _fidelity(models["embed"], out, models["embed_data"]) > 0.99


def test_diagnosis_names_unfused_pairs_and_float_ops(models, tmp_path):
    out = tmp_path / "all-ops.onnx"
    quantize_int8(
        models["tiny"], out, models["tiny_data"], QuantizeSection(calibration_samples=8),
        get_target("cpu").quantization, 1, 0,
    )  # fmt: skip
    report = diagnose(out, {"image": models["tiny_data"].inputs["image"][:1]}, models["tiny"])
    assert report["time_ms_by_op_type"] and report["fp32_time_ms_by_op_type"]
    assert report["kernel_time_ratio_vs_fp32"] > 0
    after = report["after_onnxruntime_optimisation"]
    assert after["dequantize_nodes"] > 0
    # TinyNet's squeeze-excite Sigmoid/Mul and ReduceMean have no integer kernel here: named as float ops
    assert after["float_ops_between_dq_q"], after
    assert any("float between DequantizeLinear" in f for f in report["findings"])


def test_precision_mismatch_is_found():
    from onnx import TensorProto, helper

    def q(name, inp, out, scale, zp_type):
        return [
            helper.make_tensor(f"{name}_s", TensorProto.FLOAT, [], [scale]),
            helper.make_tensor(f"{name}_z", zp_type, [], [0]),
        ], helper.make_node(f"{name}", [inp, f"{name}_s", f"{name}_z"], [out])

    i1, n1 = q("QuantizeLinear", "x", "xq", 0.1, TensorProto.UINT8)
    i2, n2 = q("DequantizeLinear", "xq", "xd", 0.1, TensorProto.UINT8)
    n1.name, n2.name = "q1", "dq1"
    i2[0].name, i2[1].name = "d_s", "d_z"
    n2.input[1], n2.input[2] = "d_s", "d_z"
    q2 = helper.make_node("QuantizeLinear", ["xd", "q2_s", "q2_z"], ["y"], name="q2")
    inits = (
        i1
        + i2
        + [
            helper.make_tensor("q2_s", TensorProto.FLOAT, [], [0.5]),
            helper.make_tensor("q2_z", TensorProto.INT8, [], [0]),
        ]
    )
    graph = helper.make_graph(
        [n1, n2, q2],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
        [helper.make_tensor_value_info("y", TensorProto.INT8, [4])],
        inits,
    )
    found = precision_mismatches(helper.make_model(graph))
    assert found and found[0]["tensor"] == "xd" and "uint8" in found[0]["from"] and "int8" in found[0]["to"]


def test_cli_quantize_and_diagnose(models, tmp_path):
    calib = tmp_path / "calib.npz"
    np.savez(calib, image=models["tiny_data"].inputs["image"][:16])
    out = tmp_path / "deep" / "tiny-int8.onnx"
    proc = run_cli(
        "quantize", str(models["tiny"]), "--profile", "raspberry-pi-5-cpu", "--calibration", str(calib),
        "--out", str(out), "--max-drop", "0.05", "--shape", "image=1x3x16x16", "--json",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert out.is_file() and result["cosine"] >= 0.95 and result["evaluated_on"].endswith("(in-sample)")
    assert result["speed_guard"]["verdict"] and result["search"]["met"] is True
    assert not list(out.parent.glob(".edgex-quantize-*"))  # staged, then renamed into place
    shape = ["--shape", "image=1x3x16x16"]
    proc = run_cli(
        "diagnose", str(out), "--profile", "raspberry-pi-5-cpu", "--fp32", str(models["tiny"]), *shape, "--json"
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["findings"]
    text = run_cli("diagnose", str(out), "--profile", "raspberry-pi-5-cpu", *shape)
    assert text.returncode == 0 and "ms" in text.stdout


def test_cli_quantize_bad_inputs_exit_2_with_one_line(models, tmp_path):
    bad = tmp_path / "bad.npz"
    np.savez(bad, pixels=np.zeros((4, 3, 16, 16), np.float32))
    args = ["quantize", str(models["tiny"]), "--profile", "raspberry-pi-5-cpu", "--out", str(tmp_path / "o.onnx")]
    args += ["--shape", "image=1x3x16x16"]
    proc = run_cli(*args, "--calibration", str(bad))
    assert proc.returncode == 2 and "--calibration" in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    nan = tmp_path / "nan.npz"
    arr = np.zeros((4, 3, 16, 16), np.float32)
    arr[0, 0, 0, 0] = np.nan
    np.savez(nan, image=arr)
    proc = run_cli(*args, "--calibration", str(nan))
    assert proc.returncode == 2 and "NaN" in proc.stderr
    good = tmp_path / "good.npz"
    np.savez(good, image=np.zeros((4, 3, 16, 16), np.float32))
    proc = run_cli(
        "quantize", str(models["tiny"]), "--profile", "sa8295p-qnn", "--calibration", str(good),
        "--out", str(tmp_path / "o.onnx"), "--precision", "fp16", "--shape", "image=1x3x16x16",
    )  # fmt: skip
    assert proc.returncode == 2 and "cannot run fp16" in proc.stderr
    assert not (tmp_path / "o.onnx").exists()


def test_build_offers_fp16_and_int8_variants_and_refuses_what_a_target_cannot_run(tmp_path):
    from conftest import write_tiny_project

    recipe = write_tiny_project(
        tmp_path / "p",
        profiles=["jetson-orin-nano-tensorrt"],
        quantize={"precision": ["int8", "fp16"], "calibration_samples": 8},
    )
    proc = run_cli("build", str(recipe), "--json")
    assert proc.returncode in (0, 1), proc.stderr[-2000:]
    prof = json.loads(proc.stdout)["profiles"][0]
    by_name = {v["name"]: v for v in prof["variants"]}
    assert list(by_name) == ["baseline", "int8", "fp16"]
    assert by_name["fp16"]["artifact"]["precision"] == "fp16" and by_name["fp16"]["metric"]["drop"] < 0.001
    assert by_name["int8"]["produced_by"]["search"]["steps"]
    refused = write_tiny_project(tmp_path / "q", profiles=["snapdragon-7s-gen2-nnapi"], quantize={"precision": "int4"})
    proc = run_cli("validate", str(refused))
    assert proc.returncode == 2 and "cannot run int4" in proc.stderr and "quantize.precision" in proc.stderr
