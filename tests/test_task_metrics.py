"""Task metrics on synthetic outputs whose right answers are known by construction.

The YOLO cases reproduce the failure that motivated task metrics: one INT8 scale (320/255) shared by
the box part (0..320 px) and the class part (0..1) of a YOLOv8 head keeps boxes and cosine fine while
every class score rounds to 0 or 1.25. The task metric must see that; cosine does not.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from exporter.errors import UsageError
from exporter.metrics import cosine
from exporter.quant.concat_parts import find_concat_parts
from exporter.task_metrics import (
    TASKS,
    classification,
    ctc_decode,
    db_boxes,
    decode_yolo,
    detection,
    output_parts_sqnr,
    task_metric_fn,
    text_detection,
    text_recognition,
    vad,
)

# --- text recognition --------------------------------------------------------------------------

CHARSET = list("abcdehlo")


def _one_hot(steps: list[list[int]], classes: int) -> np.ndarray:
    """CTC probabilities whose argmax at each step is the given index (blank-padded to equal length)."""
    t = max(map(len, steps))
    probs = np.full((len(steps), t, classes), 0.01, np.float32)
    probs[:, :, 0] = 0.5
    for n, row in enumerate(steps):
        for i, c in enumerate(row):
            probs[n, i, :] = 0.01
            probs[n, i, c] = 0.9
    return probs


def _encode(lines: list[str]) -> np.ndarray:
    """Each character twice then a blank, as a recogniser emits it; space is one past the charset."""
    index = {c: i + 1 for i, c in enumerate(CHARSET)} | {" ": len(CHARSET) + 1}
    return _one_hot([[s for c in line for s in (index[c], index[c], 0)] for line in lines], len(CHARSET) + 2)


def test_ctc_decode_collapses_repeats_and_drops_blanks():
    probs = _one_hot([[0, 1, 1, 0, 1, 2, 2, 0, 3, 3], [0, 0, 0], [5, 5, 5, 0, 5]], 6)
    assert ctc_decode(probs) == [(1, 1, 2, 3), (), (5, 5)]
    assert ctc_decode(probs, blank=5) == [(0, 1, 0, 1, 2, 0, 3), (0,), (0, 0)]
    with pytest.raises(UsageError, match="text-recognition"):
        ctc_decode(probs[0])


def test_text_recognition_exact_match_and_cer_on_known_strings():
    fp32 = _encode(["hello", "ab c", "bad"])
    variant = _encode(["hallo", "ab c", "bad"])
    got = text_recognition(variant, None, fp32, charset=CHARSET)
    assert got["exact_match"] == pytest.approx(2 / 3)
    assert got["cer"] == pytest.approx(1 / 12)  # one substitution over 5 + 4 + 3 characters
    assert got["exact_match_vs_fp32"] == pytest.approx(2 / 3)
    assert text_recognition(fp32, None, fp32, charset=CHARSET)["exact_match"] == 1.0

    # Against labels FP32 itself is wrong on one line: the variant is judged on the truth.
    labels = np.array(["hello", "ab c", "bed"])
    vs_truth = text_recognition(variant, labels, fp32, charset=CHARSET)
    assert vs_truth["exact_match"] == pytest.approx(1 / 3)
    assert vs_truth["cer"] == pytest.approx(2 / 12)
    assert vs_truth["exact_match_vs_fp32"] == pytest.approx(2 / 3)
    assert text_recognition(fp32, labels.astype(object), fp32, charset=CHARSET)["exact_match"] == pytest.approx(2 / 3)

    # Without a charset index sequences are compared; string labels then cannot be.
    assert text_recognition(variant, None, fp32)["exact_match"] == pytest.approx(2 / 3)
    with pytest.raises(UsageError, match="charset"):
        text_recognition(variant, labels, fp32)
    with pytest.raises(UsageError, match="past the charset"):
        text_recognition(variant, None, fp32, charset=CHARSET[:3])


# --- text detection ----------------------------------------------------------------------------


def _two_blobs() -> np.ndarray:
    prob = np.zeros((64, 64), np.float32)
    prob[10:20, 5:25] = 0.9  # h 10, w 20: unclip distance 200 * 1.5 / 60 = 5
    prob[40:50, 30:60] = 0.8
    prob[30:32, 2:4] = 0.95  # 2x2: smaller than min_size
    prob[55:60, 5:15] = 0.4  # above thresh, below box_thresh
    return prob


def test_db_boxes_unclip_and_drop_small_or_weak_regions():
    boxes = db_boxes(_two_blobs()[None])
    assert len(boxes) == 2
    np.testing.assert_allclose(boxes[0], [0, 5, 30, 25])  # x0 clipped at the border
    np.testing.assert_allclose(boxes[1], [24.375, 34.375, 64, 55.625])  # d = 300 * 1.5 / 80 = 5.625


def test_text_detection_hmean_against_fp32_and_labels():
    ref = _two_blobs()[None, None]
    assert text_detection(ref, None, ref) == {"precision": 1.0, "recall": 1.0, "hmean": 1.0}
    erased = ref.copy()
    erased[0, 0, 40:50, 30:60] = 0.0
    got = text_detection(erased, None, ref)
    assert (got["precision"], got["recall"]) == (1.0, 0.5)
    assert got["hmean"] == pytest.approx(2 / 3)
    labels = np.empty(1, dtype=object)
    labels[0] = np.array([[0, 5, 30, 25], [200, 200, 220, 220]], np.float64)  # one true box matches
    assert text_detection(ref, labels, ref)["hmean"] == pytest.approx(0.5)


# --- detection ---------------------------------------------------------------------------------

CLASSES, ANCHORS = 3, 60
# (image, anchor, class, score): the scores below 0.63 round to 0 on a 320/255 grid and vanish.
OBJECTS = [(0, 3, 0, 0.92), (0, 10, 1, 0.45), (0, 17, 2, 0.88), (0, 25, 0, 0.35), (1, 5, 1, 0.95), (1, 30, 2, 0.5)]


@pytest.fixture(scope="module")
def yolo() -> np.ndarray:
    """A YOLOv8-layout head [N, 4 + C, A]: boxes in pixels, sigmoid class scores, mostly background."""
    rng = np.random.default_rng(0)
    out = np.zeros((2, 4 + CLASSES, ANCHORS), np.float32)
    out[:, 0:2] = rng.uniform(20, 300, (2, 2, ANCHORS))
    out[:, 2:4] = rng.uniform(10, 40, (2, 2, ANCHORS))
    out[:, 4:] = rng.uniform(0, 0.02, (2, CLASSES, ANCHORS))
    out[:, 4, 40:50] = 0.1  # weak background responses: relevant anchors, never detections
    for k, (img, a, c, score) in enumerate(OBJECTS):
        out[img, :4, a] = [40 + 55 * k, 100 + 30 * (k % 2), 40, 50]  # disjoint boxes
        out[img, 4 + c, a] = score
    return out


def _grid(x: np.ndarray, scale: float) -> np.ndarray:
    return (np.clip(np.round(x / scale), 0, 255) * scale).astype(np.float32)


def test_decode_yolo_keeps_one_of_two_overlapping_boxes_per_class():
    out = np.zeros((1, 4 + 2, 4), np.float32)
    out[0, :4, 0] = [100, 100, 40, 40]
    out[0, :4, 1] = [102, 101, 40, 40]  # IoU ~0.93 with anchor 0, same class, lower score
    out[0, :4, 2] = [101, 100, 40, 40]  # overlaps too, but another class: kept
    out[0, :4, 3] = [200, 200, 10, 10]
    out[0, 4, :2] = [0.9, 0.8]
    out[0, 5, 2] = 0.7
    out[0, 4, 3] = 0.2  # under score_thresh
    boxes, scores, classes = decode_yolo(out)[0]
    np.testing.assert_allclose(scores, [0.9, 0.7], rtol=1e-6)
    assert classes.tolist() == [0, 1]
    np.testing.assert_allclose(boxes[0], [80, 80, 120, 120])
    nac = decode_yolo(out.transpose(0, 2, 1), layout="NAC")[0]
    np.testing.assert_allclose(nac[0], boxes)
    assert len(decode_yolo(out, iou_thresh=0.99)[0][1]) == 3  # NMS loose enough keeps both of class 0
    with pytest.raises(UsageError, match="layout"):
        decode_yolo(out, layout="CAN")


def test_detection_fails_the_shared_int8_scale_and_passes_per_part_scales(yolo):
    assert detection(yolo, None, yolo) == {"map50": 1.0, "class_score_error": 0.0, "box_error": 0.0}

    shared = _grid(yolo, 320 / 255)  # one scale for the whole Concat output
    assert cosine(shared, None, yolo) > 0.999  # what let the broken variant through
    got = detection(shared, None, yolo)
    assert got["map50"] < 0.7
    assert got["class_score_error"] > 0.05
    assert got["box_error"] < 1.0  # pixels: boxes alone look fine

    per_part = yolo.copy()
    per_part[:, :4] = _grid(yolo[:, :4], 320 / 255)
    per_part[:, 4:] = _grid(yolo[:, 4:], 1 / 255)
    fine = detection(per_part, None, yolo)
    assert fine["map50"] == 1.0
    assert fine["class_score_error"] < 0.01


def test_detection_against_labels(yolo):
    truths = np.empty(2, dtype=object)
    for i, (boxes, _, classes) in enumerate(decode_yolo(yolo)):
        truths[i] = np.column_stack([classes, boxes])
    assert detection(yolo, truths, yolo)["map50"] == 1.0
    missed = truths.copy()
    missed[1] = np.vstack([truths[1], [[1, 0, 0, 30, 30]]])  # an object FP32 does not find either
    assert detection(yolo, missed, yolo)["map50"] == pytest.approx((1 + 2 / 3 + 1) / 3)
    padded = np.full((2, 5, 5), np.nan)  # the pickle-free form: all-NaN rows are padding
    for i, rows in enumerate(missed):
        padded[i, : len(rows)] = rows
    assert detection(yolo, padded, yolo)["map50"] == pytest.approx((1 + 2 / 3 + 1) / 3)
    with pytest.raises(UsageError, match="label entries"):
        detection(yolo, truths[:1], yolo)


def test_parts_sqnr_shows_the_class_part_destroyed(yolo):
    shared = _grid(yolo, 320 / 255)
    whole, box, cls = output_parts_sqnr(shared, yolo, [(1, 0, 4), (1, 4, 4 + CLASSES)])
    assert box["sqnr_db"] > 40
    assert cls["sqnr_db"] < 10
    assert whole["sqnr_db"] > 40  # the whole tensor hides it
    assert output_parts_sqnr(yolo, yolo)[0]["sqnr_db"] == float("inf")


# --- voice activity, classification ------------------------------------------------------------


def test_vad_f1_and_agreement():
    ref = np.array([[0.9, 0.8, 0.2, 0.1], [0.6, 0.4, 0.7, 0.3]], np.float32)
    out = np.array([[0.9, 0.4, 0.2, 0.6], [0.6, 0.4, 0.7, 0.3]], np.float32)
    got = vad(out, None, ref)
    assert got["decision_agreement"] == pytest.approx(6 / 8)
    assert got["frame_f1"] == pytest.approx(2 * 3 / (2 * 3 + 1 + 1))  # tp 3, fp 1, fn 1
    labels = np.array([1, 1, 1, 0, 1, 0, 1, 0])
    assert vad(out, labels, ref)["frame_f1"] == pytest.approx(2 * 3 / (2 * 3 + 1 + 2))
    assert vad(ref, None, ref) == {"frame_f1": 1.0, "decision_agreement": 1.0}
    with pytest.raises(UsageError, match="frame labels"):
        vad(out, labels[:3], ref)


def test_classification_top1_and_agreement():
    ref = np.eye(4, dtype=np.float32)
    out = ref[[0, 1, 3, 3]]
    assert classification(out, None, ref) == {"top1": 0.75, "top1_agreement_with_fp32": 0.75}
    assert classification(out, np.array([0, 1, 3, 2]), ref)["top1"] == 0.75
    assert classification(out, np.array([0, 1, 3, 3]), ref)["top1"] == 1.0


# --- registry ----------------------------------------------------------------------------------


def test_registry_and_task_metric_fn(yolo):
    assert set(TASKS) == {"text-recognition", "text-detection", "detection", "voice-activity", "classification"}
    assert TASKS["detection"].primary == "map50" and TASKS["detection"].higher_is_better
    primary, extras = task_metric_fn("detection", {"score_thresh": 0.3})
    shared = _grid(yolo, 320 / 255)
    assert primary(yolo, None, yolo) == 1.0
    assert primary(shared, None, yolo) < 0.7
    assert set(extras(shared, None, yolo)) == {"class_score_error", "box_error"}
    primary, _ = task_metric_fn("text-recognition", {"charset": CHARSET})
    assert primary(_encode(["hallo"]), None, _encode(["hello"])) == 0.0
    with pytest.raises(UsageError, match="unknown task"):
        task_metric_fn("segmentation", {})
    with pytest.raises(UsageError, match="score_thresh, iou_thresh"):
        task_metric_fn("detection", {"thresh": 0.3})
    with pytest.raises(UsageError, match="must be a number"):
        task_metric_fn("voice-activity", {"threshold": "high"})
    with pytest.raises(UsageError, match="list of strings"):
        task_metric_fn("text-recognition", {"charset": "abc"})


# --- concatenated heads in the graph -----------------------------------------------------------


def _head(after: list[onnx.NodeProto] | None = None, out_shape: list[int] | None = None) -> onnx.ModelProto:
    """feat [1, 6, 10] -> split 4 | 2 -> boxes = sigmoid * 320, scores = sigmoid -> Concat(axis=1)."""
    nodes = [
        helper.make_node("Split", ["feat", "sizes"], ["box_raw", "cls_raw"], axis=1),
        helper.make_node("Sigmoid", ["box_raw"], ["box_unit"]),
        helper.make_node("Mul", ["box_unit", "stride"], ["boxes"]),
        helper.make_node("Sigmoid", ["cls_raw"], ["scores"]),
        helper.make_node("Concat", ["boxes", "scores"], ["head"], name="head_concat", axis=1),
        *(after or []),
    ]
    final = nodes[-1].output[0]
    inits = [
        helper.make_tensor("sizes", TensorProto.INT64, [2], [4, 2]),
        helper.make_tensor("stride", TensorProto.FLOAT, [], [320.0]),
        helper.make_tensor("shape", TensorProto.INT64, [4], [1, 6, 2, 5]),
        helper.make_tensor("flat", TensorProto.INT64, [2], [1, 60]),
    ]
    graph = helper.make_graph(
        nodes,
        "yolo_head",
        [helper.make_tensor_value_info("feat", TensorProto.FLOAT, [1, 6, 10])],
        [helper.make_tensor_value_info(final, TensorProto.FLOAT, out_shape or [1, 6, 10])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model, full_check=True)
    return model


RANGES = {"boxes": (0.0, 320.0), "scores": (0.0, 1.0)}


def test_find_concat_parts_flags_the_yolo_head():
    (found,) = find_concat_parts(_head(), RANGES)
    assert (found["output"], found["concat"], found["axis"], found["output_axis"]) == ("head", "head_concat", 1, 1)
    assert found["ratio"] == pytest.approx(320)
    rows = {r["tensor"]: (r["start"], r["stop"], r["small"]) for r in found["inputs"]}
    assert rows == {"boxes": (0, 4, False), "scores": (4, 6, True)}
    assert find_concat_parts(_head(), {"boxes": (0.0, 320.0), "scores": (0.0, 100.0)}) == []
    assert find_concat_parts(_head(), {"boxes": (0.0, 320.0)}) == []


def test_find_concat_parts_follows_transpose_and_reshape():
    transposed = _head([helper.make_node("Transpose", ["head"], ["out"], perm=[0, 2, 1])], [1, 10, 6])
    assert find_concat_parts(transposed, RANGES)[0]["output_axis"] == 2
    split = _head([helper.make_node("Reshape", ["head", "shape"], ["out"])], [1, 6, 2, 5])
    assert find_concat_parts(split, RANGES)[0]["output_axis"] == 1
    flat = _head([helper.make_node("Reshape", ["head", "flat"], ["out"])], [1, 60])
    assert find_concat_parts(flat, RANGES)[0]["output_axis"] is None
    hidden = _head([helper.make_node("Relu", ["head"], ["out"])])
    assert find_concat_parts(hidden, RANGES) == []


def test_a_recipe_names_a_task_metric_and_the_build_reports_its_values(tmp_path):
    import json

    from conftest import run_cli, write_tiny_project

    recipe = write_tiny_project(
        tmp_path, metric={"task": "classification"}, profiles=["raspberry-pi-5-cpu"], quantize={"enabled": False}
    )
    proc = run_cli("build", str(recipe), "--json")
    assert proc.returncode in (0, 1), proc.stderr[-2000:]
    base = json.loads(proc.stdout)["profiles"][0]["variants"][0]
    assert base["metric"]["name"] == "classification"
    assert base["metrics"]["top1_agreement_with_fp32"] == 1.0  # the FP32 baseline agrees with itself


def test_a_task_metric_option_it_does_not_take_is_one_line_exit_2(tmp_path):
    from conftest import run_cli, write_tiny_project

    recipe = write_tiny_project(tmp_path, metric={"task": "detection", "options": {"score": 0.3}})
    proc = run_cli("validate", str(recipe))
    assert proc.returncode == 2, proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert str(recipe) in line and "metric.options" in line and "score_thresh" in line
