"""Attention-sink rows kept apart before static INT8 (exporter/quant/sink_token.py): on a small
encoder-like block whose first position carries activations ~100x the rest (as [CLS] does in
MiniLM), the split leaves the FP32 function unchanged and turns an INT8 model a user would reject
into one they would keep; a block without a sink is left alone."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from exporter.data import make_dataset
from exporter.metrics import cosine
from exporter.quant.sink_token import split_sink_rows
from exporter.quantize import quantize_int8
from exporter.recipe import QuantizeSection, SearchSettings
from exporter.runtime import make_session, run_all
from exporter.targets import get_target


class SinkBlock(nn.Module):
    """FFN with a residual: position 0 is scaled up 100x on its way in, as an attention sink."""

    def __init__(self, sink: float):
        super().__init__()
        torch.manual_seed(0)
        self.up, self.down = nn.Linear(32, 128), nn.Linear(128, 32)
        self.register_buffer("gain", torch.tensor([sink] + [1.0] * 15).view(1, 16, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x * self.gain
        return h + self.down(torch.relu(self.up(h)))


def _export(module: nn.Module, path) -> onnx.ModelProto:
    # dynamic positions, as exported encoders have them (a static 3-D MatMul + Add becomes a 2-D Gemm)
    torch.onnx.export(
        module.eval(),
        (torch.randn(1, 16, 32),),
        str(path),
        input_names=["x"],
        dynamic_axes={"x": {0: "b", 1: "s"}},
        dynamo=False,
    )
    return onnx.load(str(path))


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    return make_dataset({"x": rng.standard_normal((32, 16, 32)).astype(np.float32)}, None)


def _rows_cosine(fp32, other, data) -> float:
    """Cosine over positions 1.. (the rows a shared scale sized for the sink erases)."""
    ref = run_all(make_session(fp32), data.inputs)[0][:, 1:]
    return cosine(run_all(make_session(other), data.inputs)[0][:, 1:], None, ref)


def test_split_keeps_fp32_and_rescues_int8(tmp_path, data):
    fp32 = tmp_path / "sink.onnx"
    model = _export(SinkBlock(100.0), fp32)
    feeds = data.feeds(1, 8)
    split, records = split_sink_rows(model, feeds)
    assert records and records[0]["matmuls"] == 2 and records[0]["largest_ratio"] > 2
    assert records[0]["max_relative_diff"] <= 1e-4
    assert sum(n.op_type == "Concat" for n in split.graph.node) == 2
    settings = QuantizeSection(calibration_samples=16, search=SearchSettings(enabled=False), speed_guard=False)
    preset = get_target("cpu").quantization.model_copy(update={"op_types": ["MatMul", "Gemm"]})
    res = quantize_int8(fp32, tmp_path / "q.onnx", data, settings, preset, 1, 0, split_sinks=True)
    assert [r["kind"] for r in res.graph_rewrites] == ["sink-token-split"]
    # the same quantization without the split: the rows the sink's scale flattens
    plain = tmp_path / "plain.onnx"
    onnx.save(model, str(plain))
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    from exporter.quant.calibration import FeedReader

    quantize_static(
        str(plain), str(tmp_path / "q-plain.onnx"), FeedReader(data.feeds(1, 16)), quant_format=QuantFormat.QDQ,
        op_types_to_quantize=["MatMul", "Gemm"], per_channel=True, activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8, extra_options={"WeightSymmetric": True},
    )  # fmt: skip
    without, with_split = _rows_cosine(fp32, tmp_path / "q-plain.onnx", data), _rows_cosine(fp32, res.path, data)
    assert without < 0.99 < with_split, (without, with_split)


def test_no_sink_no_split(tmp_path, data):
    model = _export(SinkBlock(1.0), tmp_path / "flat.onnx")
    split, records = split_sink_rows(model, data.feeds(1, 8))
    assert records == [] and split is model


def test_a_split_that_breaks_parity_is_skipped_and_said(tmp_path, data, monkeypatch):
    from exporter.quant import sink_token

    model = _export(SinkBlock(100.0), tmp_path / "sink2.onnx")
    monkeypatch.setattr(sink_token, "fp32_parity", lambda a, b, feeds: 0.5)
    split, records = sink_token.split_sink_rows(model, data.feeds(1, 8))
    assert split is model and records[0]["applied"] is False and "differed by 0.5" in records[0]["why"]
