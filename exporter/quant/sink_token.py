"""Massive activations: the first position's rows kept apart before one INT8 scale erases the rest.

Transformer encoders concentrate a few huge activations in one position, the attention sink (Sun et
al. 2024, "Massive activations in large language models"; Bondarenko et al. 2021 for BERT). On
all-MiniLM-L6-v2 the FFN output of layer 0 reaches 195 at position 0 ([CLS]) while the other
positions stay near 4; a per-tensor activation scale sized for 195 leaves them a handful of INT8
levels, so every MatMul in INT8 gave cosine 0.93 and the accuracy search kept 15 tensors in float
(1.67x FP32 instead of 2.30x). SmoothQuant (per-channel scales migrated into the weights) bought
nothing there (0.931 -> 0.936): the outlier is a position, not a channel. So each MatMul with a
constant weight whose input or output at position 0 exceeds RATIO x the largest value at every
other position runs twice, on row 0 and on rows 1.. (Slice, MatMul, MatMul, Concat; one weight),
and calibration gives each part its own scale. The FP32 function is unchanged (parity checked);
the Slice/Concat copies, the extra matrix-vector product and their Q/DQ cost time: MiniLM with
every MatMul in INT8 ran 8% slower split than unsplit. What it buys is the search's result
(`benchmarks/QUANTIZATION.md`, 1 thread, side by side): 3 tensors kept in float instead of 15,
cosine 0.9920 on 256 held-out sentences at 2.12x FP32, against 0.9906 at 1.64x. Applied only where
onnxruntime's CPU kernels run the file (the measured case; an NPU provider's partitioning of the
extra Slice/Concat was not measured) and never to chunked models with carried state, whose
position 0 is each chunk's first frame, not a sink. Not applied for integer-only NPUs
(QNN), where every op type is quantized and the search ends in A16W8: there the split made MiniLM
worse (all 8-bit: drop 0.206 vs 0.175; A16W8: 0.0104 vs 0.0007, over the 0.01 budget).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from exporter.quant.fp32_probe import fp32_parity, probe_values

RATIO = 2.0  # position 0 at least this many times the rest: measured 2.0 -> 0.9777, 4.0 -> 0.9731 (all INT8)
TOLERANCE = 1e-4  # relative: splitting rows changes only the order MLAS sums in, not the values
_BOUNDS = {"sink_start": 0, "sink_stop": 1, "rest_start": 1, "rest_stop": 2**62, "sink_axis": 1}


def split_sink_rows(
    model: onnx.ModelProto, feeds: list[dict[str, np.ndarray]], ratio: float = RATIO
) -> tuple[onnx.ModelProto, list[dict]]:
    """(the model with position 0 split off where it dwarfs the rest, one record or none)."""
    weights = {i.name for i in model.graph.initializer if len(i.dims) == 2}
    matmuls = [n for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in weights]
    if not matmuls or not feeds:
        return model, []
    names = sorted({t for n in matmuls for t in (n.input[0], n.output[0])})
    first: dict[str, float] = dict.fromkeys(names, 0.0)
    rest: dict[str, float] = dict.fromkeys(names, 0.0)
    for values in probe_values(model, names, feeds):
        for t, v in values.items():
            if v.ndim != 3 or v.shape[1] < 2:  # [batch, positions, features] only
                first[t] = -1.0
                continue
            first[t] = max(first[t], float(np.abs(v[:, 0]).max())) if first[t] >= 0 else -1.0
            rest[t] = max(rest[t], float(np.abs(v[:, 1:]).max()))

    def dwarfs(t: str) -> float:
        return first[t] / max(rest[t], 1e-12) if first[t] >= 0 else 0.0

    chosen = {n.output[0]: max(dwarfs(n.input[0]), dwarfs(n.output[0])) for n in matmuls}
    chosen = {k: v for k, v in chosen.items() if v > ratio}
    if not chosen:
        return model, []
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    taken = {t for n in graph.node for t in (*n.input, *n.output, n.name)} | {i.name for i in graph.initializer}
    taken |= {v.name for v in (*graph.input, *graph.output, *graph.value_info)}
    bounds = {k: _fresh(k, taken) for k in _BOUNDS}
    out.graph.initializer.extend(
        numpy_helper.from_array(np.array([_BOUNDS[k]], np.int64), v) for k, v in bounds.items()
    )
    nodes: list[onnx.NodeProto] = []
    for node in out.graph.node:
        if node.op_type != "MatMul" or node.output[0] not in chosen:
            nodes.append(node)
            continue
        x, w, y = node.input[0], node.input[1], node.output[0]
        base = node.name or y
        sink_in, rest_in = _fresh(f"{y}_sink_in", taken), _fresh(f"{y}_rest_in", taken)
        sink_out, rest_out = _fresh(f"{y}_sink", taken), _fresh(f"{y}_rest", taken)
        axis = bounds["sink_axis"]
        nodes += [
            helper.make_node("Slice", [x, bounds["sink_start"], bounds["sink_stop"], axis], [sink_in], name=_fresh(f"{base}_sink_slice", taken)),
            helper.make_node("Slice", [x, bounds["rest_start"], bounds["rest_stop"], axis], [rest_in], name=_fresh(f"{base}_rest_slice", taken)),
            helper.make_node("MatMul", [sink_in, w], [sink_out], name=_fresh(f"{base}_sink", taken)),
            helper.make_node("MatMul", [rest_in, w], [rest_out], name=_fresh(f"{base}_rest", taken)),
            helper.make_node("Concat", [sink_out, rest_out], [y], name=_fresh(f"{base}_sink_concat", taken), axis=1),
        ]  # fmt: skip
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    worst = fp32_parity(model, out, feeds[:4])
    if not worst <= TOLERANCE:  # the split is an optimisation: without it INT8 is searched as before
        return model, [{"kind": "sink-token-split", "applied": False, "matmuls": len(chosen), "why":
                        f"not applied: the split graph's FP32 outputs differed by {worst:.2g} (relative)"}]  # fmt: skip
    record = {
        "kind": "sink-token-split",
        "applied": True,
        "matmuls": len(chosen),
        "of": len(matmuls),
        "largest_ratio": round(max(chosen.values()), 1),
        "max_relative_diff": float(f"{worst:.2g}"),
        "why": f"position 0 is over {ratio:g}x every other position there: own INT8 scale per part",
    }
    return out, [record]


def _fresh(name: str, taken: set[str]) -> str:
    """NAME, suffixed until no tensor of the graph has it (then reserved)."""
    k, candidate = 0, name
    while candidate in taken:
        k += 1
        candidate = f"{name}_{k}"
    taken.add(candidate)
    return candidate
