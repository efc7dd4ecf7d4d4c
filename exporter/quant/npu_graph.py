"""FP32 graph rewrites an integer-only NPU (the QNN HTP) needs before static quantization.

Two patterns in exported transformers defeat an NPU that runs integers only:

* An additive attention mask built from float32's minimum (-3.4e38, or -inf): once quantized,
  that one value sets the scale of the mask and of every attention-score tensor it is added
  to, so the scores collapse onto a few levels (MiniLM: cosine 0.45 against FP32, even with
  16-bit activations). Softmax only needs the masked logits far enough below the others that
  exp() of their difference is negligible, so the constant is clamped to a bounded value
  derived from the calibration range of the scores it is added to.
* GELU exported as x * 0.5 * (1 + Erf(x / sqrt 2)): the HTP has no Erf, so those nodes would
  need the CPU. ONNX `Gelu` (opset 20, approximate="none") computes the same function and the
  HTP runs it quantized; the model's opset is raised to 20 with onnx's version converter.

Each rewrite is returned as a record, and the rewritten FP32 model must match the original on
the given feeds (relative difference of every output within `tolerance`): a rewrite that
changes the model's answers is an error here, never a silent change.
"""

from __future__ import annotations

import math
from collections import deque

import numpy as np
import onnx
from onnx import helper, numpy_helper
from onnx.version_converter import convert_version

from exporter.errors import InternalError
from exporter.quant.fp32_probe import fp32_parity, probe_values

HUGE = 1e30  # float constants at least this large (float32 min/max, inf) are mask fills, not data
MARGIN = 30.0  # masked logits end this far below every kept one: exp(-30) ~ 1e-13 of a kept weight
GELU_OPSET = 20  # ONNX Gelu exists from opset 20
TOLERANCE = 1e-5
# Operators a mask value may pass through on its way to the Softmax it masks.
_MASK_PATH = {
    "Where",
    "Add",
    "Sub",
    "Mul",
    "Cast",
    "Expand",
    "Reshape",
    "Unsqueeze",
    "Squeeze",
    "Transpose",
    "Identity",
    "Concat",
    "Slice",
    "Tile",
    "Min",
    "Max",
}


def prepare_for_integer_npu(
    model: onnx.ModelProto, feeds: list[dict[str, np.ndarray]], *, tolerance: float = TOLERANCE
) -> tuple[onnx.ModelProto, list[dict]]:
    """The model with NPU-hostile patterns rewritten, and one record per rewrite plus the parity check.

    `feeds` (calibration inputs) size the mask clamp and prove the FP32 parity. The input model
    is not modified. With nothing to rewrite the same model comes back with no records.
    """
    if not feeds:
        raise InternalError("the integer-NPU graph rewrites need calibration feeds", step="npu-graph-rewrite")
    out = onnx.ModelProto()
    out.CopyFrom(model)
    records: list[dict] = []
    if _gelu_matches(list(out.graph.node), out.graph) and _opset(out) < GELU_OPSET:
        before = _opset(out)
        out = convert_version(out, GELU_OPSET)
        records.append({"kind": "opset", "before": before, "after": GELU_OPSET, "why": "ONNX Gelu needs opset 20"})
    records += _fuse_erf_gelu(out)
    masks = _mask_fills(out)
    if masks:
        records += _clamp_masks(out, masks, feeds, model)
    if not records:
        return model, []
    diff = fp32_parity(model, out, feeds)
    check = {"kind": "fp32-parity", "feeds": len(feeds), "max_relative_diff": diff, "tolerance": tolerance}
    if not diff <= tolerance:
        raise InternalError(
            f"the integer-NPU graph rewrites changed the FP32 model's outputs by {diff:.3g} (relative), "
            f"more than {tolerance:g}",
            step="npu-graph-rewrite",
            details=repr(records),
        )
    return out, records + [check]


# --- Erf GELU -> Gelu ---------------------------------------------------------------------------


def _fuse_erf_gelu(model: onnx.ModelProto) -> list[dict]:
    """Replace every x * 0.5 * (1 + Erf(x / sqrt 2)) (any order of the two products) by Gelu(x), in place."""
    graph = model.graph
    nodes = list(graph.node)
    index = {id(n): i for i, n in enumerate(nodes)}  # the same Python objects _gelu_matches sees
    records, drop, first = [], set(), {}
    for erf, (x, result, matched) in _gelu_matches(nodes, graph):
        name = f"{erf.name or result}_Gelu"
        where = [index[id(n)] for n in matched]
        drop.update(where)
        first[min(where)] = helper.make_node("Gelu", [x], [result], name=name, approximate="none")
        records.append(
            {
                "kind": "erf-gelu",
                "replaced": [n.name for n in matched],
                "with": name,
                "why": "the HTP has no Erf; ONNX Gelu (exact) computes x*0.5*(1+erf(x/sqrt2)) and runs there",
            }
        )
    if drop:
        kept = []
        for i, node in enumerate(nodes):
            if i in first:
                kept.append(first[i])
            if i not in drop:
                kept.append(node)
        del graph.node[:]
        graph.node.extend(kept)
        _drop_unused_constants(graph)
    return records


def _match_gelu(erf, producer, consumers, consts, outputs) -> tuple[str, str, list] | None:
    """(x, GELU output, the nodes computing it) when `erf` is the core of an exact-GELU subgraph."""
    div = producer.get(erf.input[0])
    if div is None or div.op_type not in ("Div", "Mul") or _only_consumer(div.output[0], consumers, outputs) is None:
        return None
    want = math.sqrt(2.0) if div.op_type == "Div" else 1 / math.sqrt(2.0)
    if not _is_const(consts, div.input[1], want):
        return None
    x = div.input[0]
    add = _only_consumer(erf.output[0], consumers, outputs)
    if add is None or add.op_type != "Add" or not _is_const(consts, _other(add, erf.output[0]), 1.0):
        return None
    m1 = _only_consumer(add.output[0], consumers, outputs)
    if m1 is None or m1.op_type != "Mul":
        return None
    other = _other(m1, add.output[0])
    if other == x or _is_const(consts, other, 0.5):  # (x * (1 + erf)) * 0.5  or  x * ((1 + erf) * 0.5)
        m2 = _only_consumer(m1.output[0], consumers, outputs)
        rest = _other(m2, m1.output[0]) if m2 is not None and m2.op_type == "Mul" else None
        if rest is None or not (rest == x if other != x else _is_const(consts, rest, 0.5)):
            return None
        return x, m2.output[0], [div, erf, add, m1, m2]
    half = producer.get(other)  # (x * 0.5) * (1 + erf)
    if half is None or half.op_type != "Mul" or x not in half.input or not _is_const(consts, _other(half, x), 0.5):
        return None
    if _only_consumer(half.output[0], consumers, outputs) is None:
        return None
    return x, m1.output[0], [half, div, erf, add, m1]


def _gelu_matches(nodes: list[onnx.NodeProto], graph: onnx.GraphProto) -> list[tuple[onnx.NodeProto, tuple]]:
    consts = _constants(graph)
    producer = {o: n for n in nodes for o in n.output}
    consumers = _consumers(nodes)
    outputs = {o.name for o in graph.output}
    found = [(erf, _match_gelu(erf, producer, consumers, consts, outputs)) for erf in nodes if erf.op_type == "Erf"]
    return [(erf, m) for erf, m in found if m is not None]


def _other(node: onnx.NodeProto, name: str) -> str:
    rest = [i for i in node.input if i != name]
    return rest[0] if len(rest) == 1 else ""


def _only_consumer(name: str, consumers: dict, outputs: set[str]) -> onnx.NodeProto | None:
    users = consumers.get(name, [])
    return users[0] if len(users) == 1 and name not in outputs else None


# --- additive masks ---------------------------------------------------------------------------


def _mask_fills(model: onnx.ModelProto) -> list[tuple[str, float, list[str], list[tuple[str, str]]]]:
    """(tensor, value, Softmax nodes, [(Add node, score tensor)]) for each huge constant that only masks Softmax."""
    graph = model.graph
    consts = _constants(graph)
    consumers = _consumers(graph.node)
    outputs = {o.name for o in graph.output}
    found = []
    for name, value in consts.items():
        if value.dtype.kind != "f" or value.size == 0 or not np.all(np.abs(value) >= HUGE):
            continue
        reached = _trace_to_softmax(name, consumers, outputs)
        if reached is not None:
            softmaxes, adds = reached
            found.append((name, float(value.reshape(-1)[0]), softmaxes, adds))
    for node in graph.node:  # ConstantOfShape(value=-inf) fills
        if node.op_type == "ConstantOfShape" and node.attribute:
            value = numpy_helper.to_array(node.attribute[0].t)
            if value.dtype.kind == "f" and np.all(np.abs(value) >= HUGE):
                reached = _trace_to_softmax(node.output[0], consumers, outputs)
                if reached is not None:
                    found.append((node.output[0], float(value.reshape(-1)[0]), *reached))
    return found


def _trace_to_softmax(start: str, consumers: dict, outputs: set[str]) -> tuple[list[str], list[tuple[str, str]]] | None:
    """Softmax nodes and score Adds `start` reaches, or None if it can reach anything but a Softmax."""
    tainted, queue, softmaxes, adds = {start}, deque([start]), [], []
    while queue:
        name = queue.popleft()
        if name in outputs:
            return None
        for node in consumers.get(name, []):
            if node.op_type == "Softmax":
                softmaxes.append(node.name)
                continue
            if node.op_type not in _MASK_PATH:
                return None
            if node.op_type == "Add":
                adds.append(node)
            for out in node.output:
                if out not in tainted:
                    tainted.add(out)
                    queue.append(out)
    scores = [(n.name, i) for n in adds for i in n.input if i not in tainted]
    return (sorted(set(softmaxes)), scores) if softmaxes and scores else None


def _clamp_masks(out, masks, feeds, original) -> list[dict]:
    """Set each mask fill to -(widest score span + MARGIN), sized on the FP32 scores the mask is added to."""
    scores = sorted({s for *_, adds in masks for _, s in adds})
    ranges = _ranges(original, scores, feeds)
    records = []
    for tensor, value, softmaxes, adds in masks:
        span = max(ranges[s][1] - ranges[s][0] for _, s in adds)
        bound = -float(math.ceil(span + MARGIN)) if value < 0 else float(math.ceil(span + MARGIN))
        _set_constant(out.graph, tensor, bound)
        records.append(
            {
                "kind": "clamp-mask-fill",
                "tensor": tensor,
                "before": value,
                "after": bound,
                "softmax": softmaxes,
                "score_span": round(span, 4),
                "why": "a float-min mask fill sets the quantization scale of every score it is added to; "
                f"{bound:g} leaves masked logits {MARGIN:g} below the lowest calibrated score",
            }
        )
    return records


def _ranges(model: onnx.ModelProto, names: list[str], feeds: list[dict]) -> dict[str, tuple[float, float]]:
    lo = {n: math.inf for n in names}
    hi = {n: -math.inf for n in names}
    for values in probe_values(model, names, feeds):
        for n, v in values.items():
            lo[n], hi[n] = min(lo[n], float(v.min())), max(hi[n], float(v.max()))
    return {n: (lo[n], hi[n]) for n in names}


def _set_constant(graph: onnx.GraphProto, name: str, value: float) -> None:
    for init in graph.initializer:
        if init.name == name:
            old = numpy_helper.to_array(init)
            init.CopyFrom(numpy_helper.from_array(np.full_like(old, value), name))
            return
    for node in graph.node:
        if name in node.output and node.op_type in ("Constant", "ConstantOfShape"):
            attr = node.attribute[0]
            old = numpy_helper.to_array(attr.t)
            attr.t.CopyFrom(numpy_helper.from_array(np.full_like(old, value), attr.t.name))
            return
    raise InternalError(f"mask fill '{name}' vanished from the graph", step="npu-graph-rewrite")


# --- shared helpers ---------------------------------------------------------------------------


def _constants(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    out = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            out[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return out


def _is_const(consts: dict[str, np.ndarray], name: str, want: float) -> bool:
    value = consts.get(name)
    return value is not None and value.size == 1 and abs(float(value.reshape(-1)[0]) - want) <= 1e-4 * abs(want)


def _consumers(nodes) -> dict[str, list[onnx.NodeProto]]:
    out: dict[str, list[onnx.NodeProto]] = {}
    for node in nodes:
        for name in dict.fromkeys(node.input):
            out.setdefault(name, []).append(node)
    return out


def _drop_unused_constants(graph: onnx.GraphProto) -> None:
    used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    kept = [n for n in graph.node if n.op_type != "Constant" or n.output[0] in used]
    if len(kept) != len(graph.node):
        del graph.node[:]
        graph.node.extend(kept)
    inits = [i for i in graph.initializer if i.name in used]
    if len(inits) != len(graph.initializer):
        del graph.initializer[:]
        graph.initializer.extend(inits)


def _opset(model: onnx.ModelProto) -> int:
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
