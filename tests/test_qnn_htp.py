"""The real onnxruntime-qnn HTP emulator: node assignment, numerics against the CPU provider,
context-binary compilation, and the message when the extra is missing.

Linux x86_64 is where the emulator exists (and where CI runs), so there a missing
onnxruntime-qnn fails these tests rather than skipping them."""

from __future__ import annotations

import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

from exporter import qnn_htp
from exporter.errors import UsageError

pytestmark = pytest.mark.skipif(
    not (sys.platform.startswith("linux") and platform.machine() == "x86_64"),
    reason="the QNN HTP emulator ships for linux x86_64 only",
)
SHAPE = (1, 3, 16, 16)
SOC = qnn_htp.SOCS["snapdragon-8-gen3"]


def _float_model(tail: str | None) -> onnx.ModelProto:
    """conv -> relu -> conv (-> `tail` op, left in float by the quantizer)."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array((rng.standard_normal((8, 3, 3, 3)) * 0.3).astype(np.float32), "w1"),
        numpy_helper.from_array((rng.standard_normal(8) * 0.1).astype(np.float32), "b1"),
        numpy_helper.from_array((rng.standard_normal((4, 8, 1, 1)) * 0.3).astype(np.float32), "w2"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2"], ["c2" if tail else "y"], name="conv2"),
    ]
    if tail:
        nodes.append(helper.make_node(tail, ["c2"], ["y"], name="tail"))
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(SHAPE))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 16, 16])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    return model


class _Calibration(CalibrationDataReader):
    def __init__(self) -> None:
        rng = np.random.default_rng(1)
        self._feeds = iter([{"x": rng.standard_normal(SHAPE).astype(np.float32)} for _ in range(8)])

    def get_next(self) -> dict | None:
        return next(self._feeds, None)


def _qdq(folder: Path, name: str, tail: str | None) -> Path:
    onnx.save(_float_model(tail), folder / f"{name}.float.onnx")
    out = folder / f"{name}.qdq.onnx"
    quantize_static(
        folder / f"{name}.float.onnx",
        out,
        _Calibration(),
        quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QUInt8,
    )
    return out


@pytest.fixture(scope="session")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict:
    reason = qnn_htp.unavailable_reason()
    assert reason is None, reason  # linux x86_64 must have the edgex[qnn] extra installed
    folder = tmp_path_factory.mktemp("qnn")
    rng = np.random.default_rng(2)
    feeds = [{"x": rng.standard_normal(SHAPE).astype(np.float32)} for _ in range(4)]
    qdq = _qdq(folder, "all_htp", None)
    htp_out = qnn_htp.run_on_htp(qdq, feeds, soc_model=SOC["soc_model"], htp_arch=SOC["htp_arch"])
    # Hardmax: the QNN EP has no builder for it (found by asking the provider, see node_assignment).
    return {"folder": folder, "feeds": feeds, "qdq": qdq, "htp_out": htp_out, "hardmax": _qdq(folder, "hm", "Hardmax")}


def _output_scale(qdq: Path) -> float:
    """One quantization step of the model output (the scale of the last QuantizeLinear)."""
    model = onnx.load(str(qdq))
    last_q = [n for n in model.graph.node if n.op_type == "QuantizeLinear"][-1]
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    return float(inits[last_q.input[1]])


def test_htp_outputs_agree_with_cpu_provider_within_quantization_steps(models: dict) -> None:
    cpu = ort.InferenceSession(str(models["qdq"]), providers=["CPUExecutionProvider"])
    step = _output_scale(models["qdq"])
    for feed, htp in zip(models["feeds"], models["htp_out"], strict=True):
        expected = cpu.run(None, feed)[0]
        assert htp[0].shape == expected.shape
        assert np.abs(htp[0] - expected).max() <= 3 * step + 1e-6
    assert any(np.abs(out[0]).max() > 10 * step for out in models["htp_out"])  # not a constant output


def test_all_supported_graph_is_assigned_whole_to_the_htp(models: dict) -> None:
    found = qnn_htp.node_assignment(models["qdq"], soc_model=SOC["soc_model"])
    nodes = len(onnx.load(str(models["qdq"])).graph.node)
    assert found["checker"].startswith("onnxruntime-qnn ")
    assert (found["nodes"], found["supported_nodes"], found["cpu_fallback_nodes"]) == (nodes, nodes, 0)
    assert (found["partitions"], found["partition_map"], found["on_cpu"], found["unsupported_ops"]) == (
        1,
        [nodes],
        [],
        {},
    )


def test_an_op_the_htp_cannot_run_is_reported_on_the_cpu(models: dict) -> None:
    found = qnn_htp.node_assignment(models["hardmax"], soc_model=SOC["soc_model"])
    assert found["unsupported_ops"] == {"Hardmax": 1}
    assert found["on_cpu"] == ["tail"]
    assert found["supported_nodes"] == found["nodes"] - 1
    assert sum(found["partition_map"]) == found["supported_nodes"]


def test_context_model_loads_without_cpu_fallback_and_matches_the_qdq_model(models: dict) -> None:
    ctx = models["folder"] / "all_htp.ctx.onnx"
    made = qnn_htp.compile_context(models["qdq"], ctx, soc_model=SOC["soc_model"], htp_arch=SOC["htp_arch"])
    assert made["ctx_file"] == str(ctx) and made["bytes"] == ctx.stat().st_size
    (node,) = onnx.load(str(ctx)).graph.node
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    assert node.op_type == "EPContext" and attrs["embed_mode"] == 1 and attrs["source"] == b"QNNExecutionProvider"
    step = _output_scale(models["qdq"])
    for loaded, htp in zip(qnn_htp.load_context(ctx, models["feeds"]), models["htp_out"], strict=True):
        assert np.abs(loaded[0] - htp[0]).max() <= step + 1e-6


def test_compiling_twice_gives_byte_identical_context_files(models: dict) -> None:
    folder = models["folder"]
    first = qnn_htp.compile_context(models["qdq"], folder / "a" / "m.ctx.onnx", soc_model=SOC["soc_model"])
    second = qnn_htp.compile_context(models["qdq"], folder / "b" / "m.ctx.onnx", soc_model=SOC["soc_model"])
    assert first["sha256"] == second["sha256"]
    assert first["htp_arch"] == SOC["htp_arch"]  # taken from SOCS when not given


def test_compile_refuses_a_graph_the_htp_cannot_run_whole_and_names_the_node(models: dict) -> None:
    ctx = models["folder"] / "hm.ctx.onnx"
    with pytest.raises(UsageError, match=r"Hardmax x1: tail"):
        qnn_htp.compile_context(models["hardmax"], ctx, soc_model=SOC["soc_model"])
    assert not ctx.exists()


def _context_binary(ctx: Path) -> bytes:
    (node,) = onnx.load(str(ctx)).graph.node
    return next(a.s for a in node.attribute if a.name == "ep_cache_context")


def test_every_sourced_soc_compiles_to_its_own_binary(models: dict) -> None:
    sourced = {k: v for k, v in qnn_htp.SOCS.items() if v["soc_model"] is not None}
    assert {"snapdragon-8-gen3", "snapdragon-8-elite", "sa8295p"} <= set(sourced)
    assert all(v["source"] and v["htp_arch"] in (68, 69, 73, 75, 79, 81) for v in qnn_htp.SOCS.values())
    binaries = set()
    for key, soc in sourced.items():
        ctx = models["folder"] / f"{key}.ctx.onnx"
        qnn_htp.compile_context(models["qdq"], ctx, soc_model=soc["soc_model"], htp_arch=soc["htp_arch"])
        binaries.add(_context_binary(ctx))
    assert len(binaries) == len(sourced)  # the SoC shapes the binary itself, not only its label


def test_an_unknown_soc_model_is_refused_not_run_on_the_cpu(models: dict) -> None:
    with pytest.raises(UsageError, match="could not start"):
        qnn_htp.htp_session(models["qdq"], soc_model=9999)


def test_versions_name_the_qairt_build_and_the_onnxruntime_it_needs() -> None:
    found = qnn_htp.versions()
    assert found["onnxruntime"] == ort.__version__
    assert found["qairt"].startswith(found["qnn_sdk"] + ".")
    assert found["onnxruntime_required"].startswith(">=")


def test_without_the_package_the_reason_names_the_extra() -> None:
    code = (
        "import sys; sys.modules['onnxruntime_qnn'] = None\n"
        "from exporter import qnn_htp\n"
        "print(qnn_htp.unavailable_reason())\n"
        "print(qnn_htp.versions()['onnxruntime_qnn'])\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    reason, version = done.stdout.strip().splitlines()
    assert "edgex[qnn]" in reason and version == "None"
