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
        """GGUF tensors carried (a packed q/k/v MatMul carries three), by GGUF type, and MatMul nodes."""
        kinds: dict[str, int] = {}
        for _, _, kind in self.replaced:
            for one in kind.split("+"):  # a packed weight's kinds, one per GGUF tensor
                kinds[one] = kinds.get(one, 0) + 1
        return {
            "on_source_grid": sum(kinds.values()),
            "kinds": kinds,
            "matmul_nodes": len(self.replaced),
            "kept_float": list(self.kept_float),
        }


def _digest(values: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(values, dtype=np.float32).tobytes()).hexdigest()


@dataclass(frozen=True)
class GridIndex:
    """Grid weights by the digest of their dequantized [N, K] values, and the row counts per K
    (to recognise a packed weight, e.g. onnxruntime-genai's q, k and v in one MatMul)."""

    by_digest: dict[str, GridWeight]
    rows_by_k: dict[int, list[int]]

    def get(self, digest: str) -> GridWeight | None:
        return self.by_digest.get(digest)


def grid_index(grid: dict[tuple[int, int], list[GridWeight]]) -> GridIndex:
    rows_by_k: dict[int, set[int]] = {}
    for n, k in grid:
        rows_by_k.setdefault(k, set()).add(n)
    by_digest = {_digest(weight.dequantized()): weight for weights in grid.values() for weight in weights}
    return GridIndex(by_digest, {k: sorted(ns, reverse=True) for k, ns in rows_by_k.items()})


def _packed_match(weight: np.ndarray, index: GridIndex) -> GridWeight | None:
    """A weight whose rows are several grid weights one after another, as one GridWeight."""
    parts, start = [], 0
    rows = index.rows_by_k.get(weight.shape[1], [])
    while start < weight.shape[0]:
        part = next(
            (
                hit
                for n in rows
                if start + n <= weight.shape[0]
                for hit in [index.get(_digest(weight[start : start + n]))]
                if hit
            ),
            None,
        )
        if part is None or (parts and part.bits != parts[0].bits):
            return None
        parts.append(part)
        start += part.codes.shape[0]
    return _join(parts) if len(parts) > 1 else None


def _join(parts: list[GridWeight]) -> GridWeight:
    """Grid weights stacked along N (same K and bits): one MatMulNBits instead of several."""
    if any(p.mins is not None for p in parts):  # Q4_0 beside Q4_1: d*(q-8) is the min form with m = -8d
        mins = np.concatenate([p.mins if p.mins is not None else -8.0 * p.scales for p in parts])
    else:
        mins = None
    return GridWeight(
        "+".join(p.name for p in parts),
        "+".join(p.kind for p in parts),
        np.concatenate([p.codes for p in parts]),
        np.concatenate([p.scales for p in parts]),
        mins,
    )


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
        self.shared: set[str] = set()

    def const(self, values: np.ndarray, name: str) -> str:
        self.inits.append(numpy_helper.from_array(values, name))
        return name

    def block_sum(self, x: str, k: int, prefix: str) -> str:
        """x @ E, E [K, K/32] of ones per block: x's sums per block of 32, one node for any rank
        (a Shape/Concat/Reshape/ReduceSum chain cost 4 nodes, ~1.8 ms per SmolLM2 token)."""
        if x not in self.block_sums:
            ones = f"grid_block_ones_{k}"
            if ones not in self.shared:
                self.shared.add(ones)
                self.const(np.kron(np.eye(k // BLOCK, dtype=np.float32), np.ones((BLOCK, 1), np.float32)), ones)
            self.nodes.append(helper.make_node("MatMul", [x, ones], [prefix + "_block_sum"], name=prefix + "_BlockSum"))
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


def rewrite_on_grid(model: onnx.ModelProto, index: GridIndex, accuracy_level: int = 4) -> GridRewrite:
    """Replace, in place, every MatMul whose weight is exactly a grid weight; drop what is left unread.

    Matched MatMuls reading the same input with the same bits (q, k and v; gate and up) become one
    MatMulNBits and a Split: each extra node costs a few microseconds per token, which at 135M
    parameters is a visible share of decoding."""
    graph = model.graph
    inits = {init.name: init for init in graph.initializer}
    producers = {out: node for node in graph.node for out in node.output}
    record = GridRewrite()
    matches: dict[int, GridWeight] = {}  # by node index: names may be empty or repeated in files from elsewhere
    siblings: dict[tuple[str, int, int], list[int]] = {}
    nodes = list(graph.node)
    for i, node in enumerate(nodes):
        weight = _constant_weight(node, inits, producers)
        if weight is None or weight.ndim != 2:
            continue
        match = index.get(_digest(weight)) or _packed_match(weight, index)
        if match is None:
            record.kept_float.append(node.name or f"MatMul #{i}")
            continue
        matches[i] = match
        siblings.setdefault((node.input[0], match.bits, match.codes.shape[1]), []).append(i)
    group_of = {i: group for group in siblings.values() for i in group}
    kept: list[onnx.NodeProto] = []
    writer = _Writer(accuracy_level, kept)
    for i, node in enumerate(nodes):
        if i not in matches:
            kept.append(node)
            continue
        group = group_of[i]
        if i != group[0]:
            continue  # written with the first of its siblings
        prefix = f"grid{i}_" + node.name.replace("/", "_").replace(".", "_")
        joined = _join([matches[j] for j in group]) if len(group) > 1 else matches[i]
        out = node.output[0] if len(group) == 1 else prefix + "_joined"
        writer.matmul(node.input[0], out, joined, prefix)
        if len(group) > 1:
            sizes = np.array([matches[j].codes.shape[0] for j in group], np.int64)
            kept.append(
                helper.make_node(
                    "Split",
                    [out, writer.const(sizes, prefix + "_sizes")],
                    [nodes[j].output[0] for j in group],
                    name=prefix + "_Split",
                    axis=-1,
                )
            )
        record.replaced += [(nodes[j].name, matches[j].name, matches[j].kind) for j in group]
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
