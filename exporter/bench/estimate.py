"""Device estimates — always labelled as estimates — of latency, energy per inference and average power.

Model (every constant comes from the profile's `estimates:` section, each with its source):

  work       MACs of the graph (Conv/Gemm/MatMul and quantized forms) and bytes moved: initializers
             once plus every activation written once and read once (2x its size).
  roofline   t(unit) = max(MACs / compute_gmacs[precision], bytes / dram_gbps).
  efficiency e = t_roofline(host) / t_measured(host), from this build's own host measurement of the
             same model against the host's measured ceilings (MatMul GMAC/s, copy bandwidth), so
             overheads the roofline ignores (small kernels, Q/DQ, dispatch) carry over to the device.
  latency    t(device) = t_roofline(device) / e; on a board (`edgex bench --runner ssh://...`) the
             latency measured there replaces it. Unvalidated: `error_band` is None.
  fitted     where device_profiles/fits/<profile>.yaml has a fit for the precision (Qualcomm NPUs, from
             published latencies; exporter/bench/device_fit.py), t(device) = the fitted model of the
             graph's work instead, with its leave-one-model-out error band: the build host's speed
             (and load) no longer moves the device estimate.
  energy     E = MACs x pj_per_mac[precision] + bytes x pj_per_dram_byte + static_power_w x t(device).
  power      P(rate) = static_power_w + (E - static part) x rate: the unit idles at static power between
             queries; a rate the device latency cannot sustain is reported as such.
"""

from __future__ import annotations

import time
from functools import lru_cache
from pathlib import Path

import numpy as np
import onnx

from exporter.bench.device_fit import graph_features, in_domain, load_fit, predict_ms
from exporter.estimate_text import FORMULA, METHOD, METHOD_FITTED, METHOD_ON_DEVICE
from exporter.graph_stats import count_macs
from exporter.onnx_io import BITS_PER_ELEMENT
from exporter.shapes import fixed_copy


def traffic_bytes(model: onnx.ModelProto) -> int:
    """Initializers read once, every activation written once and read once, as a runtime executes a Q/DQ
    file: fused into integer kernels, so the float a DequantizeLinear would write and the float only a
    QuantizeLinear reads never reach memory; the 8/16-bit tensor between them does. (Counting them made a
    static INT8 file "move" 2.2x its FP32 parent's bytes and its energy estimate exceed FP32's.)"""
    weights = sum(_bytes(i.data_type, int(np.prod(i.dims))) for i in model.graph.initializer)
    inferred = onnx.shape_inference.infer_shapes(model)
    consumers: dict[str, list[str]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node.op_type)
    outputs = {o.name for o in model.graph.output}
    fused = {o for n in model.graph.node if n.op_type == "DequantizeLinear" for o in n.output if o not in outputs}
    fused |= {
        n.input[0]
        for n in model.graph.node
        if n.op_type == "QuantizeLinear" and set(consumers.get(n.input[0], [])) == {"QuantizeLinear"}
    }
    acts = 0
    for vi in list(inferred.graph.value_info) + list(inferred.graph.output):
        if vi.name in fused:
            continue
        t = vi.type.tensor_type
        dims = [d.dim_value if d.dim_value > 0 else 1 for d in t.shape.dim]
        acts += _bytes(t.elem_type, int(np.prod(dims)))
    return weights + 2 * acts


def _bytes(data_type: int, count: int) -> int:
    """Packed size; a type the table does not know (or an unknown activation type) counts as 32-bit."""
    return -(-count * BITS_PER_ELEMENT.get(data_type, 32) // 8)


@lru_cache(maxsize=8)
def host_ceilings(threads: int) -> dict[str, float]:
    """The host's own ceilings, measured: fp32 MatMul and u8s8 MatMulInteger GMAC/s in onnxruntime, copy GB/s."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    m, k, n = 256, 1024, 1024

    def gmacs(op: str, a_type: int, b: np.ndarray, a: np.ndarray) -> float:
        out_type = TensorProto.INT32 if op == "MatMulInteger" else TensorProto.FLOAT
        graph = helper.make_graph(
            [helper.make_node(op, ["a", "b"], ["y"])],
            "ceiling",
            [helper.make_tensor_value_info("a", a_type, [m, k])],
            [helper.make_tensor_value_info("y", out_type, [m, n])],
            [onnx.numpy_helper.from_array(b, "b")],
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
        for _ in range(3):
            sess.run(None, {"a": a})
        best = float("inf")
        for _ in range(10):
            t0 = time.perf_counter()
            sess.run(None, {"a": a})
            best = min(best, time.perf_counter() - t0)
        return m * k * n / best / 1e9

    rng = np.random.default_rng(0)
    fp32 = gmacs(
        "MatMul",
        TensorProto.FLOAT,
        rng.standard_normal((k, n)).astype(np.float32),
        rng.standard_normal((m, k)).astype(np.float32),
    )
    int8 = gmacs(
        "MatMulInteger",
        TensorProto.UINT8,
        rng.integers(-128, 127, (k, n)).astype(np.int8),
        rng.integers(0, 255, (m, k)).astype(np.uint8),
    )
    src = np.ones(32 * 2**20, dtype=np.uint8)
    dst = np.empty_like(src)
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - t0)
    return {"fp32": fp32, "fp16": fp32, "int8": int8, "dram_gbps": 2 * src.nbytes / best / 1e9}


def estimate(
    path: Path,
    precision: str,
    host_latency_ms: float,
    threads: int,
    estimates,
    rate_hz: float | None,
    device_latency_ms: float | None = None,
    shapes: dict[str, list[int]] | None = None,
    profile_id: str | None = None,
    fit_precision: str | None = None,
    work_graph: Path | None = None,
) -> dict:
    """Device latency, energy and power of one variant; `available: False` with the reason when it cannot be done.

    device_latency_ms: the latency measured on the device itself (remote runner); it replaces the
    roofline-over-host-efficiency latency, and the energy model uses it for the static part.
    shapes: the input shapes the variant runs at (needed where the file keeps dynamic dimensions).
    profile_id: the device profile; with a shipped fit for it at this precision the fitted model
    gives the latency (host_latency_ms and threads are then unused).
    fit_precision: the fit to use when it differs from the arithmetic's precision ("a16w8": 16-bit
    activations and 8-bit weights, fitted on published w8a16 timings; its energy uses INT8's constants).
    work_graph: the FP32 graph the variant was quantized from, counted where shape inference cannot
    follow the quantized file (16-bit Q/DQ at opset 21): quantization does not change the work."""
    if estimates is None:
        return {"available": False, "reason": "the profile has no `estimates:` constants"}
    if precision not in estimates.compute_gmacs or precision not in estimates.pj_per_mac:
        return {"available": False, "reason": f"no {precision} compute constant for this device's unit"}
    model = onnx.load(str(path))
    if shapes:  # the shapes the variant was judged at: a dynamic dimension is never counted as 1
        model = fixed_copy(model, shapes)
    macs, moved = count_macs(model, shapes) or _static_count(model), traffic_bytes(model)
    counted = model
    if macs == 0 and work_graph is not None:
        counted = onnx.load(str(work_graph))
        counted = fixed_copy(counted, shapes) if shapes else counted
        macs = count_macs(counted, shapes) or _static_count(counted)
    dev_compute = estimates.compute_gmacs[precision].value
    dev_bw = estimates.dram_gbps.value
    dev_roofline_ms = max(macs / (dev_compute * 1e9), moved / (dev_bw * 1e9)) * 1e3
    fitted = load_fit(profile_id, fit_precision or precision) if device_latency_ms is None else None
    band, method, fit_facts = None, METHOD if device_latency_ms is None else METHOD_ON_DEVICE, None
    host, host_roofline_ms, efficiency = {}, None, None
    if device_latency_ms is not None:
        latency_ms = device_latency_ms
        efficiency = min(1.0, dev_roofline_ms / latency_ms) if latency_ms > 0 else 1.0
    elif fitted is not None:
        try:
            work = _features(counted, shapes)
        except ValueError as exc:  # a size the fit needs is unknown: say so, do not guess
            return {"available": False, "reason": f"fitted device model: {exc}"}
        latency_ms = predict_ms(work, fitted)
        method = METHOD_FITTED
        band = _band(fitted, in_domain(work, fitted))
        fit_facts = {
            "features": {k: work[k] for k in fitted["features"]},
            "seconds_per_unit": fitted["seconds_per_unit"],
        }
    else:
        host = host_ceilings(threads)
        host_roofline_ms = max(macs / (host[precision] * 1e9), moved / (host["dram_gbps"] * 1e9)) * 1e3
        efficiency = min(1.0, host_roofline_ms / host_latency_ms) if host_latency_ms > 0 else 1.0
        latency_ms = dev_roofline_ms / efficiency if efficiency > 0 else float("inf")
    dynamic_mj = (macs * estimates.pj_per_mac[precision].value + moved * estimates.pj_per_dram_byte.value) * 1e-9
    static_w = estimates.static_power_w.value
    energy_mj = dynamic_mj + static_w * latency_ms  # W x ms = mJ
    out = {
        "available": True,
        "method": method,
        "error_band": band,
        "formula": FORMULA,
        "macs": macs,
        "bytes_moved": moved,
        "host_ceilings": {k: round(v, 2) for k, v in host.items()},
        "host_roofline_ms": round(host_roofline_ms, 6) if host_roofline_ms is not None else None,
        "efficiency": round(efficiency, 6) if efficiency is not None else None,
        "device_roofline_ms": round(dev_roofline_ms, 6),
        "device_latency_ms": round(latency_ms, 6),
        "energy_mj": round(energy_mj, 6),
        "dynamic_energy_mj": round(dynamic_mj, 6),
        "constants": {
            "compute_gmacs": dev_compute,
            "dram_gbps": dev_bw,
            "pj_per_mac": estimates.pj_per_mac[precision].value,
            "pj_per_dram_byte": estimates.pj_per_dram_byte.value,
            "static_power_w": static_w,
        },
    }
    if band is not None:
        out["latency_interval_ms"] = [
            round(latency_ms / (1 + band["band_rel"]), 6),
            round(latency_ms * (1 + band["band_rel"]), 6),
        ]
        out["fitted_model"] = fit_facts
    if rate_hz:
        out["rate_hz"] = rate_hz
        out["sustains_rate"] = latency_ms * rate_hz <= 1000.0
        out["average_power_w"] = round(static_w + dynamic_mj * 1e-3 * rate_hz, 6)
    return out


def _band(fitted: dict, inside: bool) -> dict:
    """The fit's leave-one-model-out figures, as every estimate made from it carries them."""
    return {
        "loo_median_rel_error": fitted["loo_median_rel_error"],
        "loo_max_ratio": fitted["loo_max_ratio"],
        "band_rel": fitted["band_rel"],
        "n_models": fitted["n_models"],
        "devices_source": f"Qualcomm AI Hub published latencies, {fitted.get('device')} ({fitted.get('published_precision')})",
        "fit_file": fitted["fit_file"],
        "in_domain": inside,  # False: the graph's MatMul/attention share is beyond every fitted model's
    }


def _static(model: onnx.ModelProto) -> bool:
    inits = {i.name for i in model.graph.initializer}
    return all(
        d.HasField("dim_value") for i in model.graph.input if i.name not in inits for d in i.type.tensor_type.shape.dim
    )


def _static_count(model: onnx.ModelProto) -> int:
    """MACs at the file's own sizes when every input is static (fixing them again can defeat
    onnxruntime's symbolic inference on exported transformers); 0 when a dimension is dynamic."""
    return count_macs(model) if _static(model) else 0


def _features(model: onnx.ModelProto, shapes: dict[str, list[int]] | None) -> dict[str, float]:
    """The fit's features at the judged shapes; at the file's own sizes when they are all static."""
    try:
        return graph_features(model, shapes)
    except ValueError:
        if not _static(model):
            raise
        return graph_features(model, None)
