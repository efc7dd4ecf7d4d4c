"""The fitted device-latency model: its work counts, its fit, its out-of-sample error, and how the
device estimate uses it (a loaded build host must not move a fitted device estimate)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from exporter.bench.device_fit import (
    error_summary,
    fit,
    graph_features,
    leave_one_out,
    load_fit,
    predict_ms,
)
from exporter.bench.estimate import estimate
from exporter.estimate_text import METHOD_FITTED
from exporter.profiles import get_profiles

SHAPE = {"x": [1, 3, 8, 8]}
# conv 3->8 3x3 (8x8 out), depthwise 8 3x3 + ReLU (fused), residual Add, global pool, Flatten (a view),
# MatMul 8->4 against a weight, two Reshapes (views), MatMul of two activations [4,1]x[1,4].
EXPECTED = {
    "conv_macs": 8 * 8 * 8 * 3 * 3 * 3,  # 13824
    "dw_macs": 8 * 8 * 8 * 3 * 3,  # 4608
    "fc_macs": 8 * 4,
    "attn_macs": 4 * 4 * 1,
    "dense_macs": 13824 + 32 + 16,
    "conv_act_elems": (192 + 512) + (512 + 512) + (8 + 4) + (4 + 4 + 16),
    "act_elems": (512 + 512 + 512) + (512 + 8),  # Add (two reads, one write) + GlobalAveragePool
    "weight_elems": 8 * 3 * 3 * 3 + 8 * 3 * 3 + 8 * 4,
    "layers": 6,  # conv, depthwise, add, pool, matmul, matmul (ReLU fused, Flatten/Reshape are views)
    "const": 1,
}


def _tiny(batch: int | str = 1) -> onnx.ModelProto:
    rng = np.random.default_rng(0)

    def init(name, shape):
        return numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)

    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["c1", "w2"], ["c2"], pads=[1, 1, 1, 1], group=8),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("Add", ["c1", "r2"], ["a"]),
        helper.make_node("GlobalAveragePool", ["a"], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("MatMul", ["f", "w3"], ["m"]),
        helper.make_node("Reshape", ["m", "col_shape"], ["col"]),
        helper.make_node("Reshape", ["m", "row_shape"], ["row"]),
        helper.make_node("MatMul", ["col", "row"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [
            init("w1", (8, 3, 3, 3)),
            init("w2", (8, 1, 3, 3)),
            init("w3", (8, 4)),
            numpy_helper.from_array(np.array([-1, 4, 1], dtype=np.int64), "col_shape"),
            numpy_helper.from_array(np.array([-1, 1, 4], dtype=np.int64), "row_shape"),
        ],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.fixture(scope="module")
def qdq(tmp_path_factory) -> onnx.ModelProto:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    folder = tmp_path_factory.mktemp("qdq")
    onnx.save(_tiny(), folder / "f.onnx")

    class Reader(CalibrationDataReader):
        def __init__(self):
            rng = np.random.default_rng(1)
            self.data = iter([{"x": rng.standard_normal(SHAPE["x"]).astype(np.float32)} for _ in range(4)])

        def get_next(self):
            return next(self.data, None)

    quantize_static(str(folder / "f.onnx"), str(folder / "q.onnx"), Reader(), quant_format=QuantFormat.QDQ)
    model = onnx.load(str(folder / "q.onnx"))
    assert any(n.op_type == "DequantizeLinear" for n in model.graph.node)
    return model


def test_features_of_a_float_graph_are_the_hand_counted_work():
    assert graph_features(_tiny(), SHAPE) == EXPECTED


def test_a_qdq_graph_has_the_same_features_as_its_float_source(qdq):
    assert graph_features(qdq, SHAPE) == EXPECTED


def test_a_dynamic_batch_is_fixed_from_the_shapes_never_taken_as_1():
    with pytest.raises(ValueError, match="dynamic"):
        graph_features(_tiny("N"), None)
    four = graph_features(_tiny("N"), {"x": [4, 3, 8, 8]})
    same = {"const", "layers", "weight_elems"}  # per inference, not per sample
    assert four == {k: v if k in same else 4 * v for k, v in EXPECTED.items()}


def test_fit_recovers_known_constants():
    rng = np.random.default_rng(0)
    truth = {"a": 2e-12, "b": 5e-9, "const": 1e-4}
    rows = []
    for _ in range(12):
        f = {"a": float(rng.uniform(1e8, 1e10)), "b": float(rng.uniform(1e4, 1e6)), "const": 1.0}
        rows.append({"features": f, "latency_ms": 1e3 * sum(truth[k] * f[k] for k in truth)})
    got = fit(rows, ["a", "b", "const"])["seconds_per_unit"]
    assert got == pytest.approx(truth, rel=1e-6)


def test_fit_keeps_coefficients_non_negative():
    rows = [{"features": {"a": a, "const": 1.0}, "latency_ms": 10.0 - a} for a in (1.0, 2.0, 3.0, 4.0)]
    got = fit(rows, ["a", "const"])["seconds_per_unit"]
    assert got["a"] == 0.0 and got["const"] > 0


def test_leave_one_out_error_is_computed_on_models_the_fit_never_saw():
    # one feature (const): the relative-error fit of c on latencies y is c = sum(1/y) / sum(1/y^2)
    rows = [{"model": str(y), "features": {"const": 1.0}, "latency_ms": y} for y in (1.0, 2.0, 4.0)]
    loo = leave_one_out(rows, ["const"])
    assert [r["predicted_ms"] for r in loo] == pytest.approx([2.4, 1.25 / 1.0625, 1.2])
    s = error_summary(loo)
    assert s["loo_median_rel_error"] == pytest.approx(0.7)
    assert s["loo_max_ratio"] == pytest.approx(4 / 1.2)
    assert s["n_models"] == 3


def test_the_shipped_fit_for_the_snapdragon_8_gen3_npu_is_read():
    f = load_fit("snapdragon-8-gen3-qnn", "int8")
    assert f is not None and f["n_models"] >= 8 and 0 < f["loo_median_rel_error"] <= 0.30 and f["loo_max_ratio"] <= 2
    assert f["sources"] and all("ai-hub-models" in s for s in f["sources"])
    assert predict_ms(graph_features(_tiny(), SHAPE), f) > 0
    assert load_fit("snapdragon-8-gen3-qnn", "fp32") is None and load_fit("raspberry-pi-5-cpu", "int8") is None


def test_a_fitted_estimate_reports_its_band_and_ignores_the_host(tmp_path):
    path = tmp_path / "tiny.onnx"
    onnx.save(_tiny(), path)
    phone = get_profiles(["snapdragon-8-gen3-qnn"])[0]
    fast, slow = (
        estimate(path, "int8", host_ms, 1, phone.estimates, None, shapes=SHAPE, profile_id=phone.id)
        for host_ms in (0.1, 1.0)
    )
    assert fast["method"] == METHOD_FITTED
    assert fast["device_latency_ms"] == slow["device_latency_ms"] > 0  # a 10x slower host changes nothing
    band = fast["error_band"]
    assert band["n_models"] >= 8 and band["fit_file"].endswith("snapdragon-8-gen3-qnn.yaml") and band["in_domain"]
    low, high = fast["latency_interval_ms"]
    assert low < fast["device_latency_ms"] < high
    assert fast["energy_mj"] > fast["dynamic_energy_mj"]  # static power x the fitted latency


def test_a_profile_without_a_fit_keeps_the_unvalidated_roofline(tmp_path):
    path = tmp_path / "tiny.onnx"
    onnx.save(_tiny(), path)
    pi = get_profiles(["raspberry-pi-5-cpu"])[0]
    out = estimate(path, "fp32", 0.5, 1, pi.estimates, None, shapes=SHAPE, profile_id=pi.id)
    assert out["error_band"] is None and "unvalidated" in out["method"] and "latency_interval_ms" not in out
    assert 0 < out["efficiency"] <= 1
