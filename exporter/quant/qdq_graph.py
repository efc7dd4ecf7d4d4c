"""Edits and measurements on a QDQ graph, at the level of one quantized activation tensor.

The accuracy search works tensor by tensor because that is where static quantization loses
accuracy: one activation with outliers (a transformer's feed-forward output) costs more than
every weight together. Keeping a tensor in float removes its Q->DQ pair; the consumer still
reads int8 weights, and a matrix product whose *output* pair is removed keeps its integer
kernel with a float output (QGemm / MatMulIntegerToFloat on onnxruntime CPU).
"""

from __future__ import annotations

import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
from onnx import helper, numpy_helper

from exporter.quant.graph_edit import GraphEdit
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


_QDQ_OPS = {"QuantizeLinear", "DequantizeLinear"}
# Ops that only move or reshape data: reported separately, they cost nothing in float.
_LAYOUT_OPS = {
    "Reshape",
    "Flatten",
    "Transpose",
    "Squeeze",
    "Unsqueeze",
    "Shape",
    "Gather",
    "Concat",
    "Identity",
    "Constant",
    "Slice",
    "Split",
    "Cast",
}


def float_compute_nodes(model: onnx.ModelProto) -> tuple[dict[str, int], dict[str, int]]:
    """Split compute nodes into quantized (fed by DequantizeLinear) and kept in float."""
    producers = {out: node.op_type for node in model.graph.node for out in node.output}
    quantized: Counter[str] = Counter()
    floating: Counter[str] = Counter()
    for node in model.graph.node:
        if node.op_type in _QDQ_OPS or node.op_type in _LAYOUT_OPS:
            continue
        if node.op_type.startswith("QLinear") or node.op_type in ("ConvInteger", "MatMulInteger"):
            quantized[node.op_type] += 1
        elif node.input and producers.get(node.input[0]) == "DequantizeLinear":
            quantized[node.op_type] += 1
        else:
            floating[node.op_type] += 1
    return dict(sorted(quantized.items())), dict(sorted(floating.items()))


def keep_float(model: onnx.ModelProto, tensors: set[str]) -> onnx.ModelProto:
    """A copy with the Q->DQ pairs on `tensors` removed: their consumers read the float tensor."""
    edit = GraphEdit(model)
    graph = edit.graph
    # Chosen on the graph as given: an edit must not make another pair's input one of `tensors`.
    chosen = [
        n for n in graph if n.op_type == "QuantizeLinear" and n.inputs[0] is not None and n.inputs[0].name in tensors
    ]
    for q in chosen:
        quantized, source = q.outputs[0], q.inputs[0]
        readers = quantized.consumers()
        if quantized.is_graph_output() or any(r.op_type != "DequantizeLinear" for r in readers):
            continue  # the quantized tensor itself is used: leave the pair
        for dq in readers:
            restored = dq.outputs[0]
            name, outward = restored.name, restored.is_graph_output()
            restored.replace_all_uses_with(source, replace_graph_outputs=True)
            if outward:  # a graph output read back from Q/DQ: the float tensor takes its name
                source.name = name
        graph.remove([q, *readers], safe=True)
    _float_weights_where_inputs_float(edit)
    edit.drop_unused_initializers()
    return edit.result()


_WEIGHTED = {"MatMul", "Gemm", "Conv", "ConvTranspose"}


def _float_weights_where_inputs_float(edit: GraphEdit) -> None:
    """A product whose activation input is now float gets float weights back (dequantized offline).

    Otherwise onnxruntime runs DequantizeLinear(weight) -> MatMul as an 8-bit MatMulNBits with
    float activations, which was measured 2-4x slower here than the plain FP32 product.
    """
    replaced = []
    for node in edit.graph:
        if node.op_type not in _WEIGHTED or not node.inputs:
            continue
        activation = node.inputs[0].producer() if node.inputs[0] is not None else None
        if activation is not None and activation.op_type == "DequantizeLinear":
            continue  # still an integer product
        for k, value in enumerate(node.inputs[1:], start=1):
            dq = value.producer() if value is not None else None
            if dq is None or dq.op_type != "DequantizeLinear" or not dq.inputs[0].is_initializer():
                continue
            node.replace_input_with(k, edit.add_initializer(f"{dq.inputs[0].name}_float", _dequantize(dq)))
            replaced.append(dq)
    unread = {dq for dq in replaced if not dq.outputs[0].uses() and not dq.outputs[0].is_graph_output()}
    edit.graph.remove(unread, safe=True)


def _dequantize(dq: ir.Node) -> np.ndarray:
    q, scale = (dq.inputs[i].const_value.numpy().astype(np.float32) for i in (0, 1))
    zp = dq.inputs[2].const_value.numpy().astype(np.float32) if len(dq.inputs) > 2 and dq.inputs[2] is not None else 0.0
    axis = dq.attributes.get_int("axis", 1)
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
