"""Why a quantized model is slow or inaccurate: what onnxruntime actually runs, and where the time goes.

A QDQ file says what *may* run in integers; onnxruntime's graph optimiser decides what does.
The diagnosis loads the model the way the target's host session does (every optimisation on),
then reports: Q/DQ pairs left unfused (a DequantizeLinear feeding a float op means that op runs in
float between a dequantize and a requantize), compute ops that stay float, tensors re-quantized
with a different scale or type (precision mismatches), and per-op time from onnxruntime's
profiler, side by side with the FP32 source when one is given.
"""

from __future__ import annotations

import json
import tempfile
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

from exporter.quant.concat_parts import find_concat_parts, observed_ranges
from exporter.quant.qdq_graph import float_compute_nodes

_QDQ = {"QuantizeLinear", "DequantizeLinear"}
_FREE = {"Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Identity", "Shape", "Concat", "Slice", "Gather"}


def optimized_graph(path: Path) -> onnx.ModelProto:
    """The graph onnxruntime's CPU provider executes after every optimisation (saved, then read back)."""
    with tempfile.TemporaryDirectory(prefix="edgex-diag-") as tmp:
        out = Path(tmp) / "optimized.onnx"
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED  # portable, no NCHWc layout
        so.optimized_model_filepath = str(out)
        so.log_severity_level = 3
        ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        return onnx.load(str(out))


def unfused(model: onnx.ModelProto) -> dict:
    consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
    for n in model.graph.node:
        for i in n.input:
            consumers[i].append(n)
    inits = {i.name for i in model.graph.initializer}
    float_after_dq: Counter[str] = Counter()
    weight_dq = 0
    for n in model.graph.node:
        if n.op_type != "DequantizeLinear":
            continue
        if n.input[0] in inits:
            weight_dq += 1  # a weight dequantized at run time: its consumer computes in float
        for c in consumers[n.output[0]]:
            if c.op_type not in _QDQ and c.op_type not in _FREE:
                float_after_dq[c.op_type] += 1
    return {
        "dequantize_nodes": sum(n.op_type == "DequantizeLinear" for n in model.graph.node),
        "quantize_nodes": sum(n.op_type == "QuantizeLinear" for n in model.graph.node),
        "float_ops_between_dq_q": dict(float_after_dq.most_common()),
        "weights_dequantized_at_run_time": weight_dq,
    }


def precision_mismatches(model: onnx.ModelProto) -> list[dict]:
    """DequantizeLinear -> QuantizeLinear chains whose scale or type changes: a requantization step."""
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    found = []
    for n in model.graph.node:
        if n.op_type != "QuantizeLinear":
            continue
        src = producer.get(n.input[0])
        hops = 0
        while src is not None and src.op_type in _FREE and hops < 4:
            src, hops = producer.get(src.input[0]), hops + 1
        if src is None or src.op_type != "DequantizeLinear":
            continue
        a_scale, b_scale = inits.get(src.input[1]), inits.get(n.input[1])
        a_zp = inits.get(src.input[2]) if len(src.input) > 2 else None
        b_zp = inits.get(n.input[2]) if len(n.input) > 2 else None
        if a_scale is None or b_scale is None:
            continue
        a_type = a_zp.dtype.name if a_zp is not None else "?"
        b_type = b_zp.dtype.name if b_zp is not None else "?"
        if a_type != b_type or not np.allclose(a_scale, b_scale):
            found.append(
                {
                    "tensor": n.input[0],
                    "from": f"{a_type} scale {float(np.max(a_scale)):.3g}",
                    "to": f"{b_type} scale {float(np.max(b_scale)):.3g}",
                }
            )
    return found


def shared_scales(model: onnx.ModelProto, feed: dict[str, np.ndarray]) -> list[dict]:
    """Outputs that concatenate far-apart ranges (exporter.quant.concat_parts), with the INT8 step the file
    gives the Concat's output when one QuantizeLinear covers it: the small part's values in steps of it."""
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    consumers = defaultdict(list)
    for n in model.graph.node:
        for i in n.input:
            consumers[i].append(n)
    found = []
    for rec in find_concat_parts(model, observed_ranges(model, [feed])):
        q = next((c for c in consumers[rec["concat_output"]] if c.op_type == "QuantizeLinear"), None)
        scale = inits.get(q.input[1]) if q is not None else None
        small = max(max(abs(i["min"]), abs(i["max"])) for i in rec["inputs"] if i["small"])
        found.append(
            {
                "output": rec["output"],
                "concat": rec["concat"],
                "ratio": round(rec["ratio"], 1),
                "small_parts": [i["tensor"] for i in rec["inputs"] if i["small"]],
                "shared_step": None if scale is None else float(np.max(scale)),
                "small_part_steps": None if scale is None else round(small / float(np.max(scale)), 1),
            }
        )
    return found


def op_times(path: Path, feed: dict[str, np.ndarray], runs: int = 20) -> dict[str, float]:
    """Milliseconds per run by op type, from onnxruntime's profiler on one thread."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.enable_profiling = True
    so.log_severity_level = 3
    with tempfile.TemporaryDirectory(prefix="edgex-prof-") as tmp:
        so.profile_file_prefix = str(Path(tmp) / "prof")
        session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        for _ in range(3):
            session.run(None, feed)
        session.end_profiling()
        session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        for _ in range(runs):
            session.run(None, feed)
        events = json.loads(Path(session.end_profiling()).read_text())
    totals: dict[str, float] = defaultdict(float)
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time"):
            totals[e["args"]["op_name"]] += e["dur"] / 1000 / runs
    return dict(sorted(((k, round(v, 3)) for k, v in totals.items()), key=lambda kv: -kv[1]))


def diagnose(path: Path, feed: dict[str, np.ndarray], fp32: Path | None = None) -> dict:
    source = onnx.load(str(path))
    quantized, floating = float_compute_nodes(source)
    optimized = optimized_graph(path)
    report: dict = {
        "model": str(path),
        "quantized_ops": quantized,
        "float_ops": floating,
        "after_onnxruntime_optimisation": {
            "op_types": dict(Counter(n.op_type for n in optimized.graph.node).most_common()),
            **unfused(optimized),
        },
        "precision_mismatches": precision_mismatches(source),
        "concatenated_outputs": shared_scales(source, feed),
        "time_ms_by_op_type": op_times(path, feed),
    }
    if fp32 is not None:
        report["fp32_time_ms_by_op_type"] = op_times(fp32, feed)
        ratio_q = sum(report["time_ms_by_op_type"].values())
        ratio_f = sum(report["fp32_time_ms_by_op_type"].values())
        report["kernel_time_ratio_vs_fp32"] = round(ratio_q / ratio_f, 3) if ratio_f else None
    report["findings"] = findings(report)
    return report


def findings(report: dict) -> list[str]:
    """Plain sentences, most expensive first."""
    out = []
    after = report["after_onnxruntime_optimisation"]
    times = report["time_ms_by_op_type"]
    total = sum(times.values()) or 1.0
    qdq_ms = times.get("QuantizeLinear", 0) + times.get("DequantizeLinear", 0)
    if qdq_ms / total > 0.1:
        out.append(
            f"standalone Quantize/DequantizeLinear take {qdq_ms:.2f} ms ({100 * qdq_ms / total:.0f}% of kernel time): "
            "pairs onnxruntime could not fuse into integer kernels"
        )
    for op, n in after["float_ops_between_dq_q"].items():
        ms = times.get(op, 0.0)
        out.append(
            f"{n} {op} node(s) run in float between DequantizeLinear and QuantizeLinear ({ms:.2f} ms): "
            f"no integer {op} kernel; exclude {op} from quantization (op_types) to drop the Q/DQ around it"
        )
    if after["weights_dequantized_at_run_time"]:
        out.append(
            f"{after['weights_dequantized_at_run_time']} weight(s) are dequantized at run time (their consumer "
            "was not fused: usually its activation input is float), costing time instead of saving it"
        )
    for c in report.get("concatenated_outputs") or []:
        if c["shared_step"] is None:
            out.append(f"output '{c['output']}' concatenates ranges {c['ratio']:g}x apart; its Concat is not quantized")
        else:
            out.append(
                f"output '{c['output']}' concatenates ranges {c['ratio']:g}x apart under one INT8 step of "
                f"{c['shared_step']:.3g}: {', '.join(c['small_parts'])} keep only {c['small_part_steps']:g} steps "
                "(class scores of a YOLO head round to 0 or 1); edgex quantize keeps such parts apart"
            )
    for m in report["precision_mismatches"][:5]:
        out.append(f"tensor '{m['tensor']}' is requantized from {m['from']} to {m['to']}")
    if report.get("kernel_time_ratio_vs_fp32"):
        r = report["kernel_time_ratio_vs_fp32"]
        out.append(f"kernel time is {r:.2f}x the FP32 source's ({'slower' if r > 1 else 'faster'})")
    if report["float_ops"]:
        top = ", ".join(f"{k} x{v}" for k, v in sorted(report["float_ops"].items(), key=lambda kv: -kv[1])[:6])
        out.append(f"ops left in float in the file: {top}")
    return out
