"""FP16 for GPU and NPU targets, with onnxruntime.transformers' converter.

Inputs and outputs keep their FP32 types (keep_io_types), so the app's pre- and post-processing
does not change. Ops whose FP16 result overflows or loses range are blocked and stay FP32: the
converter's default block list plus the reductions and normalisations that sum many values.
A NaN or Inf in the converted model's outputs fails the build (checked where every variant is
evaluated).
"""

from __future__ import annotations

from collections import deque
from pathlib import Path

import onnx

from exporter.onnx_io import save_model

# Sums over many elements overflow FP16's 65504 range; exp/pow grow past it.
BLOCKED = ["ReduceSum", "ReduceL2", "ReduceMean", "Pow", "Exp", "CumSum", "Range", "RandomNormalLike"]


def convert_fp16(fp32_path: Path, out_path: Path) -> dict:
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    model = onnx.load(str(fp32_path))
    blocked = sorted(set(DEFAULT_OP_BLOCK_LIST) | set(BLOCKED))
    converted = convert_float_to_float16(model, keep_io_types=True, op_block_list=blocked, disable_shape_infer=False)
    _sort_topologically(converted.graph)
    save_model(converted, out_path)
    present = sorted({n.op_type for n in model.graph.node} & set(blocked))
    return {"keep_io_types": True, "kept_fp32_op_types": present}


def _sort_topologically(graph: onnx.GraphProto) -> None:
    """The converter appends its Cast nodes at the end; tools that walk the graph in order
    (onnxruntime's partition checker, ONNX's checker) need producers before consumers.

    The order is that of repeated passes over the nodes, each taking, in file order, every node
    whose inputs exist by then (nodes that never get their inputs stay last, as they were), so
    a graph already in order is left as it is. Computed in linear time: a node's pass is the
    latest of its producers' passes, one later for a producer further down the file. onnx_ir's
    stable sort orders differently (26 of 31 nodes of a small CNN), which would change the bytes
    of every FP16 file edgex has shipped.
    """
    ready = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    nodes = list(graph.node)
    producer: dict[str, int] = {}
    for i, node in enumerate(nodes):
        for name in node.output:
            producer.setdefault(name, i)
    waiting = [0] * len(nodes)
    readers: list[list[int]] = [[] for _ in nodes]
    for i, node in enumerate(nodes):
        for name in set(node.input) - ready:
            waiting[i] += 1  # an input no node produces is never ready
            if name in producer:
                readers[producer[name]].append(i)
    passes = [1] * len(nodes)
    queue = deque(i for i, w in enumerate(waiting) if w == 0)
    done = []
    while queue:
        q = queue.popleft()
        done.append(q)
        for i in readers[q]:
            passes[i] = max(passes[i], passes[q] + (q > i))
            waiting[i] -= 1
            if waiting[i] == 0:
                queue.append(i)
    order = sorted(done, key=lambda i: (passes[i], i)) + [i for i, w in enumerate(waiting) if w]
    copies = [onnx.NodeProto() for _ in order]
    for c, i in zip(copies, order, strict=True):
        c.CopyFrom(nodes[i])
    del graph.node[:]
    graph.node.extend(copies)
