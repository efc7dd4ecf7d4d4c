"""Unit tests of the small pieces: metrics, verdicts, latency statistics, MAC counting, parity gate."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from exporter.bench.latency import summarize
from exporter.bench.verdicts import judge, overall
from exporter.errors import GateFailure
from exporter.export import check_parity
from exporter.graph_stats import count_macs
from exporter.metrics import accuracy_drop, cosine, mse, top1
from exporter.profiles import Budgets
from exporter.quant.qdq_graph import float_compute_nodes


def test_metrics():
    ref = np.array([[1.0, 0.0], [0.0, 1.0]])
    assert top1(ref, np.array([0, 1]), ref) == 1.0
    assert top1(ref, np.array([1, 1]), ref) == 0.5
    assert top1(ref[::-1], None, ref) == 0.0  # no labels: agreement with the reference's argmax
    assert cosine(ref, None, ref) == pytest.approx(1.0)
    assert cosine(-ref, None, ref) == pytest.approx(-1.0)
    assert mse(ref + 1, None, ref) == pytest.approx(1.0)
    assert accuracy_drop(0.99, 0.98, True) == pytest.approx(0.01)
    assert accuracy_drop(0.0, 0.5, False) == pytest.approx(0.5)


def test_verdicts_null_is_not_a_pass():
    budgets = Budgets.model_validate(
        {"latency": {"percentile": 90, "max_ms": 10}, "model_size_mb": 1, "energy_mj": 5, "max_accuracy_drop": 0.01}
    )
    vs = judge(budgets, latency_ms=12.0, peak_memory_mb=None, size_mb=0.5, accuracy_drop=0.0, max_accuracy_drop=0.01)
    by = {v.budget: v for v in vs}
    assert by["latency_p90_ms"].ok is False and by["latency_p90_ms"].margin == pytest.approx(-2.0)
    assert by["model_size_mb"].ok is True
    assert by["energy_mj"].ok is None and by["energy_mj"].value is None  # no estimate given: not evaluated
    assert "peak_memory_mb" not in by  # no memory budget in this profile
    assert overall(vs) is False
    assert overall([v for v in vs if v.budget != "latency_p90_ms"]) is True


def test_latency_summary():
    samples = np.arange(1, 1001, dtype=np.float64)
    s = summarize(samples, 1.0)
    assert s.runs == 1000 and s.p50 == pytest.approx(500.5) and s.p90 == pytest.approx(900.1)
    assert s.percentile(99.9) == s.p999 and s.min == 1.0


def _conv_model(path, static=True):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    w = helper.make_tensor("w", TensorProto.FLOAT, [16, 3, 3, 3], np.zeros(16 * 27, np.float32))
    fw = helper.make_tensor("fw", TensorProto.FLOAT, [16, 4], np.zeros(64, np.float32))
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("GlobalAveragePool", ["c"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("MatMul", ["f", "fw"], ["y"]),
    ]
    graph = helper.make_graph(nodes, "g", [x], [y], [w, fw])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    onnx.save(model, path)
    return model


def test_mac_count_is_exact(tmp_path):
    model = _conv_model(tmp_path / "m.onnx")
    # Conv: 16*8*8 outputs x 3*3*3 MACs each; MatMul: 1x16 @ 16x4
    assert count_macs(model) == 16 * 8 * 8 * 27 + 16 * 4


def test_float_nodes_are_reported():
    nodes = [
        helper.make_node("DequantizeLinear", ["a_q", "s", "z"], ["a"]),
        helper.make_node("Conv", ["a", "w"], ["b"]),
        helper.make_node("Softmax", ["b"], ["c"]),
        helper.make_node("Reshape", ["c", "shape"], ["d"]),
    ]
    model = helper.make_model(helper.make_graph(nodes, "g", [], []))
    quantized, floating = float_compute_nodes(model)
    assert quantized == {"Conv": 1} and floating == {"Softmax": 1}


def test_parity_gate_fails_on_a_wrong_reference(tmp_path):
    torch.manual_seed(0)
    module = torch.nn.Linear(4, 3).eval()
    path = tmp_path / "lin.onnx"
    torch.onnx.export(module, (torch.zeros(1, 4),), str(path), input_names=["x"], dynamo=True)
    x = np.random.default_rng(0).standard_normal((8, 4)).astype(np.float32)
    good = [module(torch.from_numpy(x)).detach().numpy()]
    worst, n = check_parity(path, {"x": x}, good)
    assert n == 8 and worst < 1e-5
    with pytest.raises(GateFailure, match="parity"):
        check_parity(path, {"x": x}, [good[0] + 1e-2])


def test_shape_inference_that_gives_up_writes_nothing_into_the_working_folder(tmp_path, monkeypatch):
    # onnxruntime's symbolic inference saves "sym_shape_infer_temp.onnx" into the working folder
    # when it cannot finish (here: an op it does not know after a data-dependent shape).
    from exporter.graph_stats import _shapes

    nodes = [helper.make_node("NonZero", ["x"], ["y"]), helper.make_node("Foo", ["y"], ["z"], domain="custom")]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, None)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("custom", 1)])
    monkeypatch.chdir(tmp_path)
    assert _shapes(model, {"x": [2, 4]})["x"] == [2, 4]
    assert list(tmp_path.iterdir()) == []


def test_deliverable_ties_go_to_the_smaller_file_and_clear_wins_to_the_faster():
    from exporter.pipeline import choose_deliverable as _choose_deliverable
    from exporter.targets import get_target

    def variant(name, p50, size, precision="int8", ok=True):
        return {
            "name": name,
            "ok": ok,
            "latency_ms": {"p50": p50},
            "artifact": {"bytes": size, "precision": precision},
            "verdicts": [],
        }

    cpu = get_target("cpu")
    alike = [variant("int8", 1.00, 900), variant("int8-dynamic", 0.95, 1000)]
    assert _choose_deliverable(alike, cpu)["name"] == "int8"  # 5% apart: a tie, the smaller file ships
    assert _choose_deliverable(alike[::-1], cpu)["name"] == "int8"  # whatever order they were timed in
    apart = [variant("int8", 1.00, 900), variant("int8-dynamic", 0.80, 1000)]
    assert _choose_deliverable(apart, cpu)["name"] == "int8-dynamic"  # 20% faster wins outright
    failing = [variant("int8", 1.00, 900, ok=False), variant("int8-dynamic", 1.05, 1000)]
    assert _choose_deliverable(failing, cpu)["name"] == "int8-dynamic"  # a miss never ships over a pass
    qnn = get_target("qnn")
    fp32 = [variant("baseline", 0.5, 800, precision="fp32"), variant("int8", 1.0, 900)]
    assert _choose_deliverable(fp32, qnn)["name"] == "int8"  # an INT8-only runtime never gets FP32


def test_mlperf_settings_raise_the_minimums_and_lift_the_cap_above_them():
    from exporter.recipe import BenchSection

    quick = BenchSection(min_runs=10, min_seconds=0.1, max_seconds=2.0)
    assert quick.effective() == quick
    full = BenchSection(min_runs=10, min_seconds=0.1, max_seconds=2.0, mlperf=True).effective()
    assert (full.min_runs, full.min_seconds) == (1024, 60.0)
    assert full.max_seconds >= full.min_seconds  # a cap below the minimum would cut the run short
    more = BenchSection(min_runs=5000, min_seconds=90.0, max_seconds=200.0, mlperf=True).effective()
    assert (more.min_runs, more.min_seconds) == (5000, 90.0) and more.max_seconds >= 200.0  # never lowered


def test_pinning_applies_only_where_every_core_exists_and_is_undone_after():
    import os

    from exporter.bench.affinity import pinned, plan

    before = os.sched_getaffinity(0)
    core = min(before)
    record = plan([core])
    with pinned(record):
        assert os.sched_getaffinity(0) == {core} and record["applied"] == [core]
    assert os.sched_getaffinity(0) == before
    record = plan([core, 4095])  # never a partial pinning under the profile's name
    with pinned(record):
        assert os.sched_getaffinity(0) == before and record["applied"] is None and "4095" in record["reason"]
    assert plan(None)["requested"] is None


@pytest.mark.parametrize(
    ("cores", "words"),
    [([0], "1 core(s) for 4 threads"), ([0, 0, 1, 2], "distinct"), ([], "distinct"), ([-1, 0, 1, 2], "distinct")],
)
def test_profile_affinity_must_fit_its_threads(tmp_path, cores, words):
    import yaml

    from exporter.errors import UsageError
    from exporter.profiles import load_profile_file

    root = __import__("pathlib").Path(__file__).resolve().parents[1]
    data = yaml.safe_load((root / "device_profiles" / "raspberry-pi-5-cpu.yaml").read_text())
    data["cpu_affinity"] = cores
    path = tmp_path / "raspberry-pi-5-cpu.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(UsageError) as err:
        load_profile_file(path)
    assert words in str(err.value) and "cpu_affinity" in str(err.value)
