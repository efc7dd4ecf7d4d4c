"""Preflight: before benchmarking, which nodes the target's execution provider can take.

For QNN targets with the `edgex[qnn]` extra installed, the answer is the provider's own: the QNN EP
(HTP backend, emulated on x86) is asked to partition the graph, and what it leaves to the CPU is
listed by name. Otherwise, and for the other accelerators, it uses onnxruntime's own partition checker (the one behind check_onnx_model_mobile_usability)
with an operator table per target: onnxruntime's shipped tables for NNAPI and CoreML, and
declared tables with their sources under targets/ops/ for QNN, TensorRT and XNNPACK. The
result is an estimate from operator types and shapes, not a device run: it catches the
operators that certainly fall back to the CPU and how many partitions the graph splits into.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import onnx

from exporter.graph_stats import macs_per_node
from exporter.resources import shipped_dir
from exporter.targets import Target

# What to do about an operator the accelerator does not take; anything else gets the generic advice.
ADVICE = {
    "Erf": "export GELU with the tanh approximation, or let this node run on the CPU",
    "Where": "precompute the mask outside the graph or use arithmetic masking (mask * x)",
    "Expand": "broadcast through the consuming op instead of an explicit Expand",
    "ReduceMean": "use GlobalAveragePool for spatial means",
    "Softmax": "keep Softmax on its last axis with a static shape",
}
GENERIC = "replace it in the model, or allow CPU fallback in the profile (preflight.allow_cpu_fallback)"


def _table(target: Target) -> Path | None:
    spec = target.op_support.table
    if spec is None:
        return None
    if spec.startswith("onnxruntime:"):
        from onnxruntime.tools import mobile_helpers

        return Path(mobile_helpers.__file__).parent / spec.split(":", 1)[1]
    return shipped_dir("targets") / spec


def preflight(path: Path, target: Target, soc: dict[str, int | None] | None = None) -> dict:
    """Node assignment of one model file for one target: the provider's own where it runs here
    (QNN with edgex[qnn]; soc: the profile's soc_model / htp_arch), else the operator-table estimate."""
    fallback_note = None
    if target.execution_provider == "QNNExecutionProvider":
        from exporter.qnn_htp import node_assignment, unavailable_reason

        fallback_note = unavailable_reason()
        if fallback_note is None:
            return _with_costs(path, node_assignment(path, **(soc or {})))
    found = _table_preflight(path, target)
    if fallback_note is not None:
        found["checker"] += f" (an estimate from an operator table: {fallback_note})"
    return found


def _with_costs(path: Path, found: dict) -> dict:
    """The provider's assignment plus what the table path also reports: MAC share on the CPU, advice."""
    macs = macs_per_node(onnx.load(str(path)))
    all_macs = sum(macs.values())
    on_cpu = set(found.get("on_cpu", []))
    cpu_macs = sum(v for k, v in macs.items() if k in on_cpu)
    return {
        **found,
        "cpu_fallback_macs_share": round(cpu_macs / all_macs, 6) if all_macs else 0.0,
        "advice": {op: ADVICE.get(op, GENERIC) for op in sorted(found["unsupported_ops"])},
    }


def _table_preflight(path: Path, target: Target) -> dict:
    model = onnx.load(str(path))
    total = len(model.graph.node)
    macs = macs_per_node(model)
    all_macs = sum(macs.values())
    table = _table(target)
    if table is None:
        return {
            "checker": "none needed: the target is the CPU provider itself",
            "nodes": total,
            "supported_nodes": total,
            "partitions": 1,
            "cpu_fallback_nodes": 0,
            "cpu_fallback_macs_share": 0.0,
            "unsupported_ops": {},
            "partition_map": [total] if total else [],
            "advice": {},
        }
    from onnxruntime.tools.mobile_helpers.usability_checker import _SupportedOpsChecker, check_partitioning

    inferred = onnx.shape_inference.infer_shapes(model)
    checker = _SupportedOpsChecker(str(table))
    info = check_partitioning(
        inferred.graph, checker, target.op_support.require_fixed_input_sizes, target.op_support.max_rank
    )
    supported = {tuple(n.output) for group in info.supported_groups for n in group}
    on_cpu = [(i, n) for i, n in enumerate(inferred.graph.node) if tuple(n.output) not in supported]
    names_on_cpu = {n.name or f"{n.op_type}#{i}" for i, n in on_cpu}
    unsupported = Counter(n.op_type for _, n in on_cpu)
    cpu_macs = sum(v for k, v in macs.items() if k in names_on_cpu)
    return {
        "checker": f"onnxruntime usability checker with {table.name}",
        "nodes": info.num_nodes,
        "supported_nodes": info.num_supported_nodes,
        "partitions": info.num_partitions,
        "cpu_fallback_nodes": info.num_nodes - info.num_supported_nodes,
        "cpu_fallback_macs_share": round(cpu_macs / all_macs, 6) if all_macs else 0.0,
        "unsupported_ops": dict(sorted(unsupported.items())),
        "partition_map": [len(group) for group in info.supported_groups],
        "advice": {op: ADVICE.get(op, GENERIC) for op in sorted(unsupported)},
        "caveats": checker.get_caveats(),
    }
