"""Edits and measurements on a QDQ graph, at the level of one quantized activation tensor.

The accuracy search works tensor by tensor because that is where static quantization loses
accuracy: one activation with outliers (a transformer's feed-forward output) costs more than
every weight together. Keeping a tensor in float removes its Q->DQ pair; the consumer still
reads int8 weights, and a matrix product whose *output* pair is removed keeps its integer
kernel with a float output (QGemm / MatMulIntegerToFloat on onnxruntime CPU).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from exporter.runtime import make_session


@dataclass(frozen=True)
class ActivationPair:
    """A float tensor quantized by QuantizeLinear and read back by DequantizeLinear."""

    tensor: str
    scale: np.ndarray
    zero_point: np.ndarray
    producer: str  # op type that produces the float tensor ("input" for a graph input)


def activation_pairs(model: onnx.ModelProto) -> list[ActivationPair]:
    inits = {i.name: i for i in model.graph.initializer}
    producers = {o: n.op_type for n in model.graph.node for o in n.output}
    out = []
    for n in model.graph.node:
        if n.op_type != "QuantizeLinear" or n.input[0] in inits or len(n.input) < 2 or n.input[1] not in inits:
            continue
        zp = numpy_helper.to_array(inits[n.input[2]]) if len(n.input) > 2 and n.input[2] in inits else np.zeros(1)
        scale = numpy_helper.to_array(inits[n.input[1]])
        out.append(ActivationPair(n.input[0], scale, zp, producers.get(n.input[0], "input")))
    return out


def keep_float(model: onnx.ModelProto, tensors: set[str]) -> onnx.ModelProto:
    """A copy with the Q->DQ pairs on `tensors` removed: their consumers read the float tensor."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in m.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    graph_outputs = {o.name for o in m.graph.output}
    drop: set[str] = set()
    rename: dict[str, str] = {}
    outward: dict[str, str] = {}  # float tensor -> graph output name it now carries
    for n in m.graph.node:
        if n.op_type != "QuantizeLinear" or n.input[0] not in tensors:
            continue
        readers = consumers.get(n.output[0], [])
        if n.output[0] in graph_outputs or any(r.op_type != "DequantizeLinear" for r in readers):
            continue  # the quantized tensor itself is used: leave the pair
        for dq in readers:
            if dq.output[0] in graph_outputs:
                outward[n.input[0]] = dq.output[0]
            else:
                rename[dq.output[0]] = n.input[0]
            drop.add(dq.output[0])
        drop.add(n.output[0])
    kept = [n for n in m.graph.node if n.output[0] not in drop]
    for src, dst in outward.items():  # a graph output read back from Q/DQ: the float tensor takes its name
        for k, name in list(rename.items()):
            if name == src:
                rename[k] = dst
        rename[src] = dst
    for n in kept:
        for k, name in enumerate(n.input):
            if name in rename:
                n.input[k] = rename[name]
        for k, name in enumerate(n.output):
            if name in outward:
                n.output[k] = outward[name]
    kept = _float_weights_where_inputs_float(m, kept)
    del m.graph.node[:]
    m.graph.node.extend(kept)
    used = {i for n in m.graph.node for i in n.input}
    inits = [i for i in m.graph.initializer if i.name in used]
    del m.graph.initializer[:]
    m.graph.initializer.extend(inits)
    return m


_WEIGHTED = {"MatMul", "Gemm", "Conv", "ConvTranspose"}


def _float_weights_where_inputs_float(m: onnx.ModelProto, nodes: list[onnx.NodeProto]) -> list[onnx.NodeProto]:
    """A product whose activation input is now float gets float weights back (dequantized offline).

    Otherwise onnxruntime runs DequantizeLinear(weight) -> MatMul as an 8-bit MatMulNBits with
    float activations, which was measured 2-4x slower here than the plain FP32 product.
    """
    inits = {i.name: i for i in m.graph.initializer}
    producer = {o: n for n in nodes for o in n.output}

    def weight_dq(name: str) -> onnx.NodeProto | None:
        p = producer.get(name)
        return p if p is not None and p.op_type == "DequantizeLinear" and p.input[0] in inits else None

    drop: set[str] = set()
    for n in nodes:
        if n.op_type not in _WEIGHTED or not n.input:
            continue
        activation = producer.get(n.input[0])
        if activation is not None and activation.op_type == "DequantizeLinear":
            continue  # still an integer product
        for k, name in enumerate(n.input[1:], start=1):
            dq = weight_dq(name)
            if dq is None:
                continue
            values = _dequantize(dq, inits)
            restored = numpy_helper.from_array(values, f"{dq.input[0]}_float")
            if restored.name not in inits:
                m.graph.initializer.append(restored)
                inits[restored.name] = restored
            n.input[k] = restored.name
            drop.add(dq.output[0])
    still_read = {i for n in nodes for i in n.input}
    return [n for n in nodes if not (n.output[0] in drop and n.output[0] not in still_read)]


def _dequantize(dq: onnx.NodeProto, inits: dict) -> np.ndarray:
    q = numpy_helper.to_array(inits[dq.input[0]]).astype(np.float32)
    scale = numpy_helper.to_array(inits[dq.input[1]]).astype(np.float32)
    zp = numpy_helper.to_array(inits[dq.input[2]]).astype(np.float32) if len(dq.input) > 2 and dq.input[2] else 0.0
    axis = next((a.i for a in dq.attribute if a.name == "axis"), 1)
    if np.ndim(scale) == 1 and q.ndim > 1:
        shape = [1] * q.ndim
        shape[axis] = -1
        scale = scale.reshape(shape)
        zp = np.reshape(zp, shape) if np.ndim(zp) == 1 else zp
    return ((q - zp) * scale).astype(np.float32)


def sqnr_ranking(
    fp32: onnx.ModelProto, pairs: list[ActivationPair], feeds: list[dict[str, np.ndarray]]
) -> list[tuple[str, float]]:
    """Signal-to-quantization-noise ratio (dB) of each pair's scale on the FP32 activations, worst first.

    One FP32 pass with every quantized tensor exposed as an output: cheap enough to rank a whole
    transformer, where trying each tensor with a full evaluation would take minutes.
    """
    probe = onnx.ModelProto()
    probe.CopyFrom(fp32)
    have = {o.name for o in probe.graph.output}
    exists = have | {o for n in probe.graph.node for o in n.output} | {i.name for i in probe.graph.input}
    # The quantizer renames a quantized graph output X to X_QuantizeLinear_Input; read X in FP32.
    source = {p.tensor: p.tensor.removesuffix("_QuantizeLinear_Input") for p in pairs}
    pairs = [p for p in pairs if source[p.tensor] in exists]
    names = [p.tensor for p in pairs]
    for name in {source[n] for n in names} - have:
        probe.graph.output.append(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    with tempfile.TemporaryDirectory(prefix="edgex-sqnr-") as tmp:
        path = Path(tmp) / "probe.onnx"
        onnx.save(probe, str(path))
        session = make_session(path, threads=2, mode="simulated")
        noise = dict.fromkeys(names, 0.0)
        signal = dict.fromkeys(names, 0.0)
        by_name = {p.tensor: p for p in pairs}
        for feed in feeds:
            for name, x in zip(names, session.run([source[n] for n in names], feed), strict=True):
                p = by_name[name]
                x = np.asarray(x, dtype=np.float32)
                qmin, qmax = _range(p.zero_point.dtype)
                zp = p.zero_point.astype(np.float32)
                scale = p.scale.astype(np.float32)
                if scale.ndim:  # per-axis activation scales are rare; use the widest
                    scale, zp = scale.max(), zp.reshape(-1)[0]
                d = (np.clip(np.round(x / scale) + zp, qmin, qmax) - zp) * scale
                noise[name] += float(((d - x) ** 2).sum())
                signal[name] += float((x**2).sum())
    ranked = [(n, 10 * float(np.log10(max(signal[n], 1e-30) / max(noise[n], 1e-30)))) for n in names]
    return sorted(ranked, key=lambda t: t[1])


def _range(dtype: np.dtype) -> tuple[int, int]:
    info = np.iinfo(dtype) if np.issubdtype(dtype, np.integer) else np.iinfo(np.uint8)
    return int(info.min), int(info.max)
