"""FP16 for GPU and NPU targets, with onnxruntime.transformers' converter.

Inputs and outputs keep their FP32 types (keep_io_types), so the app's pre- and post-processing
does not change. Ops whose FP16 result overflows or loses range are blocked and stay FP32: the
converter's default block list plus the reductions and normalisations that sum many values.
A NaN or Inf in the converted model's outputs fails the build (checked where every variant is
evaluated).
"""

from __future__ import annotations

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
    (onnxruntime's partition checker, ONNX's checker) need producers before consumers."""
    ready = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending, order = list(graph.node), []
    while pending:
        rest = []
        for n in pending:
            if all(i in ready for i in n.input):
                order.append(n)
                ready.update(n.output)
            else:
                rest.append(n)
        if len(rest) == len(pending):
            order += rest  # a cycle or an outer-scope input: leave the remainder as it was
            break
        pending = rest
    copies = [onnx.NodeProto() for _ in order]
    for c, n in zip(copies, order, strict=True):
        c.CopyFrom(n)
    del graph.node[:]
    graph.node.extend(copies)
