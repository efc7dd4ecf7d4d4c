"""INT4 on the source's own grid: each MatMul whose weight a GGUF block format describes exactly
becomes onnxruntime's MatMulNBits carrying the publisher's codes and scales, nothing re-rounded.

MatMulNBits has integer zero points only in its fast path (float zero points, as HQQ writes them,
ran 7x slower than FP32 on SmolLM2), and Q4_1's per-block min is not a whole number of steps. So a
Q4_1 weight w = d*q + m is written as d*(q - 8) + (m + 8d): the first term is MatMulNBits with its
default zero point, the second a small float product of the input's per-block sums with the
[K/32, N] table of (m + 8d) - 1/32 of the weight's size, exact. Q4_0 (d*(q - 8)) and Q8_0 (d*q)
map onto MatMulNBits with no such term.

A weight is matched to its GGUF tensor by the bytes of the dequantized values, not by name, so
whatever exporter wrote the ONNX file (and whatever it called the initializers) the match is
exact or absent; a tied embedding read through Transpose is matched too.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper

from exporter.llm.gguf_grid import BLOCK, GridWeight


@dataclass
class GridRewrite:
    """What the rewrite did, for the record and the report."""

    replaced: list[tuple[str, str, str]] = field(default_factory=list)  # (node, GGUF tensor, kind)
    kept_float: list[str] = field(default_factory=list)  # MatMul nodes with a constant weight no grid matched

    def as_record(self) -> dict:
        kinds: dict[str, int] = {}
        for _, _, kind in self.replaced:
            kinds[kind] = kinds.get(kind, 0) + 1
        return {"on_source_grid": len(self.replaced), "kinds": kinds, "kept_float": list(self.kept_float)}


def _digest(values: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(values, dtype=np.float32).tobytes()).hexdigest()


def grid_index(grid: dict[tuple[int, int], list[GridWeight]]) -> dict[str, GridWeight]:
    """Each grid weight by the digest of its dequantized [N, K] values."""
    return {_digest(weight.dequantized()): weight for weights in grid.values() for weight in weights}


def _pack4(codes: np.ndarray) -> np.ndarray:
    """[N, K] codes 0..15 -> MatMulNBits' [N, K/32, 16] bytes: element 2i in the low nibble."""
    n, k = codes.shape
    pairs = codes.reshape(n, k // BLOCK, BLOCK // 2, 2)
    return (pairs[..., 0] | (pairs[..., 1] << 4)).astype(np.uint8)


def _packed(weight: GridWeight) -> np.ndarray:
    n, k = weight.codes.shape
    if weight.bits == 8:
        return np.ascontiguousarray(weight.codes.reshape(n, k // BLOCK, BLOCK))
    return _pack4(weight.codes)


class _Writer:
    """Collects the replacement nodes and initializers, one block-sum per distinct input."""

    def __init__(self, accuracy_level: int, nodes: list[onnx.NodeProto]):
        self.accuracy_level = accuracy_level
        self.nodes = nodes  # the graph's new node list: replacements go where the MatMul was
        self.inits: list[onnx.TensorProto] = []
        self.block_sums: dict[str, str] = {}

    def const(self, values: np.ndarray, name: str) -> str:
        self.inits.append(numpy_helper.from_array(values, name))
        return name

    def block_sum(self, x: str, k: int, prefix: str) -> str:
        """sum of x over each block of 32 along its last axis: [..., K] -> [..., K/32], any rank."""
        if x not in self.block_sums:
            lead = prefix + "_lead_shape"
            self.nodes += [
                helper.make_node("Shape", [x], [prefix + "_shape"], name=prefix + "_Shape", end=-1),
                helper.make_node(
                    "Concat",
                    [prefix + "_shape", self.const(np.array([k // BLOCK, BLOCK], np.int64), prefix + "_blocks")],
                    [lead],
                    name=prefix + "_BlockShape",
                    axis=0,
                ),
                helper.make_node("Reshape", [x, lead], [prefix + "_blocked"], name=prefix + "_Reshape"),
                helper.make_node(
                    "ReduceSum",
                    [prefix + "_blocked", self.const(np.array([-1], np.int64), prefix + "_axis")],
                    [prefix + "_block_sum"],
                    name=prefix + "_ReduceSum",
                    keepdims=0,
                ),
            ]
            self.block_sums[x] = prefix + "_block_sum"
        return self.block_sums[x]

    def matmul(self, x: str, y: str, weight: GridWeight, prefix: str) -> None:
        n, k = weight.codes.shape
        out = y if weight.mins is None else prefix + "_nbits"
        self.nodes.append(
            helper.make_node(
                "MatMulNBits",
                [
                    x,
                    self.const(_packed(weight), prefix + "_codes"),
                    self.const(weight.scales.reshape(-1), prefix + "_scales"),
                ],
                [out],
                name=prefix + "_MatMulNBits",
                domain="com.microsoft",
                K=k,
                N=n,
                bits=weight.bits,
                block_size=BLOCK,
                accuracy_level=self.accuracy_level,
            )
        )
        if weight.mins is not None:  # Q4_1: + block_sum(x) @ (m + 8d)^T
            table = np.ascontiguousarray((weight.mins + 8.0 * weight.scales).T, dtype=np.float32)
            sums = self.block_sum(x, k, prefix)
            self.nodes += [
                helper.make_node(
                    "MatMul", [sums, self.const(table, prefix + "_mins")], [prefix + "_min_term"], name=prefix + "_Mins"
                ),
                helper.make_node("Add", [out, prefix + "_min_term"], [y], name=prefix + "_AddMins"),
            ]


def _constant_weight(node: onnx.NodeProto, inits: dict, producers: dict) -> np.ndarray | None:
    """The MatMul's weight as [N, K] if it is an initializer or a Transpose of one (a tied lm_head)."""
    if node.op_type != "MatMul":
        return None
    name = node.input[1]
    if name in inits:
        return numpy_helper.to_array(inits[name]).T
    source = producers.get(name)
    if source is not None and source.op_type == "Transpose" and source.input[0] in inits:
        perm = next((list(a.ints) for a in source.attribute if a.name == "perm"), None)
        if perm in (None, [1, 0]):
            return numpy_helper.to_array(inits[source.input[0]])
    return None


def rewrite_on_grid(model: onnx.ModelProto, index: dict[str, GridWeight], accuracy_level: int = 4) -> GridRewrite:
    """Replace, in place, every MatMul whose weight is exactly a grid weight; drop what is left unread."""
    graph = model.graph
    inits = {init.name: init for init in graph.initializer}
    producers = {out: node for node in graph.node for out in node.output}
    kept: list[onnx.NodeProto] = []
    writer, record = _Writer(accuracy_level, kept), GridRewrite()
    for node in graph.node:
        weight = _constant_weight(node, inits, producers)
        match = index.get(_digest(weight)) if weight is not None and weight.ndim == 2 else None
        if match is None:
            if weight is not None:
                record.kept_float.append(node.name)
            kept.append(node)
            continue
        prefix = "grid" + node.name.replace("/", "_").replace(".", "_")
        writer.matmul(node.input[0], node.output[0], match, prefix)
        record.replaced.append((node.name, match.name, match.kind))
    graph.initializer.extend(writer.inits)
    _keep_live(graph, kept)
    if not any(op.domain == "com.microsoft" for op in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return record


def set_accuracy_level(model: onnx.ModelProto, level: int) -> None:
    """MatMulNBits' compute type: 0 float (checks the grid exactly), 4 int8 activations (fast on CPU)."""
    for node in model.graph.node:
        if node.op_type == "MatMulNBits":
            for attr in node.attribute:
                if attr.name == "accuracy_level":
                    attr.i = level


def _keep_live(graph: onnx.GraphProto, nodes: list[onnx.NodeProto]) -> None:
    """Nodes and initializers that still reach an output (the float weights and their Transposes go)."""
    needed = {out.name for out in graph.output}
    live = []
    for node in reversed(nodes):
        if any(out in needed for out in node.output):
            live.append(node)
            needed.update(node.input)
    del graph.node[:]
    graph.node.extend(reversed(live))
    inits = [init for init in graph.initializer if init.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(inits)
