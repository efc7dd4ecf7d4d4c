"""Class 3, numerical guards: NaN/Inf weights, zero quantization scales and dead channels are found in
produced models; a source model whose outputs are NaN fails the build (exit 1) and writes nothing."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from exporter.errors import GateFailure
from exporter.numerics import guard_produced, scan_model

from .conftest import assert_no_output, assert_one_line_error, edgex, write_onnx_project


def _conv(path, weight: np.ndarray, scale: float | None = None):
    """Conv, optionally behind a QuantizeLinear/DequantizeLinear pair with the given scale."""
    inits = [numpy_helper.from_array(weight, "w")]
    nodes, src = [], "x"
    if scale is not None:
        inits += [
            numpy_helper.from_array(np.array(scale, np.float32), "s"),
            numpy_helper.from_array(np.array(0, np.uint8), "z"),
        ]
        nodes += [
            helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
            helper.make_node("DequantizeLinear", ["q", "s", "z"], ["dq"]),
        ]
        src = "dq"
    nodes.append(helper.make_node("Conv", [src, "w"], ["y"]))
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 4, 4])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(path))
    return path


def test_zero_scale_fails_a_produced_model(tmp_path):
    path = _conv(tmp_path / "m.onnx", np.ones((3, 2, 1, 1), np.float32), scale=0.0)
    with pytest.raises(GateFailure, match="scales"):
        guard_produced(path, "int8")


def test_nan_weight_fails_a_produced_model(tmp_path):
    w = np.ones((3, 2, 1, 1), np.float32)
    w[1, 0, 0, 0] = np.nan
    with pytest.raises(GateFailure, match="NaN/Inf"):
        guard_produced(_conv(tmp_path / "m.onnx", w), "baseline")


def test_all_zero_channels_are_counted_not_fatal(tmp_path):
    w = np.ones((3, 2, 1, 1), np.float32)
    w[2] = 0.0
    found = guard_produced(_conv(tmp_path / "m.onnx", w, scale=0.1), "int8")
    assert found == {"non_finite": [], "zero_scales": [], "all_zero_channels": {"w": 1}}
    assert scan_model(_conv(tmp_path / "ok.onnx", np.ones((3, 2, 1, 1), np.float32)))["all_zero_channels"] == {}


def test_source_model_with_nan_outputs_fails_the_build(tmp_path):
    """Log of normal data is NaN for every negative input: the FP32 truth is meaningless, exit 1, nothing written."""
    graph = helper.make_graph(
        [helper.make_node("Log", ["x"], ["y"])],
        "log",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    recipe = write_onnx_project(tmp_path / "proj", model=model.SerializeToString())
    proc = edgex("build", str(recipe))
    assert_one_line_error(proc, 1, "NaN/Inf")
    assert_no_output(recipe.parent / "out")
