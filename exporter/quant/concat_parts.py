"""Concatenated outputs whose parts live on different scales, found before a shared INT8 scale erases one.

A YOLOv8 head ends in Concat(boxes in pixels 0..320, class scores 0..1) along the channel axis. Static
INT8 gives the Concat output one scale (320/255 = 1.25), so every score rounds to 0 or 1.25: cosine of
the whole output stays at 0.999 while detections vanish. Given the calibration ranges of the Concat's
inputs, this reports the ones whose magnitudes differ by more than a ratio, with the slice of the graph
output each input fills, so the part can be kept in float, quantized on its own, or judged on its own
(exporter.task_metrics.output_parts_sqnr takes the same (axis, start, stop) slices).
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper

from exporter import log
from exporter.errors import internal_step
from exporter.quant.graph_edit import name_unnamed_nodes
from exporter.runtime import make_session

# Ops that only move or relabel elements: a Concat behind them still decides the output's layout.
# Q/DQ pairs too, so a quantized file's output still leads back to its Concat (edgex diagnose).
_SHAPE_ONLY = {
    "Reshape",
    "Transpose",
    "Identity",
    "Squeeze",
    "Unsqueeze",
    "Flatten",
    "QuantizeLinear",
    "DequantizeLinear",
}
_ELEMENTWISE = {"Identity", "QuantizeLinear", "DequantizeLinear"}

Shape = list[int | None]


def _shapes(model: onnx.ModelProto) -> dict[str, Shape]:
    """Every tensor's shape onnx's shape inference knows (None for symbolic or unknown dimensions)."""
    graph = onnx.shape_inference.infer_shapes(model, strict_mode=False).graph
    shapes: dict[str, Shape] = {t.name: list(t.dims) for t in graph.initializer}
    for vi in [*graph.input, *graph.value_info, *graph.output]:
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.HasField("shape"):
            dims = vi.type.tensor_type.shape.dim
            shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else None for d in dims]
    return shapes


def _attr(node: onnx.NodeProto, name: str, default: Any) -> Any:
    found = [a for a in node.attribute if a.name == name]
    return onnx.helper.get_attribute_value(found[0]) if found else default


def _follow_axis(axis: int | None, node: onnx.NodeProto, shapes: dict[str, Shape]) -> int | None:
    """Where `axis` of node's input ends up in its output; None when the op mixes it with others.

    A reshape keeps an axis's slices whole when the elements before it and its own length are unchanged."""
    src, dst = shapes.get(node.input[0]), shapes.get(node.output[0])
    if axis is None or src is None:
        return None
    if node.op_type == "Transpose":
        perm = list(_attr(node, "perm", list(range(len(src)))[::-1]))
        return perm.index(axis)
    if node.op_type in _ELEMENTWISE:
        return axis
    if dst is None or None in src[: axis + 1] or None in dst:
        return None
    before = math.prod(src[:axis])
    for k, size in enumerate(dst):
        if size == src[axis] and math.prod(dst[:k]) == before:
            return k
    return None


def find_concat_parts(
    model: onnx.ModelProto, ranges: dict[str, tuple[float, float]], ratio: float = 10.0
) -> list[dict[str, Any]]:
    """Concats feeding a graph output (directly or through shape-only ops) with mismatched input ranges.

    `ranges` maps tensor names to calibrated (min, max). An input is `small` when its magnitude
    (max |min|, |max|) times `ratio` is below the largest input's; all-zero inputs are exact on any
    scale and never flagged. Each report names the Concat, its axis, the graph output's axis it maps
    to (None when a reshape mixes it) and each input's [start, stop) along it (None if not inferable)."""
    shapes = _shapes(model)
    producers = {out: node for node in model.graph.node for out in node.output}
    found = []
    for graph_out in model.graph.output:
        path, node = [], producers.get(graph_out.name)
        while node is not None and node.op_type in _SHAPE_ONLY:
            path.append(node)
            node = producers.get(node.input[0])
        if node is None or node.op_type != "Concat":
            continue
        rank = len(shapes.get(node.output[0]) or shapes.get(node.input[0]) or [])
        axis = _attr(node, "axis", 0)
        axis = axis + rank if axis < 0 and rank else axis
        mags = {t: max(abs(ranges[t][0]), abs(ranges[t][1])) for t in node.input if t in ranges}
        if len(mags) < 2:
            continue
        big = max(mags.values())
        small = {t for t, m in mags.items() if 0 < m and m * ratio < big}
        if not small:
            continue
        out_axis: int | None = axis
        for step in reversed(path):  # path runs from the output back to the Concat
            out_axis = _follow_axis(out_axis, step, shapes)
        inputs, start = [], 0
        for t in node.input:
            shape = shapes.get(t) or []
            size = shape[axis] if axis < len(shape) else None
            stop = None if start is None or size is None else start + size
            lo, hi = ranges.get(t, (None, None))
            inputs.append({"tensor": t, "min": lo, "max": hi, "start": start, "stop": stop, "small": t in small})
            start = stop
        found.append(
            {
                "output": graph_out.name,
                "concat": node.name,
                "concat_output": node.output[0],
                "axis": axis,
                "output_axis": out_axis,
                "ratio": big / min(m for m in mags.values() if m > 0),
                "inputs": inputs,
                "between": [n.name for n in reversed(path)],  # shape-only nodes from the Concat to the output
            }
        )
    return found


def _output_concats(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    producers = {out: node for node in model.graph.node for out in node.output}
    found = []
    for graph_out in model.graph.output:
        node = producers.get(graph_out.name)
        while node is not None and node.op_type in _SHAPE_ONLY:
            node = producers.get(node.input[0])
        if node is not None and node.op_type == "Concat":
            found.append(node)
    return found


def observed_ranges(model: onnx.ModelProto, feeds: list[dict[str, np.ndarray]]) -> dict[str, tuple[float, float]]:
    """FP32 (min, max) of every input of a Concat that feeds a graph output, over the feeds.

    One probe run with those tensors exposed as outputs: the same ranges calibration will see."""
    names = sorted({t for node in _output_concats(model) for t in node.input if t})
    if not names or not feeds:
        return {}
    # Only float tensors have a quantization scale (a Concat of int64 shapes may feed an output too).
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False).graph
    types = {v.name: v.type.tensor_type.elem_type for v in [*inferred.value_info, *inferred.output, *inferred.input]}
    types.update({t.name: t.data_type for t in inferred.initializer})
    floats = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16}
    names = [n for n in names if types.get(n) in floats]
    if not names:
        return {}
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    have = {o.name for o in probe.graph.output}
    for name in names:
        if name not in have:
            probe.graph.output.append(helper.make_tensor_value_info(name, types[name], None))
    lo = dict.fromkeys(names, math.inf)
    hi = dict.fromkeys(names, -math.inf)
    with tempfile.TemporaryDirectory(prefix="edgex-concat-") as tmp:
        path = Path(tmp) / "probe.onnx"
        onnx.save(probe, str(path))
        session = make_session(path, threads=2, mode="simulated")
        for feed in feeds:
            for name, x in zip(names, session.run(names, feed), strict=True):
                x = np.asarray(x, np.float64)
                if x.size:
                    lo[name], hi[name] = min(lo[name], float(x.min())), max(hi[name], float(x.max()))
    return {n: (lo[n], hi[n]) for n in names if lo[n] <= hi[n]}


def shared_scale_plan(
    model: onnx.ModelProto, ranges: dict[str, tuple[float, float]], fallback: str, ratio: float = 10.0
) -> tuple[list[dict[str, Any]], dict[str, str], dict[str, str]]:
    """How the quantizer keeps each mismatched Concat's parts apart: (found, nodes kept float, 16-bit tensors).

    Where the target can run float (a CPU), the Concat and the shape-only ops after it stay float, so
    each part is dequantized from its own INT8 scale (class scores keep 1/255 steps). An integer-only
    NPU (fallback uint16) cannot: the Concat, its inputs and the ops after it go to 16-bit, a 256x finer
    step on the shared scale (a 0..320 box range gives 0.005-score steps instead of 1.25)."""
    if not ranges:  # no output comes from a Concat: nothing to keep apart (and no shape inference to pay for)
        return [], {}, {}
    found = find_concat_parts(model, ranges, ratio)
    floats: dict[str, str] = {}
    wide: dict[str, str] = {}
    producers = {out: node for node in model.graph.node for out in node.output}
    by_name = {n.name: n for n in model.graph.node}
    for rec in found:
        why = f"concatenates parts {rec['ratio']:.0f}x apart in range into output {rec['output']}"
        if fallback == "uint16":
            node = producers[rec["concat_output"]]
            tensors = [*node.input, node.output[0]] + [by_name[n].output[0] for n in rec["between"] if n in by_name]
            wide.update(dict.fromkeys((t for t in tensors if t), "uint16"))
            rec["kept_as"] = "uint16"
        else:
            for name in [rec["concat"], *rec["between"]]:
                floats[name] = why
            rec["kept_as"] = "float"
    return found, floats, wide


def keep_parts_apart(
    prepped: Path, feeds: list[dict[str, np.ndarray]], fallback: str, label: str
) -> tuple[list[dict[str, Any]], dict[str, str], dict[str, str]]:
    """shared_scale_plan on the file about to be quantized, naming its nodes first when a Concat is found
    (exclusions address nodes by name); the file is rewritten only then, and probed once (naming nodes
    changes no tensor, so the ranges stay). Says what it keeps apart."""
    with internal_step("static INT8: ranges of concatenated outputs", prepped):
        model = onnx.load(str(prepped))
        fallback = "uint16" if fallback == "uint16" else "float"
        ranges = observed_ranges(model, feeds)
        found, floats, wide = shared_scale_plan(model, ranges, fallback)
        if found and name_unnamed_nodes(model):
            onnx.save(model, str(prepped))
            found, floats, wide = shared_scale_plan(model, ranges, fallback)
    for rec in found:
        small = [i["tensor"] for i in rec["inputs"] if i["small"]]
        log.info(
            f"[{label}] output {rec['output']} concatenates ranges {rec['ratio']:.0f}x apart ({', '.join(small)} "
            f"small): its Concat {'stays float' if rec['kept_as'] == 'float' else 'goes to 16-bit'}"
        )
    return found, floats, wide
