"""A YOLO-style head: boxes in pixels concatenated with 0..1 class scores under one output.

Plain static INT8 (onnxruntime's quantize_static with a CPU preset) gives that output one scale, so
every class score rounds onto a ~1.0 grid; the detection metric must reject it, and edgex's quantizer
must keep the parts apart (float Concat on a CPU, 16-bit on the integer-only NPU).
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

from exporter.data import make_dataset
from exporter.quant.calibration import FeedReader
from exporter.quant.concat_parts import find_concat_parts, observed_ranges
from exporter.quant.diagnose import shared_scales
from exporter.quantize import quantize_int8
from exporter.recipe import QuantizeSection, SearchSettings
from exporter.runtime import make_session
from exporter.targets import get_target
from exporter.task_metrics import detection

ANCHORS = 64


def head_model() -> onnx.ModelProto:
    """Conv trunk, a box branch decoded to pixel centres/sizes (0..256) and a sigmoid class branch,
    concatenated on the channel axis as YOLOv8 exports it: [N, 4 + 3, 64]."""
    rng = np.random.default_rng(0)
    grid = (np.arange(8) * 32 + 16).astype(np.float32)
    xs, ys = np.meshgrid(grid, grid)
    anchors = np.stack([xs.ravel(), ys.ravel(), np.full(ANCHORS, 24), np.full(ANCHORS, 24)]).astype(np.float32)
    inits = [
        numpy_helper.from_array(rng.normal(0, 0.4, (8, 3, 3, 3)).astype(np.float32), "w_trunk"),
        numpy_helper.from_array(rng.normal(0, 0.5, (4, 8, 1, 1)).astype(np.float32), "w_box"),
        numpy_helper.from_array(rng.normal(0, 1.0, (3, 8, 1, 1)).astype(np.float32), "w_cls"),
        numpy_helper.from_array(np.full(3, -2.5, np.float32), "b_cls"),  # most anchors see background
        numpy_helper.from_array(np.float32(16.0), "pixels"),
        numpy_helper.from_array(anchors, "anchors"),
        numpy_helper.from_array(np.array([0, 4, -1], np.int64), "box_shape"),
        numpy_helper.from_array(np.array([0, 3, -1], np.int64), "cls_shape"),
    ]
    nodes = [
        helper.make_node("Conv", ["images", "w_trunk"], ["trunk"], name="trunk", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["trunk"], ["feat"], name="relu"),
        helper.make_node("Conv", ["feat", "w_box"], ["box_raw"], name="box_conv"),
        helper.make_node("Softplus", ["box_raw"], ["box_pos"], name="softplus"),
        helper.make_node("Mul", ["box_pos", "pixels"], ["box_px"], name="to_pixels"),
        helper.make_node("Reshape", ["box_px", "box_shape"], ["box_flat"], name="box_flat"),
        helper.make_node("Add", ["box_flat", "anchors"], ["boxes"], name="decode"),
        helper.make_node("Conv", ["feat", "w_cls", "b_cls"], ["cls_raw"], name="cls_conv"),
        helper.make_node("Reshape", ["cls_raw", "cls_shape"], ["cls_flat"], name="cls_flat"),
        helper.make_node("Sigmoid", ["cls_flat"], ["scores"], name="sigmoid"),
        helper.make_node("Concat", ["boxes", "scores"], ["detections"], name="head_concat", axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "yolo_head",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("detections", TensorProto.FLOAT, ["N", 7, ANCHORS])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    folder = tmp_path_factory.mktemp("head")
    path = folder / "head.onnx"
    onnx.save(head_model(), str(path))
    rng = np.random.default_rng(1)
    images = rng.normal(0, 1, (64, 3, 8, 8)).astype(np.float32)
    data = make_dataset({"images": images}, None)
    fp32 = make_session(path, 1, "simulated").run(None, {"images": images})[0]
    return path, data, images, fp32


def _scores_error(path, images, fp32) -> float:
    got = make_session(path, 1, "simulated").run(None, {"images": images})[0]
    return float(np.abs(got[:, 4:] - fp32[:, 4:]).max())


def test_the_finder_names_the_concat_and_the_slice_each_part_fills(head):
    path, _, images, _ = head
    model = onnx.load(str(path))
    ranges = observed_ranges(model, [{"images": images[:8]}])
    assert set(ranges) == {"boxes", "scores"} and ranges["boxes"][1] > 100 and ranges["scores"][1] <= 1.0
    (found,) = find_concat_parts(model, ranges)
    assert found["concat"] == "head_concat" and found["output_axis"] == 1 and found["ratio"] > 100
    parts = {i["tensor"]: (i["start"], i["stop"], i["small"]) for i in found["inputs"]}
    assert parts == {"boxes": (0, 4, False), "scores": (4, 7, True)}
    # ranges of the same order are not flagged
    assert find_concat_parts(model, {"boxes": (0.0, 3.0), "scores": (0.0, 1.0)}) == []


def test_plain_int8_erases_the_scores_and_the_detection_metric_rejects_it(head, tmp_path):
    path, data, images, fp32 = head
    plain = tmp_path / "plain.onnx"
    quantize_static(
        str(path), str(plain), FeedReader(data.feeds(1, 32)), quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
    )  # fmt: skip
    assert _scores_error(plain, images, fp32) > 0.3  # one ~1.0 step over scores in 0..1
    got = make_session(plain, 1, "simulated").run(None, {"images": images})[0]
    verdict = detection(got, None, fp32)
    assert verdict["class_score_error"] > 0.05
    assert detection(fp32, None, fp32)["map50"] == 1.0 and verdict["map50"] < 0.95
    # edgex diagnose names the output and the few steps its scores have left
    (found,) = shared_scales(onnx.load(str(plain)), {"images": images[:4]})
    assert found["output"] == "detections" and found["small_parts"] and found["small_part_steps"] < 2


@pytest.mark.parametrize("target", ["cpu", "qnn"])
def test_edgex_int8_keeps_the_parts_apart(head, tmp_path, target):
    path, data, images, fp32 = head
    out = tmp_path / "q.onnx"
    settings = QuantizeSection(calibration_samples=32, search=SearchSettings(enabled=False))
    res = quantize_int8(path, out, data, settings, get_target(target).quantization, 1, 0)
    (rec,) = res.concat_parts
    assert rec["output"] == "detections"
    if target == "cpu":
        assert rec["kept_as"] == "float" and "head_concat" in res.excluded_nodes
    else:  # the HTP runs integers only: the Concat and its inputs are 16-bit, nothing float
        assert rec["kept_as"] == "uint16" and not res.excluded_nodes
        model = onnx.load(str(out))
        inits = {i.name: i for i in model.graph.initializer}
        q_out = next(n for n in model.graph.node if n.op_type == "QuantizeLinear" and "detections" in n.input[0])
        assert inits[q_out.input[2]].data_type == TensorProto.UINT16
    assert _scores_error(out, images, fp32) < 0.1  # the worst score anywhere (trunk rounding included)
    got = make_session(out, 1, "simulated").run(None, {"images": images})[0]
    verdict = detection(got, None, fp32)
    assert verdict["class_score_error"] <= 0.02 and verdict["map50"] >= 0.95, verdict


def test_unnamed_nodes_are_named_before_the_concat_is_kept_float(head, tmp_path):
    """Exclusions address nodes by name: a file exported without node names gets them first."""
    path, data, images, fp32 = head
    model = onnx.load(str(path))
    for node in model.graph.node:
        node.name = ""
    unnamed = tmp_path / "unnamed.onnx"
    onnx.save(model, str(unnamed))
    out = tmp_path / "q.onnx"
    settings = QuantizeSection(calibration_samples=32, search=SearchSettings(enabled=False))
    res = quantize_int8(unnamed, out, data, settings, get_target("cpu").quantization, 1, 0)
    (rec,) = res.concat_parts
    assert rec["concat"].startswith("Concat_edgex_") and rec["concat"] in res.excluded_nodes
    assert _scores_error(out, images, fp32) < 0.1
