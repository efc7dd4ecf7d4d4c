"""Static INT8, dynamic INT8 and INT4 on all-MiniLM-L6-v2 against the peers, and the speed guard on
a mobilenet_v3_small built in code: one run, every model timed side by side on one thread.

MiniLM (sequence 128, batch 1): fidelity = mean cosine of the sentence embeddings against FP32
PyTorch on the 256 held-out sentences of examples/minilm.yaml; speed = p50 ratio against the best
FP32 ONNX edgex ships (for MiniLM the faster of the fused and plain graphs, raced in the build), models timed round-robin in one process.
Peers: onnxruntime `quantize_static` defaults (QDQ S8S8, all ops, MinMax) on the plain export;
Optimum's `AutoQuantizationConfig.avx512_vnni(is_static=True)` through ORTQuantizer.quantize
(ranges from Optimum's own calibrator; its `fit()` needs the `datasets` package, so the same
calibrator is fed directly); onnxruntime dynamic INT8 with per-channel weights. edgex: its static
INT8 search as a build runs it (every step the search tried is a point of the curve), its
dynamic variant, INT4 (RTN and HQQ).

Run: .venv/bin/python benchmarks/quantization.py [--out benchmarks/QUANTIZATION.md]   (~10 min)
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.smoothquant import smooth  # noqa: E402
from exporter import log  # noqa: E402
from exporter.bench.estimate import host_ceilings  # noqa: E402
from exporter.pipeline import evaluator as _evaluator  # noqa: E402
from exporter.pipeline import export_for as _export_for  # noqa: E402
from exporter.pipeline import prepare  # noqa: E402
from exporter.quant.calibration import FeedReader, batches  # noqa: E402
from exporter.quant.dynamic import quantize_dynamic_int8  # noqa: E402
from exporter.quant.shape_annotations import drop_shape_annotations  # noqa: E402
from exporter.quant.weight_only import quantize_int4  # noqa: E402
from exporter.quantize import quantize_int8  # noqa: E402
from exporter.recipe import Int4Settings  # noqa: E402
from exporter.runtime import make_session  # noqa: E402
from exporter.targets import get_target  # noqa: E402
from exporter.versions import host_facts, tool_versions  # noqa: E402


def _quiet(fn, *args, **kwargs):
    with log.quiet_libraries():
        return fn(*args, **kwargs)


def peer_ort_default(fp32: Path, out: Path, feeds) -> Path:
    from onnxruntime.quantization import quantize_static

    _quiet(quantize_static, str(fp32), str(out), FeedReader(feeds))
    return out


def peer_optimum_static(fp32: Path, work: Path, feeds) -> Path:
    from optimum.onnxruntime import ORTQuantizer
    from optimum.onnxruntime.configuration import AutoCalibrationConfig, AutoQuantizationConfig

    folder = work / "optimum"
    folder.mkdir()
    model = folder / "model.onnx"
    model.write_bytes(fp32.read_bytes())
    config = AutoQuantizationConfig.avx512_vnni(is_static=True, per_channel=False)
    quantizer = ORTQuantizer.from_pretrained(folder, file_name="model.onnx")
    # minmax() only records the dataset's name, split and size: describe ours without `datasets`.
    described = SimpleNamespace(
        info=SimpleNamespace(builder_name="pydoc-topics", config_name="calibration"),
        split="calibration",
        num_rows=len(feeds),
    )
    calibration = AutoCalibrationConfig.minmax(described)
    quantizer._calibrator = calibration.create_calibrator(
        onnx_model_path=model.as_posix(),
        augmented_model_name=(folder / "augmented.onnx").as_posix(),
        operators_to_quantize=config.operators_to_quantize,
    )
    quantizer._calibrator.collect_data(FeedReader(feeds))
    ranges = quantizer.compute_ranges()
    _quiet(quantizer.quantize, config, save_dir=folder / "out", calibration_tensors_range=ranges)
    return folder / "out" / "model_quantized.onnx"


def peer_ort_dynamic(fp32: Path, out: Path) -> Path:
    """onnxruntime `quantize_dynamic` with its defaults (int8 weights per tensor, every op type it knows)."""
    from onnxruntime.quantization import quantize_dynamic

    _quiet(quantize_dynamic, str(fp32), str(out))
    return out


def peer_optimum_dynamic(fp32: Path, work: Path, preset: str = "arm64") -> Path:
    """Optimum's dynamic preset for a CPU family (`AutoQuantizationConfig.arm64(is_static=False)` by default)."""
    from optimum.onnxruntime import ORTQuantizer
    from optimum.onnxruntime.configuration import AutoQuantizationConfig

    folder = work / f"optimum-{preset}-dynamic"
    folder.mkdir()
    (folder / "model.onnx").write_bytes(fp32.read_bytes())
    config = getattr(AutoQuantizationConfig, preset)(is_static=False, per_channel=False)
    quantizer = ORTQuantizer.from_pretrained(folder, file_name="model.onnx")
    _quiet(quantizer.quantize, config, save_dir=folder / "out")
    return folder / "out" / "model_quantized.onnx"


def time_round_robin(paths: dict[str, Path], feed: dict[str, np.ndarray], rounds: int, runs: int) -> dict[str, float]:
    """p50 ms per model on one thread; models alternate run by run so drift hits them alike."""
    sessions = {n: make_session(p, 1) for n, p in paths.items()}
    feeds = {n: {i.name: feed[i.name] for i in s.get_inputs()} for n, s in sessions.items()}
    for n, s in sessions.items():
        for _ in range(3):
            s.run(None, feeds[n])
    times: dict[str, list[float]] = {n: [] for n in paths}
    for r in range(rounds):
        order = list(sessions) if r % 2 == 0 else list(reversed(sessions))
        log.info(f"timing round {r + 1}/{rounds} ({len(order)} models x {runs} runs)")
        for _ in range(runs):
            for n in order:
                t0 = time.perf_counter()
                sessions[n].run(None, feeds[n])
                times[n].append(time.perf_counter() - t0)
    return {n: float(np.median(t)) * 1e3 for n, t in times.items()}


def minilm(work: Path) -> tuple[list[dict], dict]:
    ctx = prepare(ROOT / "examples" / "minilm.yaml", ["raspberry-pi-5-cpu"])
    target = get_target("cpu")
    cache: dict = {}
    fused, _ = _export_for(ctx, target, work, cache)
    for_int8, _ = _export_for(ctx, target, work, cache, fusion="for-int8")
    plain, _ = _export_for(ctx, target, work, cache, fusion="none")
    evaluate = _evaluator(ctx, "deployed", 2)
    batch = ctx.inputs[0].shape[0]
    calib = ctx.calibration.take(ctx.loaded.recipe.quantize.calibration_samples, 0)
    feeds = batches(calib.inputs, batch)
    feed = {s.name: ctx.evaluation.inputs[s.name][:batch] for s in ctx.inputs}

    rows: list[dict] = []

    def add(name: str, path: Path, kind: str, note: str = "") -> None:
        drop = evaluate(path)
        rows.append({"name": name, "path": path, "kind": kind, "cosine": 1 - drop, "note": note})
        log.info(f"{name}: cosine {1 - drop:.4f}")

    add("FP32 (edgex baseline)", fused, "fp32")
    add("FP32 graph quantization starts from", for_int8, "fp32", "Attention and Gelu unfused")
    log.info("peer: onnxruntime quantize_static defaults")
    add("peer: onnxruntime quantize_static defaults", peer_ort_default(plain, work / "peer-ort.onnx", feeds), "peer")
    log.info("peer: Optimum avx512_vnni static")
    add("peer: Optimum avx512_vnni static", peer_optimum_static(plain, work, feeds), "peer", "QDQ u8/s8 per-tensor")
    dyn = work / "dynamic.onnx"
    quantize_dynamic_int8(fused, dyn)
    drop_shape_annotations(dyn)  # as the build ships it for CPU runtimes (quant/shape_annotations.py)
    add("onnxruntime dynamic INT8 per-channel (= edgex int8-dynamic)", dyn, "dynamic", "not deployable on NPUs")

    steps_dir = work / "steps"
    steps_dir.mkdir()
    settings = ctx.loaded.recipe.quantize
    chosen = work / "edgex-int8.onnx"
    transformer_preset = target.quantization.model_copy(update={"op_types": target.quantization.transformer_op_types})
    res = quantize_int8(
        for_int8,
        chosen,
        ctx.calibration,
        settings,
        transformer_preset,
        batch,
        0,
        evaluate=evaluate,
        budget=0.01,
        speed_feed=feed,
        speed_baseline=fused,
        label="minilm",
        keep_dir=steps_dir,
        split_sinks=True,  # as the build does for a CPU target
    )
    step_files = sorted(steps_dir.glob("step*.onnx"))
    for step, path in zip(res.search["steps"], step_files, strict=True):
        rows.append(
            {"name": f"edgex search: {step['step']}", "path": path, "kind": "curve", "cosine": 1 - step["drop"]}
        )
    drop_shape_annotations(chosen)
    add("edgex static INT8 (searched, shipped)", chosen, "edgex", f"{len(res.search['kept_out_of_int8'])} kept float")
    # What the sink split bought and what SmoothQuant would have: the same quantizer without the split
    unsplit = work / "edgex-int8-unsplit.onnx"
    res_unsplit = _without_sink_split(
        quantize_int8, for_int8, unsplit, ctx.calibration, settings, transformer_preset, batch, 0,
        evaluate=evaluate, budget=0.01, label="minilm, no sink split", split_sinks=True,
    )  # fmt: skip
    drop_shape_annotations(unsplit)
    kept = len(res_unsplit.search["kept_out_of_int8"])
    add("edgex static INT8 searched, without the sink split", unsplit, "ablation", f"{kept} kept float")
    no_search = settings.model_copy(update={"search": settings.search.model_copy(update={"enabled": False})})
    for name, src in (("every MatMul INT8, no sink split", for_int8),
                      ("SmoothQuant alpha 0.5, every MatMul INT8, no sink split",
                       smooth(for_int8, work / "smoothed.onnx", feeds[:32], 0.5))):  # fmt: skip
        out = work / f"{len(rows)}-ablation.onnx"
        _without_sink_split(
            quantize_int8, src, out, ctx.calibration, no_search, transformer_preset, batch, 0, label=name
        )
        drop_shape_annotations(out)
        add(name, out, "ablation")
    for alg, block in (("rtn", 16), ("hqq", 32)):
        p = work / f"int4-{alg}{block}.onnx"
        quantize_int4(plain, p, Int4Settings(algorithm=alg, block_size=block), "qoperator", [])
        add(f"edgex INT4 {alg.upper()} block {block}", p, "int4")
    log.info("timing every MiniLM model side by side, 1 thread")
    p50 = time_round_robin({r["name"]: r["path"] for r in rows}, feed, rounds=4, runs=6)
    base = p50[rows[0]["name"]]
    fp32_bytes = fused.stat().st_size
    for r in rows:
        r["p50"] = p50[r["name"]]
        r["speedup"] = base / r["p50"]
        r["size"] = r["path"].stat().st_size / fp32_bytes
    return rows, {"search": res.search, "speed_guard": res.speed_guard}


def _without_sink_split(fn, *args, **kwargs):
    """FN as edgex ran before exporter/quant/sink_token.py existed (for the ablation rows)."""
    import exporter.quantize as q

    saved = q.split_sink_rows
    q.split_sink_rows = lambda model, feeds: (model, [])
    try:
        return fn(*args, **kwargs)
    finally:
        q.split_sink_rows = saved


def mobilenet(work: Path) -> list[dict]:
    """The speed guard on a 224x224 mobilenet_v3_small (random weights with BatchNorm recalibrated, so the
    logits depend on the input and their cosine measures something; fidelity = cosine of logits)."""
    import torch

    from benchmarks.models import mobilenet_v3_small_calibrated
    from exporter.data import make_dataset
    from exporter.metrics import cosine
    from exporter.recipe import QuantizeSection
    from exporter.runtime import run_all

    net = mobilenet_v3_small_calibrated()
    fp32 = work / "mnv3.onnx"
    torch.onnx.export(net, torch.randn(1, 3, 224, 224), str(fp32), input_names=["x"], opset_version=18, dynamo=False)
    rng = np.random.default_rng(0)
    data = make_dataset({"x": rng.standard_normal((48, 3, 224, 224)).astype(np.float32)}, None)
    ref = run_all(make_session(fp32), data.inputs)[0]

    def evaluate(path: Path) -> float:
        return 1 - cosine(run_all(make_session(path, 2), data.inputs)[0], None, ref)

    feed = {"x": data.inputs["x"][:1]}
    target = get_target("cpu")
    rows = [{"name": "FP32", "path": fp32}]
    default = work / "mnv3-ort-default.onnx"
    from onnxruntime.quantization import quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepped = work / "mnv3-pre.onnx"
    quant_pre_process(str(fp32), str(prepped), skip_symbolic_shape=True)
    _quiet(quantize_static, str(prepped), str(default), FeedReader(batches(data.inputs, 1, 16)))
    rows.append({"name": "peer: onnxruntime quantize_static defaults (S8S8)", "path": default})
    plain = work / "mnv3-cpu-preset.onnx"
    quantize_int8(fp32, plain, data, QuantizeSection(calibration_samples=16), target.quantization, 1, 0)
    rows.append({"name": "cpu preset, every op type (no guard)", "path": plain})
    guarded = work / "mnv3-edgex.onnx"
    res = quantize_int8(
        fp32,
        guarded,
        data,
        QuantizeSection(calibration_samples=16),
        target.quantization,
        1,
        0,
        evaluate=evaluate,
        budget=0.02,
        speed_feed=feed,
        label="mobilenet",
    )
    rows.append(
        {"name": f"edgex INT8 with speed guard ({res.speed_guard.get('chosen', 'as searched')})", "path": guarded}
    )
    p50 = time_round_robin({r["name"]: r["path"] for r in rows}, feed, rounds=4, runs=25)
    for r in rows:
        r["p50"] = p50[r["name"]]
        r["speedup"] = p50["FP32"] / r["p50"]
        r["cosine"] = 1 - evaluate(r["path"])
        r["size"] = r["path"].stat().st_size / fp32.stat().st_size
    rows[-1]["guard"] = res.speed_guard
    return rows


def simd_flags() -> str:
    """The integer-dot-product extensions that decide INT8 GEMM speed, from /proc/cpuinfo."""
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown (no /proc/cpuinfo)"
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    have = [f for f in wanted if f in flags]
    return ", ".join(have) if have else "none of " + ", ".join(wanted)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    style = {
        "fp32": ("k", "s"),
        "peer": ("tab:red", "x"),
        "dynamic": ("tab:orange", "D"),
        "curve": ("tab:blue", "o"),
        "edgex": ("tab:green", "*"),
        "int4": ("tab:purple", "^"),
        "ablation": ("tab:gray", "v"),
    }
    for r in rows:
        color, marker = style[r["kind"]]
        ax.scatter(r["speedup"], r["cosine"], c=color, marker=marker, s=120 if r["kind"] == "edgex" else 40)
        if r["kind"] != "curve":
            ax.annotate(
                r["name"].replace("peer: ", ""),
                (r["speedup"], r["cosine"]),
                fontsize=6,
                xytext=(4, -3),
                textcoords="offset points",
            )
    curve = sorted((r for r in rows if r["kind"] == "curve"), key=lambda r: r["speedup"])
    ax.plot([r["speedup"] for r in curve], [r["cosine"] for r in curve], c="tab:blue", lw=0.8, alpha=0.6)
    ax.axhline(0.99, ls=":", c="grey")
    ax.axvline(2.0, ls=":", c="grey")
    ax.set_xlabel("speed-up vs best FP32 ONNX (p50, 1 thread, same run)")
    ax.set_ylabel("mean cosine vs FP32 PyTorch")
    ax.set_title("all-MiniLM-L6-v2, seq 128: static INT8 search steps (blue), peers (red)")
    ax.set_ylim(max(0.0, min(r["cosine"] for r in rows) - 0.05), 1.005)
    fig.tight_layout()
    fig.savefig(path, dpi=120, metadata={"Software": None})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "QUANTIZATION.md")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="edgex-bench-quant-") as tmp:
        work = Path(tmp)
        rows, info = minilm(work)
        mrows = mobilenet(work)
        ceilings = host_ceilings(1)
        png = args.out.with_name("quantization_curve.png")
        plot(rows, png)
    lines = [
        "# Quantization on this host: MiniLM static INT8 vs peers, INT4, and the speed guard",
        "",
        f"Generated by `benchmarks/quantization.py`. Host: {host_facts()}. Versions: {tool_versions()}.",
        "",
        f"Host GEMM ceilings measured by edgex (1 thread): FP32 {ceilings['fp32']:.1f} GMAC/s, "
        f"u8s8 {ceilings['int8']:.1f} GMAC/s ({ceilings['int8'] / ceilings['fp32']:.2f}x); the CPU's vector "
        f"extensions: {simd_flags()}. An integer GEMM is at most that ratio faster than a float one here, and "
        "an INT8 transformer stays below it once the float ops around the GEMMs (softmax, LayerNorm, GELU, "
        "Q/DQ) are counted. The ratio differs widely between CPUs: rerun this script on yours.",
        "",
        "## all-MiniLM-L6-v2 (sequence 128, batch 1, 1 thread)",
        "",
        "| model | mean cosine | p50 ms | speed-up vs FP32 | size vs FP32 | note |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['name']} | {r['cosine']:.4f} | {r['p50']:.2f} | {r['speedup']:.2f}x | {100 * r['size']:.0f}% | "
            f"{r.get('note', '')} |"
        )
    kept = info["search"]["kept_out_of_int8"]
    lines += [
        "",
        f"![cosine vs speed-up]({png.name})",
        "",
        f"The search kept {len(kept)} tensor(s) in float: "
        + ", ".join(f"`{k['tensor']}` ({k['sqnr_db']} dB, {k['cost']} cost)" for k in kept)
        + f". Speed guard: {info['speed_guard']}.",
        "",
        "## mobilenet_v3_small, 224x224 (random weights, BatchNorm recalibrated; cosine of logits vs FP32)",
        "",
        "| model | cosine | p50 ms | speed-up vs FP32 | size vs FP32 |",
        "|---|---|---|---|---|",
    ]
    for r in mrows:
        lines.append(
            f"| {r['name']} | {r['cosine']:.4f} | {r['p50']:.3f} | {r['speedup']:.2f}x | {100 * r['size']:.0f}% |"
        )
    lines += ["", f"Speed guard record: {mrows[-1]['guard']}", ""]
    args.out.write_text("\n".join(lines), encoding="utf-8")
    print(f"wrote {args.out} and {png}")


if __name__ == "__main__":
    main()
