"""QNN variants as the Hexagon NPU computes them, and the context binary a phone or car app loads.

Q/DQ simulated on the CPU provider is the arithmetic the file specifies, not what the HTP does
with it (its own requantisation, 16-bit accumulators in places, fused ops). onnxruntime-qnn ships
Qualcomm's HTP backend, which runs the NPU in emulation on x86: each QNN variant is run there on a
seeded subset of the evaluation set (emulation runs ~100 M MAC/s), judged against the FP32 model on
the same subset, and compared with the simulation. The shipped variant is then compiled for the
profile's SoC with CPU fallback disabled into an EPContext model (`<variant>.ctx.onnx`): the file an
app loads to start in milliseconds instead of compiling on the device, and proof that the whole graph
runs on the NPU. Without the `edgex[qnn]` extra none of this runs and the record says so.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from exporter import log
from exporter.bench.verdicts import Verdict
from exporter.graph_stats import count_macs
from exporter.metrics import accuracy_drop
from exporter.pipeline.context import Context, subset_indices
from exporter.profiles import DeviceProfile
from exporter.runtime import run_all, run_sequences

# The HTP emulator's rate measured here: digits CNN INT8, 70 x 85 M MAC in 8.8 s (~680 M MAC/s);
# MiniLM A16W8 ~3.2 s for 1.4 G MAC (~450 M MAC/s): 16-bit activations emulate slower.
EMULATED_MACS_PER_S = 5e8
AUTO_SECONDS = 30.0  # an automatic subset is sized to about this much emulation per variant
MIN_SAMPLES = 32


def soc_of(profile: DeviceProfile) -> dict[str, int | None]:
    """The SoC the HTP is emulated and compiled for: the profile's `soc.soc_model` and `soc.htp_arch`."""
    found = {}
    for key in ("soc_model", "htp_arch"):
        fact = profile.soc.get(key)
        found[key] = int(fact.value) if fact is not None else None
    return found


def unavailable() -> str | None:
    from exporter.qnn_htp import unavailable_reason

    return unavailable_reason()


def subset_size(ctx: Context, path: Path, parent: Path | None = None) -> tuple[int, str]:
    """How many evaluation samples the emulated HTP judges, and why that many."""
    wanted = ctx.loaded.recipe.quantize.npu.samples
    total = len(ctx.evaluation)
    if wanted is not None:
        return min(wanted, total), "quantize.npu.samples"
    # The larger count of the FP32 graph and the variant: where shape inference fails on one of them
    # (a converted opset, Q/DQ-fed weights) its count comes out short, never long.
    # the FP32 parent (the Q/DQ file can defeat shape inference: 16-bit Q/DQ at opset 21), the variant
    graphs = [g for g in (parent, path) if g is not None and g.is_file()]
    macs = max([1] + [count_macs_of(g, ctx) for g in graphs])
    fits = int(AUTO_SECONDS * EMULATED_MACS_PER_S / macs)
    return max(MIN_SAMPLES, min(total, fits)), (
        f"automatic: ~{AUTO_SECONDS:g} s of emulation at ~{EMULATED_MACS_PER_S / 1e6:g} M MAC/s "
        f"({macs / 1e6:.1f} M MAC per query), at least {MIN_SAMPLES}"
    )


def count_macs_of(path: Path, ctx: Context) -> int:
    import onnx

    model = onnx.load(str(path))
    return max(count_macs(model, {i.name: list(i.shape) for i in ctx.inputs}), count_macs(model))


def judge_on_npu(
    ctx: Context,
    profile: DeviceProfile,
    name: str,
    path: Path,
    simulated: np.ndarray,
    max_drop: float,
    parent: Path | None = None,
) -> tuple[dict, list[Verdict]]:
    """The variant's metric on the emulated HTP (a seeded subset), against FP32 and against the simulation."""
    from exporter.qnn_htp import htp_session, versions

    reason = unavailable()
    if reason is not None:
        return {"available": False, "reason": reason, "accuracy_basis": "Q/DQ simulated on the CPU provider"}, []
    soc = soc_of(profile)
    n, why = subset_size(ctx, path, parent)
    idx = subset_indices(ctx, n)
    inputs = {k: v[idx] for k, v in ctx.evaluation.inputs.items()}
    labels = None if ctx.evaluation.labels is None else ctx.evaluation.labels[idx]
    reference = ctx.reference[0][idx]
    feeding = ctx.evaluation.feeding
    log.info(
        f"[{profile.id}] {name}: run on the HTP backend (emulated, soc_model {soc['soc_model']}) "
        f"on {len(idx)} of {len(ctx.evaluation)} evaluation samples"
    )
    t0 = time.perf_counter()
    session = htp_session(path, soc_model=soc["soc_model"], htp_arch=soc["htp_arch"], cpu_fallback=True)
    if feeding is not None and feeding.carried:
        outputs = run_sequences(session, inputs, feeding, batch=1)[0]
    else:
        outputs = run_all(session, inputs, batch=1, feeding=feeding)
    seconds = time.perf_counter() - t0
    baseline = float(ctx.metric_fn(reference, labels, reference))
    on_npu = float(ctx.metric_fn(outputs[0], labels, reference))
    on_sim = float(ctx.metric_fn(simulated[idx], labels, reference))
    drop = accuracy_drop(baseline, on_npu, ctx.higher_is_better)
    drop_sim = accuracy_drop(baseline, on_sim, ctx.higher_is_better)
    disagree = abs(drop - drop_sim) > max_drop
    if disagree:
        log.info(
            f"[{profile.id}] {name}: the HTP and the Q/DQ simulation disagree: drop {drop:.4f} on the HTP, "
            f"{drop_sim:.4f} simulated, on the same {len(idx)} samples (budget {max_drop:g})"
        )
    ver = versions()
    basis = (
        f"HTP backend of onnxruntime-qnn {ver.get('onnxruntime_qnn')} (QAIRT {ver.get('qairt')}), emulated on x86, "
        f"soc_model {soc['soc_model']}; {len(idx)} of {len(ctx.evaluation)} evaluation samples (seeded), "
        "vs FP32 on the same samples"
    )
    record = {
        "available": True,
        "accuracy_basis": basis,
        "samples": len(idx),
        "samples_rule": why,
        "metric": round(on_npu, 6),
        "baseline_metric": round(baseline, 6),
        "drop": round(drop, 6),
        "simulated_metric": round(on_sim, 6),
        "simulated_drop": round(drop_sim, 6),
        "htp_vs_simulation": "disagree beyond the budget" if disagree else "agree within the budget",
        "seconds": round(seconds, 1),
        "soc": soc,
    }
    verdict = Verdict(
        "accuracy_drop_on_npu",
        max_drop,
        drop,
        drop <= max_drop,
        "metric units",
        basis,
        max_drop - drop,
    )
    return record, [verdict]


def context_binary(
    ctx: Context, profile: DeviceProfile, name: str, path: Path, folder: Path
) -> tuple[dict, dict | None]:
    """Compile the shipped variant for the profile's SoC, load it back with CPU fallback disabled and
    compare its outputs with the QDQ model's on the HTP. Returns (record, runtime.json entry or None)."""
    from exporter.qnn_htp import compile_context, htp_session, load_context, versions

    reason = unavailable()
    if reason is not None:
        return {"compiled": False, "reason": reason}, None
    if not ctx.loaded.recipe.quantize.npu.context_binary:
        return {"compiled": False, "reason": "quantize.npu.context_binary is false"}, None
    soc = soc_of(profile)
    if soc["soc_model"] is None:
        return {
            "compiled": False,
            "reason": f"profile {profile.id} names no `soc.soc_model` to compile for",
        }, None
    ctx_path = folder / f"{name}.ctx.onnx"
    log.info(f"[{profile.id}] {name}: compile the QNN context binary for soc_model {soc['soc_model']}")
    try:
        compiled = compile_context(path, ctx_path, soc_model=soc["soc_model"], htp_arch=soc["htp_arch"])
    except Exception as exc:  # the whole graph does not go to the HTP: listed, the preflight gate applies
        ctx_path.unlink(missing_ok=True)
        return {"compiled": False, "reason": " ".join(str(exc).split())[:400]}, None
    idx = subset_indices(ctx, 4)
    feeds = [ctx.evaluation.feed(int(i), int(i) + 1) for i in idx]
    qdq = htp_session(path, soc_model=soc["soc_model"], htp_arch=soc["htp_arch"], cpu_fallback=True)
    expected = [qdq.run(None, feed) for feed in feeds]
    got = load_context(ctx_path, feeds)
    diff = max(
        float(np.max(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64))))
        for e, g in zip(expected, got, strict=True)
        for a, b in zip(e, g, strict=True)
    )
    ver = versions()
    record = {
        "compiled": True,
        "file": f"{profile.id}/{ctx_path.name}",
        "bytes": compiled.get("bytes"),
        "sha256": compiled.get("sha256"),
        "seconds": compiled.get("seconds"),
        "soc": soc,
        "cpu_fallback": "disabled: every node runs on the HTP",
        "loaded_back": {"samples": len(feeds), "max_abs_diff_vs_qdq_on_htp": round(diff, 6), "ok": diff <= 1e-5},
        "versions": ver,
    }
    runtime_entry = {
        "model": ctx_path.name,
        "format": "onnx (EPContext: a QNN context binary inside)",
        "soc_model": soc["soc_model"],
        "htp_arch": soc["htp_arch"],
        "provider_options": {"backend_path": "libQnnHtp.so", "soc_model": str(soc["soc_model"])},
        "session_options": {"session.disable_cpu_ep_fallback": "1"},
        "qnn_sdk": ver.get("qairt"),
        "onnxruntime_qnn": ver.get("onnxruntime_qnn"),
        "onnxruntime": ver.get("onnxruntime"),
        "needs": "the QNN SDK libraries of this version on the device (a mismatched SDK fails to load the binary)",
    }
    return record, runtime_entry
