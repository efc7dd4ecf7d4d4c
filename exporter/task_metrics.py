"""Task metrics: judge a variant by what its output means after post-processing, not by raw closeness.

Raw-output fidelity let through variants users reject: a PP-OCRv4 recogniser kept a high cosine while
its decoded lines matched FP32's in half the cases, and a YOLOv8 head kept cosine 0.999 while its class
scores collapsed onto {0, 1.25}. Each task decodes the output the way the deployed application does
and scores that. Every metric works in two modes: against ground-truth `labels` when given, else
against the FP32 model's own post-processed `reference`, so a build without labels is still judged on
decoded results. Signatures follow exporter.metrics: fn(output, labels, reference) with samples first.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from exporter.errors import UsageError

Detections = tuple[np.ndarray, np.ndarray, np.ndarray]  # boxes (k, 4) xyxy, scores (k,), classes (k,)


def _refuse(task: str, message: str, fix: str) -> UsageError:
    return UsageError(f"task {task}: {message}", field="metric.task", fix=fix)


# --- text recognition (CTC) -------------------------------------------------------------------


def ctc_decode(probs: np.ndarray, blank: int = 0) -> list[tuple[int, ...]]:
    """Greedy CTC: argmax per step, collapse repeats, drop blanks (what PP-OCR's CTCLabelDecode does).

    Greedy rather than beam search because that is what the shipped recognisers run on device."""
    probs = np.asarray(probs)
    if probs.ndim != 3:
        raise _refuse("text-recognition", f"expects an output [N, T, C], got shape {probs.shape}", "use a CTC head")
    idx = probs.argmax(-1)
    new = np.ones(idx.shape, bool)
    new[:, 1:] = idx[:, 1:] != idx[:, :-1]
    return [tuple(int(i) for i in row[keep & (row != blank)]) for row, keep in zip(idx, new)]


def _to_text(seq: tuple[int, ...], charset: Sequence[str]) -> str:
    """PP-OCR's layout: index 0 blank, index i -> charset[i-1], one index past the charset = space."""
    table = ["", *charset, " "]
    if seq and max(seq) >= len(table):
        raise _refuse(
            "text-recognition",
            f"class index {max(seq)} is past the charset ({len(charset)} characters + space)",
            "give the model's own character dictionary as options.charset",
        )
    return "".join(table[i] for i in seq)


def levenshtein(a: Sequence[Any], b: Sequence[Any]) -> int:
    """Edit distance (insert, delete, substitute each cost 1), over strings or index tuples alike."""
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        cur = [i]
        for j, y in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y)))
        prev = cur
    return prev[-1]


def _truth_lines(labels: np.ndarray, n: int, charset: Sequence[str] | None) -> list[Any]:
    lines = list(np.asarray(labels, dtype=object).reshape(-1))
    if len(lines) != n:
        raise _refuse("text-recognition", f"{len(lines)} labels for {n} lines", "give one true string per sample")
    if charset is None and any(isinstance(s, str) for s in lines):
        raise _refuse(
            "text-recognition",
            "labels are strings but no charset maps class indices to characters",
            "set options.charset (the recogniser's dictionary, one character per entry)",
        )
    return [s if isinstance(s, str) else tuple(int(i) for i in s) for s in lines]


def _cer(got: list[Any], truth: list[Any]) -> float:
    return sum(levenshtein(g, t) for g, t in zip(got, truth)) / max(1, sum(len(t) for t in truth))


def text_recognition(
    output: np.ndarray, labels: np.ndarray | None, reference: np.ndarray, charset: Sequence[str] | None = None
) -> dict[str, float]:
    """Exact line match and character error rate of the decoded strings, which is what an OCR user reads.

    Without a charset the index sequences are compared, which ranks variants the same way."""
    got: list[Any] = ctc_decode(output)
    fp32: list[Any] = ctc_decode(reference)
    if charset is not None:
        got, fp32 = [_to_text(s, charset) for s in got], [_to_text(s, charset) for s in fp32]
    truth = fp32 if labels is None else _truth_lines(labels, len(got), charset)
    return {
        "exact_match": float(np.mean([g == t for g, t in zip(got, truth)])),
        "cer": _cer(got, truth),
        "exact_match_vs_fp32": float(np.mean([g == t for g, t in zip(got, fp32)])),
        "cer_vs_fp32": _cer(got, fp32),
    }


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in a (n, 4) with every box in b (m, 4), xyxy: an (n, m) matrix."""
    a, b = np.asarray(a, np.float64).reshape(-1, 4), np.asarray(b, np.float64).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area = lambda x: np.prod(np.clip(x[:, 2:] - x[:, :2], 0, None), axis=1)  # noqa: E731
    return inter / np.maximum(area(a)[:, None] + area(b)[None, :] - inter, 1e-12)


def _greedy_matches(pred: np.ndarray, truth: np.ndarray, iou: float) -> int:
    """One-to-one matches at IoU >= iou, best pairs first (ICDAR-style counting)."""
    if len(pred) == 0 or len(truth) == 0:
        return 0
    m = box_iou(pred, truth)
    pairs = sorted(zip(*np.nonzero(m >= iou)), key=lambda p: -m[p])
    used_p, used_t = set(), set()
    for p, t in pairs:
        if p not in used_p and t not in used_t:
            used_p.add(p)
            used_t.add(t)
    return len(used_p)


def _per_image(labels: np.ndarray, n: int, width: int, task: str) -> list[np.ndarray]:
    """Per-image truth rows from an object array of (k, width) arrays, or a numeric [N, K, width] one whose
    all-NaN rows are padding (npz files load without pickle, so ragged lists cannot be stored there)."""
    items = [np.asarray(x, np.float64).reshape(-1, width) for x in labels]
    if len(items) != n:
        raise _refuse(task, f"{len(items)} label entries for {n} images", "give one box array per image")
    return [x[~np.isnan(x).all(1)] for x in items]


# --- text detection (DB) -----------------------------------------------------------------------


def db_boxes(
    prob: np.ndarray, thresh: float = 0.3, box_thresh: float = 0.6, unclip_ratio: float = 1.5, min_size: int = 3
) -> list[np.ndarray]:
    """DB post-processing (PP-OCR det), axis-aligned boxes x0, y0, x1, y1: binarise, components, score, unclip.

    The shrunk text kernels DB predicts are grown back by area*ratio/perimeter, as the reference
    implementation does; axis-aligned rectangles instead of rotated ones keep this numpy-only and
    still move when a variant's probability map moves."""
    p = np.asarray(prob, np.float64)
    p = p[0] if p.ndim == 3 and p.shape[0] == 1 else p
    if p.ndim != 2:
        raise _refuse("text-detection", f"expects a probability map [H, W], got {np.shape(prob)}", "use a DB head")
    lab, n = ndimage.label(p > thresh)
    scores = ndimage.mean(p, lab, index=np.arange(1, n + 1))
    height, width = p.shape
    boxes = []
    for sl, score in zip(ndimage.find_objects(lab), scores):
        y0, y1, x0, x1 = sl[0].start, sl[0].stop, sl[1].start, sl[1].stop
        w, h = x1 - x0, y1 - y0
        if min(w, h) < min_size or score < box_thresh:
            continue
        d = w * h * unclip_ratio / (2 * (w + h))
        boxes.append(np.array([max(0, x0 - d), max(0, y0 - d), min(width, x1 + d), min(height, y1 + d)]))
    return boxes


def _prf(tp: int, n_pred: int, n_truth: int) -> dict[str, float]:
    precision = tp / n_pred if n_pred else float(n_truth == 0)
    recall = tp / n_truth if n_truth else float(n_pred == 0)
    hmean = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "hmean": hmean}


def text_detection(
    output: np.ndarray,
    labels: np.ndarray | None,
    reference: np.ndarray,
    thresh: float = 0.3,
    box_thresh: float = 0.6,
    unclip_ratio: float = 1.5,
    min_size: int = 3,
    iou: float = 0.5,
) -> dict[str, float]:
    """ICDAR-style precision, recall and hmean of DB boxes, over the whole set (not per image)."""
    kw = {"thresh": thresh, "box_thresh": box_thresh, "unclip_ratio": unclip_ratio, "min_size": min_size}
    maps = np.asarray(output).reshape(len(output), *np.shape(output)[-2:])
    preds = [np.array(db_boxes(m, **kw)).reshape(-1, 4) for m in maps]
    if labels is None:
        truths = [np.array(db_boxes(m, **kw)).reshape(-1, 4) for m in np.asarray(reference).reshape(maps.shape)]
    else:
        truths = _per_image(labels, len(preds), 4, "text-detection")
    tp = sum(_greedy_matches(p, t, iou) for p, t in zip(preds, truths))
    return _prf(tp, sum(map(len, preds)), sum(map(len, truths)))


# --- detection (YOLO-style head) ---------------------------------------------------------------

LAYOUTS = ("NCA", "NAC")  # [N, 4 + C, A] (YOLOv8 export) or [N, A, 4 + C]


def _anchors_last(out: np.ndarray, layout: str) -> np.ndarray:
    """The head as [N, A, 4 + C], whatever layout it was exported in."""
    out = np.asarray(out)
    if layout not in LAYOUTS:
        raise _refuse("detection", f"layout {layout!r} is not one of {LAYOUTS}", "NCA is YOLOv8's [N, 4+C, A]")
    if out.ndim != 3 or out.shape[1 if layout == "NCA" else 2] < 5:
        raise _refuse("detection", f"expects [N, 4+C, A] or [N, A, 4+C], got {out.shape}", "set options.layout")
    return out.transpose(0, 2, 1) if layout == "NCA" else out


def nms(boxes: np.ndarray, scores: np.ndarray, iou_thresh: float, limit: int | None = None) -> np.ndarray:
    """Indices kept by greedy NMS, highest score first, stopping at `limit` kept: a broken variant can
    put thousands of anchors over the threshold, and nothing past max_det is ever reported."""
    x0, y0, x1, y1 = np.asarray(boxes, np.float64).T
    area = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    order, keep = np.argsort(-scores, kind="stable"), []
    while order.size and (limit is None or len(keep) < limit):
        i, rest = order[0], order[1:]
        keep.append(i)
        w = np.clip(np.minimum(x1[i], x1[rest]) - np.maximum(x0[i], x0[rest]), 0, None)
        inter = w * np.clip(np.minimum(y1[i], y1[rest]) - np.maximum(y0[i], y0[rest]), 0, None)
        order = rest[inter <= iou_thresh * (area[i] + area[rest] - inter)]  # IoU <= thresh, no division
    return np.array(keep, dtype=np.int64)


def decode_yolo(
    out: np.ndarray, score_thresh: float = 0.25, iou_thresh: float = 0.45, max_det: int = 300, layout: str = "NCA"
) -> list[Detections]:
    """Anchor-free YOLO post-processing: best class per anchor, score > thresh, class-aware NMS.

    Class-aware NMS shifts each class's boxes apart so one pass keeps overlapping boxes of
    different classes, as Ultralytics does."""
    result = []
    for x in _anchors_last(out, layout).astype(np.float64):
        cls = x[:, 4:]
        scores, classes = cls.max(1), cls.argmax(1)
        keep = scores > score_thresh
        xywh, scores, classes = x[keep, :4], scores[keep], classes[keep]
        boxes = np.concatenate([xywh[:, :2] - xywh[:, 2:] / 2, xywh[:, :2] + xywh[:, 2:] / 2], axis=1)
        if len(boxes):
            shift = classes[:, None] * (boxes.max() - boxes.min() + 1)
            kept = nms(boxes + shift, scores, iou_thresh, max_det)
            boxes, scores, classes = boxes[kept], scores[kept], classes[kept]
        result.append((boxes.reshape(-1, 4), scores, classes.astype(np.int64)))
    return result


def average_precision(recall: np.ndarray, precision: np.ndarray) -> float:
    """VOC all-point interpolated AP: area under the precision envelope."""
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mpre = np.concatenate([[0.0], precision, [0.0]])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    step = np.nonzero(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[step + 1] - mrec[step]) * mpre[step + 1]))


def map_at(preds: list[Detections], truths: list[np.ndarray], iou: float = 0.5) -> float:
    """mAP at one IoU over the classes present in the truth (rows [cls, x0, y0, x1, y1]).

    With no truth at all, 1.0 when nothing was predicted either, else 0.0."""
    classes = sorted({int(c) for t in truths for c in t[:, 0]})
    if not classes:
        return float(all(len(p[1]) == 0 for p in preds))
    aps = []
    for c in classes:
        gts = [t[t[:, 0] == c, 1:] for t in truths]
        found: list[tuple[float, int, int, float]] = []  # score, image, best truth, its IoU
        for i, (bx, sc, cl) in enumerate(preds):
            b, s = bx[cl == c], sc[cl == c]
            m = box_iou(b, gts[i]) if len(gts[i]) else np.zeros((len(b), 1))
            j = m.argmax(1) if len(b) else np.zeros(0, np.int64)
            found += zip(s.tolist(), [i] * len(b), j.tolist(), m[np.arange(len(b)), j].tolist())
        found.sort(key=lambda f: -f[0])
        used, tp = set(), np.zeros(len(found))
        for k, (_, i, j, best) in enumerate(found):
            if best >= iou and (i, j) not in used:  # VOC: the best-overlapping truth, or a false positive
                used.add((i, j))
                tp[k] = 1.0
        ctp, n_pos = np.cumsum(tp), sum(map(len, gts))
        aps.append(average_precision(ctp / n_pos, ctp / np.arange(1, len(found) + 1)) if found else 0.0)
    return float(np.mean(aps))


def detection(
    output: np.ndarray,
    labels: np.ndarray | None,
    reference: np.ndarray,
    score_thresh: float = 0.25,
    iou_thresh: float = 0.45,
    layout: str = "NCA",
    relevant_score: float = 0.05,
) -> dict[str, float]:
    """mAP@0.5 of the decoded detections, plus the raw head's error split into its two parts.

    The split exists because boxes (pixels) and class scores (0..1) share one tensor: a single INT8
    scale for both erases the scores while cosine and box error stay excellent. class_score_error is
    per relevant anchor (FP32's best score >= relevant_score) the largest class-score error, in score
    units; averaging over all classes instead would let 79 near-zero classes hide the one that decides."""
    preds = decode_yolo(output, score_thresh, iou_thresh, layout=layout)
    if labels is None:
        truths = [
            np.column_stack([c, b]) for b, _, c in decode_yolo(reference, score_thresh, iou_thresh, layout=layout)
        ]
    else:
        truths = _per_image(labels, len(preds), 5, "detection")
    got = _anchors_last(output, layout).astype(np.float64)
    ref = _anchors_last(reference, layout).astype(np.float64)
    relevant = ref[..., 4:].max(-1) >= relevant_score
    if relevant.any():
        class_err = float(np.abs(got[..., 4:] - ref[..., 4:]).max(-1)[relevant].mean())
        box_err = float(np.abs(got[..., :4] - ref[..., :4])[relevant].mean())
    else:
        class_err = box_err = 0.0
    return {"map50": map_at(preds, truths, 0.5), "class_score_error": class_err, "box_error": box_err}


# --- voice activity, classification --------------------------------------------------------------


def _f1(got: np.ndarray, truth: np.ndarray) -> float:
    tp, fp, fn = np.sum(got & truth), np.sum(got & ~truth), np.sum(~got & truth)
    return float(2 * tp / (2 * tp + fp + fn)) if tp + fp + fn else 1.0


def vad(
    output: np.ndarray, labels: np.ndarray | None, reference: np.ndarray, threshold: float = 0.5
) -> dict[str, float]:
    """Speech/non-speech decisions per frame: what a VAD's caller acts on, not the probability itself."""
    got = np.asarray(output).reshape(-1) >= threshold
    fp32 = np.asarray(reference).reshape(-1) >= threshold
    truth = fp32
    if labels is not None:
        truth = np.asarray(labels).reshape(-1) >= 0.5
        if truth.size != got.size:
            raise _refuse("voice-activity", f"{truth.size} frame labels for {got.size} frames", "one 0/1 per frame")
    return {"frame_f1": _f1(got, truth), "decision_agreement": float(np.mean(got == fp32))}


def classification(output: np.ndarray, labels: np.ndarray | None, reference: np.ndarray) -> dict[str, float]:
    """Top-1 against labels (else FP32's argmax) and how often the variant agrees with FP32."""
    got = np.asarray(output).reshape(len(output), -1).argmax(-1)
    fp32 = np.asarray(reference).reshape(len(reference), -1).argmax(-1)
    truth = fp32 if labels is None else np.asarray(labels).reshape(-1)
    if truth.size != got.size:
        raise _refuse("classification", f"{truth.size} labels for {got.size} samples", "one class index per sample")
    return {"top1": float(np.mean(got == truth)), "top1_agreement_with_fp32": float(np.mean(got == fp32))}


# --- SQNR of an output and of its parts -------------------------------------------------------


def sqnr_db(output: np.ndarray, reference: np.ndarray) -> float:
    """10*log10(signal power / error power); inf when identical, -inf when there is no signal."""
    ref = np.asarray(reference, np.float64)
    err = float(np.sum((np.asarray(output, np.float64) - ref) ** 2))
    sig = float(np.sum(ref**2))
    if err == 0:
        return float("inf")
    return float(10 * np.log10(sig / err)) if sig > 0 else float("-inf")


def output_parts_sqnr(
    output: np.ndarray, reference: np.ndarray, parts: Sequence[tuple[int, int, int]] | None = None
) -> list[dict[str, Any]]:
    """SQNR of the whole output and of each (axis, start, stop) slice of it.

    A concatenated head (boxes in pixels next to scores in 0..1) can look fine as a whole while one
    part is noise; the per-part figure shows which part a shared quantization scale destroyed."""
    out, ref = np.asarray(output), np.asarray(reference)
    if out.shape != ref.shape:
        raise UsageError(f"output shape {out.shape} differs from the reference's {ref.shape}")
    rows: list[dict[str, Any]] = [{"part": "whole", "sqnr_db": sqnr_db(out, ref)}]
    for axis, start, stop in parts or []:
        sl = [slice(None)] * out.ndim
        sl[axis] = slice(start, stop)
        rows.append(
            {"part": f"axis{axis}[{start}:{stop}]", "axis": axis, "start": start, "stop": stop,
             "sqnr_db": sqnr_db(out[tuple(sl)], ref[tuple(sl)])}
        )  # fmt: skip
    return rows


# --- registry ------------------------------------------------------------------------------


@dataclass(frozen=True)
class TaskMetric:
    """A task's scoring function, the value budgets are judged on, and the options a recipe may set."""

    name: str
    fn: Callable[..., dict[str, float]]
    primary: str
    higher_is_better: bool
    options: tuple[tuple[str, Any], ...] = ()  # (name, default)


# fmt: off
TASKS: dict[str, TaskMetric] = {t.name: t for t in (
    TaskMetric("text-recognition", text_recognition, "exact_match", True, (("charset", None),)),
    TaskMetric("text-detection", text_detection, "hmean", True,
               (("thresh", 0.3), ("box_thresh", 0.6), ("unclip_ratio", 1.5), ("min_size", 3), ("iou", 0.5))),
    TaskMetric("detection", detection, "map50", True,
               (("score_thresh", 0.25), ("iou_thresh", 0.45), ("layout", "NCA"), ("relevant_score", 0.05))),
    TaskMetric("voice-activity", vad, "frame_f1", True, (("threshold", 0.5),)),
    TaskMetric("classification", classification, "top1", True),
)}
# fmt: on

MetricFn = Callable[[np.ndarray, "np.ndarray | None", np.ndarray], float]
ExtrasFn = Callable[[np.ndarray, "np.ndarray | None", np.ndarray], dict[str, float]]


def _check_options(task: TaskMetric, options: dict[str, Any]) -> dict[str, Any]:
    """The options merged over the defaults; a name or type the task does not take is refused."""
    defaults = dict(task.options)
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        allowed = ", ".join(defaults) or "none"
        raise UsageError(f"task {task.name} takes no option {unknown}", field="metric.options", fix=f"use: {allowed}")
    for key, value in options.items():
        want = defaults[key]
        number = isinstance(want, int | float) and not isinstance(want, bool)
        if number and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise UsageError(f"option {key} must be a number, got {value!r}", field=f"metric.options.{key}")
        if key == "charset" and value is not None:
            if not isinstance(value, list | tuple) or not all(isinstance(c, str) for c in value):
                raise UsageError("charset must be a list of strings", field="metric.options.charset")
        if key == "layout" and value not in LAYOUTS:
            raise UsageError(f"layout {value!r} is not one of {LAYOUTS}", field="metric.options.layout")
    return {**defaults, **options}


def task_metric_fn(task: str, options: dict[str, Any] | None = None) -> tuple[MetricFn, ExtrasFn]:
    """(primary, extras) closures for exporter.metrics: the primary value budgets are judged on, and
    the task's other values (rounded) for the report. Options are checked here, once, not per call."""
    if task not in TASKS:
        raise UsageError(f"unknown task {task!r}", field="metric.task", fix=f"use one of: {', '.join(TASKS)}")
    spec = TASKS[task]
    opts = _check_options(spec, dict(options or {}))

    def primary(output: np.ndarray, labels: np.ndarray | None, reference: np.ndarray) -> float:
        return float(spec.fn(output, labels, reference, **opts)[spec.primary])

    def extras(output: np.ndarray, labels: np.ndarray | None, reference: np.ndarray) -> dict[str, float]:
        values = spec.fn(output, labels, reference, **opts)
        return {k: round(float(v), 6) for k, v in values.items() if k != spec.primary}

    return primary, extras
