"""SmoothQuant (Xiao et al. 2023) as a measured alternative, not a build step: per input channel j of
every MatMul with a constant weight, s_j = max|X_j|^alpha / max|W_j|^(1 - alpha); X is divided by s
(an explicit Mul, since MiniLM's LayerNorm outputs also feed the residual and GELU is not
scale-equivariant) and W's row j multiplied by it, so the FP32 function is unchanged while the
activation's per-channel outliers move into the weights, which are quantized per channel.
`benchmarks/quantization.py` compares it with edgex's sink split on MiniLM."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from exporter.quant.fp32_probe import probe_values


def smooth(src: Path, out: Path, feeds: list[dict], alpha: float = 0.5) -> Path:
    model = onnx.load(str(src))
    inits = {i.name: i for i in model.graph.initializer}
    groups: dict[str, list[onnx.NodeProto]] = {}  # activation -> the MatMuls reading it (Q, K, V share one)
    for n in model.graph.node:
        if n.op_type == "MatMul" and n.input[1] in inits and len(inits[n.input[1]].dims) == 2:
            groups.setdefault(n.input[0], []).append(n)
    amax: dict[str, np.ndarray] = {}
    for values in probe_values(model, sorted(groups), feeds):
        for name, v in values.items():
            a = np.abs(v).reshape(-1, v.shape[-1]).max(0)
            amax[name] = np.maximum(amax[name], a) if name in amax else a
    muls: list[tuple[onnx.NodeProto, onnx.NodeProto]] = []
    for x, matmuls in groups.items():
        weights = [numpy_helper.to_array(inits[n.input[1]]) for n in matmuls]
        wmax = np.max(np.stack([np.abs(w).max(1) for w in weights]), 0)
        s = np.clip(np.maximum(amax[x], 1e-5) ** alpha / np.maximum(wmax, 1e-5) ** (1 - alpha), 1e-4, 1e4)
        inv = numpy_helper.from_array((1.0 / s).astype(np.float32), f"{x}_smooth_inv")
        model.graph.initializer.append(inv)
        muls.append((matmuls[0], helper.make_node("Mul", [x, inv.name], [f"{x}_smoothed"], name=f"{x}_smooth")))
        for n, w in zip(matmuls, weights, strict=True):
            inits[n.input[1]].CopyFrom(numpy_helper.from_array((w * s[:, None]).astype(np.float32), n.input[1]))
            n.input[0] = f"{x}_smoothed"
    nodes = list(model.graph.node)
    for first, mul in muls:  # each Mul right before the first MatMul reading it
        nodes.insert(nodes.index(first), mul)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    onnx.save(model, str(out))
    return out
