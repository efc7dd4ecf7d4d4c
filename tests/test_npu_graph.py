"""Graph rewrites for integer-only NPUs: a float-min attention mask is clamped, Erf-GELU becomes
Gelu, the FP32 answers stay the same, and the quantized result runs whole on the QNN HTP."""

from __future__ import annotations

import platform
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization import CalibrationDataReader, QuantType, quantize
from onnxruntime.quantization.execution_providers.qnn import get_qnn_qdq_config

from exporter import qnn_htp
from exporter.errors import InternalError
from exporter.quant import npu_graph
from exporter.quant.npu_graph import prepare_for_integer_npu

FLOAT_MIN = float(np.finfo(np.float32).min)
on_htp_host = pytest.mark.skipif(
    not (sys.platform.startswith("linux") and platform.machine() == "x86_64"),
    reason="the QNN HTP emulator ships for linux x86_64 only",
)


def _const(name: str, value: float) -> onnx.NodeProto:
    return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(np.array(value, np.float32), name))


def _mask_model(fill_to: str = "Softmax") -> onnx.ModelProto:
    """softmax(scores + where(mask == 0, float_min, 0)), the mask path HF BERT exports."""
    nodes = [
        _const("one", 1.0),
        _const("fill", FLOAT_MIN),
        helper.make_node("Cast", ["mask"], ["maskf"], to=TensorProto.FLOAT, name="cast"),
        helper.make_node("Sub", ["one", "maskf"], ["inv"], name="sub"),
        helper.make_node("Cast", ["inv"], ["cond"], to=TensorProto.BOOL, name="cast_b"),
        helper.make_node("Where", ["cond", "fill", "inv"], ["bias"], name="where"),
        helper.make_node("Add", ["scores", "bias"], ["logits"], name="add"),
        helper.make_node(fill_to, ["logits"], ["y"], name="last", **({"axis": -1} if fill_to == "Softmax" else {})),
    ]
    graph = helper.make_graph(
        nodes,
        "mask",
        [
            helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, 2, 8, 8]),
            helper.make_tensor_value_info("mask", TensorProto.INT64, [1, 1, 1, 8]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 8, 8])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def _mask_feeds(n: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    feeds = []
    for _ in range(n):
        mask = np.zeros((1, 1, 1, 8), np.int64)
        mask[..., : rng.integers(1, 8)] = 1  # padded tail, at least one kept token
        feeds.append({"scores": (rng.standard_normal((1, 2, 8, 8)) * 4).astype(np.float32), "mask": mask})
    return feeds


def _gelu_model(order: str) -> onnx.ModelProto:
    """MatMul -> exact GELU written with Erf (three product orders exporters use) -> MatMul."""
    rng = np.random.default_rng(1)
    w = numpy_helper.from_array((rng.standard_normal((16, 16)) * 0.5).astype(np.float32), "w")
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["h"], name="mm1"),
        _const("sqrt2", float(np.sqrt(2.0))),
        _const("one", 1.0),
        _const("half", 0.5),
        helper.make_node("Div", ["h", "sqrt2"], ["d"], name="div"),
        helper.make_node("Erf", ["d"], ["e"], name="erf"),
        helper.make_node("Add", ["e", "one"], ["a"], name="add"),
    ]
    if order == "x*(1+erf)*0.5":
        nodes += [helper.make_node("Mul", ["h", "a"], ["p"]), helper.make_node("Mul", ["p", "half"], ["g"])]
    elif order == "x*((1+erf)*0.5)":
        nodes += [helper.make_node("Mul", ["a", "half"], ["p"]), helper.make_node("Mul", ["h", "p"], ["g"])]
    else:  # (x*0.5)*(1+erf)
        nodes += [helper.make_node("Mul", ["h", "half"], ["p"]), helper.make_node("Mul", ["p", "a"], ["g"])]
    nodes.append(helper.make_node("MatMul", ["g", "w"], ["y"], name="mm2"))
    graph = helper.make_graph(
        nodes,
        "gelu",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 16])],
        [w],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def _gelu_feeds(n: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(2)
    return [{"x": rng.standard_normal((1, 8, 16)).astype(np.float32)} for _ in range(n)]


def _run(model: onnx.ModelProto | str, feeds: list[dict]) -> np.ndarray:
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else model
    sess = ort.InferenceSession(source, providers=["CPUExecutionProvider"])
    return np.stack([sess.run(None, f)[0] for f in feeds])


class _Reader(CalibrationDataReader):
    def __init__(self, feeds: list[dict]) -> None:
        self.feeds = iter(feeds)

    def get_next(self):
        return next(self.feeds, None)


def _quantize(model: onnx.ModelProto, feeds: list[dict], path: Path) -> Path:
    """A16W8 QDQ with onnxruntime's QNN settings, the preset the QNN target is quantized with."""
    src = path.with_suffix(".fp32.onnx")
    onnx.save(model, src)
    config = get_qnn_qdq_config(
        str(src), _Reader(feeds), activation_type=QuantType.QUInt16, weight_type=QuantType.QUInt8
    )
    quantize(str(src), str(path), config)
    return path


def test_float_min_mask_is_clamped_with_fp32_parity() -> None:
    model, feeds = _mask_model(), _mask_feeds(16)
    rewritten, records = prepare_for_integer_npu(model, feeds)
    (clamp,) = [r for r in records if r["kind"] == "clamp-mask-fill"]
    assert clamp["before"] == FLOAT_MIN and clamp["softmax"] == ["last"]
    assert -1000 < clamp["after"] <= -(clamp["score_span"] + npu_graph.MARGIN)
    fill = next(n for n in rewritten.graph.node if n.output[0] == "fill")
    assert float(numpy_helper.to_array(fill.attribute[0].t)) == clamp["after"]
    assert records[-1]["kind"] == "fp32-parity" and records[-1]["max_relative_diff"] <= 1e-5
    held_out = _mask_feeds(16, seed=9)
    np.testing.assert_allclose(_run(rewritten, held_out), _run(model, held_out), rtol=1e-5, atol=1e-7)
    assert float(numpy_helper.to_array(next(n for n in model.graph.node if n.output[0] == "fill").attribute[0].t)) == (
        FLOAT_MIN
    ), "the input model is left as it was"


def test_clamped_mask_keeps_quantized_scores(tmp_path: Path) -> None:
    """The reason for the clamp: with float-min in range the 16-bit softmax input loses the scores."""
    model, feeds = _mask_model(), _mask_feeds(16)
    rewritten, _ = prepare_for_integer_npu(model, feeds)
    want = _run(model, feeds)
    err_raw = np.abs(_run(str(_quantize(model, feeds, tmp_path / "raw.onnx")), feeds) - want).max()
    err_clamped = np.abs(_run(str(_quantize(rewritten, feeds, tmp_path / "clamped.onnx")), feeds) - want).max()
    assert err_clamped < 0.01 < err_raw


def test_huge_constant_not_masking_a_softmax_is_left() -> None:
    model = _mask_model(fill_to="Relu")
    rewritten, records = prepare_for_integer_npu(model, _mask_feeds(4))
    assert records == [] and rewritten is model


def test_a_rewrite_that_changes_answers_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(npu_graph, "MARGIN", -200.0)  # a "clamp" that lifts masked logits above the rest
    with pytest.raises(InternalError, match="changed the FP32 model's outputs"):
        prepare_for_integer_npu(_mask_model(), _mask_feeds(8))


@pytest.mark.parametrize("order", ["x*(1+erf)*0.5", "x*((1+erf)*0.5)", "(x*0.5)*(1+erf)"])
def test_erf_gelu_becomes_gelu(order: str) -> None:
    model, feeds = _gelu_model(order), _gelu_feeds(8)
    rewritten, records = prepare_for_integer_npu(model, feeds)
    ops = [n.op_type for n in rewritten.graph.node]
    assert ops.count("Gelu") == 1 and not {"Erf", "Div", "Mul", "Add"} & set(ops)
    assert [r["kind"] for r in records] == ["opset", "erf-gelu", "fp32-parity"]
    assert (records[0]["before"], records[0]["after"]) == (18, 20) and len(records[1]["replaced"]) == 5
    assert records[-1]["max_relative_diff"] <= 1e-5
    np.testing.assert_allclose(_run(rewritten, feeds), _run(model, feeds), rtol=1e-5, atol=1e-6)
    onnx.checker.check_model(rewritten, full_check=True)


@on_htp_host
def test_rewritten_gelu_runs_whole_on_the_htp(tmp_path: Path) -> None:
    model, feeds = _gelu_model("x*(1+erf)*0.5"), _gelu_feeds(8)
    soc = qnn_htp.SOCS["sa8295p"]
    before = qnn_htp.node_assignment(_quantize(model, feeds, tmp_path / "erf.onnx"), **_soc(soc))
    assert before["unsupported_ops"].get("Erf") == 1  # why the rewrite exists
    rewritten, _ = prepare_for_integer_npu(model, feeds)
    after = qnn_htp.node_assignment(_quantize(rewritten, feeds, tmp_path / "gelu.onnx"), **_soc(soc))
    assert after["cpu_fallback_nodes"] == 0 and after["partitions"] == 1


def _soc(soc: dict) -> dict:
    return {"soc_model": soc["soc_model"], "htp_arch": soc["htp_arch"]}
