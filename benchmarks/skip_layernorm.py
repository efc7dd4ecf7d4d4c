"""Why quantized transformers ship without intermediate shape annotations (exporter/quant/shape_annotations.py).

1. Kernel: onnxruntime's SkipLayerNormalization (what the CPU provider fuses a residual Add and a
   LayerNormalization into when it can prove their shapes) against the Add + LayerNormalization it
   replaces, at BERT-base-like and MiniLM shapes, one thread, timed side by side.
2. Model: a real INT8 MiniLM (dynamic and static QDQ, as the quantizer writes them, with and
   without graph.value_info), how many SkipLayerNormalization nodes onnxruntime's load-time
   optimizer makes, and the p50 of each at one thread, interleaved, against the FP32 export.

Run: .venv/bin/python benchmarks/skip_layernorm.py [--out benchmarks/SKIP_LAYERNORM.md]
"""

from __future__ import annotations

import argparse
import collections
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto
from onnx import helper as oh

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "examples"))

from exporter.measure import time_interleaved  # noqa: E402
from exporter.recipe import BenchSection  # noqa: E402
from exporter.versions import host_facts, tool_versions  # noqa: E402

SETTINGS = BenchSection(warmup_runs=20, min_runs=400, min_seconds=2.0, max_seconds=10.0)


def _kernel_model(kind: str, rows: int, hidden: int) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    inits = [onnx.numpy_helper.from_array(rng.standard_normal(hidden).astype(np.float32), n) for n in ("g", "b")]
    # no shapes, as after a quantized MatMul without annotations: onnxruntime cannot prove them, so the pair
    # stays unfused (checked below on the file as loaded)
    shape = None if kind.startswith("Add") else [1, rows, hidden]
    x, s, y = (oh.make_tensor_value_info(n, TensorProto.FLOAT, shape) for n in ("x", "s", "y"))
    if kind == "Add + LayerNormalization":
        nodes = [
            oh.make_node("Add", ["x", "s"], ["t"]),
            oh.make_node("LayerNormalization", ["t", "g", "b"], ["y"], axis=-1, epsilon=1e-12),
        ]
    else:
        nodes = [oh.make_node("SkipLayerNormalization", ["x", "s", "g", "b"], ["y"], domain="com.microsoft")]
    graph = oh.make_graph(nodes, kind, [x, s], [y], inits)
    opsets = [oh.make_opsetid("", 18), oh.make_opsetid("com.microsoft", 1)]
    return oh.make_model(graph, opset_imports=opsets)


def kernels(work: Path) -> list[dict]:
    rows = []
    for tokens, hidden in ((128, 384), (128, 768)):
        paths = {}
        for kind in ("Add + LayerNormalization", "SkipLayerNormalization"):
            paths[kind] = work / f"{kind.replace(' ', '')}-{tokens}x{hidden}.onnx"
            onnx.save(_kernel_model(kind, tokens, hidden), str(paths[kind]))
        rng = np.random.default_rng(1)
        feed = {n: rng.standard_normal((1, tokens, hidden)).astype(np.float32) for n in ("x", "s")}
        stats = time_interleaved(paths, feed, 1, SETTINGS, rounds=6)
        row = {"shape": f"[1, {tokens}, {hidden}]", **{k: stats[k].p50 * 1000 for k in paths}}  # us
        row["fused as loaded"] = _fused_counts(paths["Add + LayerNormalization"], work)["SkipLayerNormalization"]
        rows.append(row)
    return rows


def _fused_counts(path: Path, work: Path) -> dict:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.optimized_model_filepath = str(work / f"{path.stem}-as-loaded.onnx")
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    counts = collections.Counter(n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node)
    return {k: counts[k] for k in ("SkipLayerNormalization", "LayerNormalization")}


def minilm(work: Path) -> list[dict]:
    from exporter.pipeline import prepare
    from exporter.quant.dynamic import quantize_dynamic_int8
    from exporter.quant.shape_annotations import drop_shape_annotations
    from exporter.quantize import quantize_int8
    from exporter.targets import get_target

    ctx = prepare(ROOT / "examples" / "minilm.yaml", ["raspberry-pi-5-cpu"])
    fp32 = ctx.model.hf.canonical_onnx
    preset = get_target("cpu").quantization
    preset = preset.model_copy(update={"op_types": preset.transformer_op_types})
    settings = ctx.loaded.recipe.quantize.model_copy(update={"speed_guard": False})
    paths = {"FP32": fp32}
    paths["dynamic INT8, as quantized"] = work / "dynamic.onnx"
    quantize_dynamic_int8(fp32, paths["dynamic INT8, as quantized"])
    paths["static QDQ INT8, as quantized"] = work / "static.onnx"
    quantize_int8(fp32, paths["static QDQ INT8, as quantized"], ctx.calibration, settings, preset, 1, 0)
    for kind in ("dynamic", "static QDQ"):
        stripped = work / f"{kind.replace(' ', '-')}-stripped.onnx"
        stripped.write_bytes(paths[f"{kind} INT8, as quantized"].read_bytes())
        drop_shape_annotations(stripped)
        paths[f"{kind} INT8, annotations dropped"] = stripped
    feed = {s.name: ctx.evaluation.inputs[s.name][:1] for s in ctx.inputs}
    stats = time_interleaved(paths, feed, 1, SETTINGS.model_copy(update={"max_seconds": 20.0}), rounds=8)
    base = stats["FP32"].p50
    return [
        {"model": k, "p50_ms": stats[k].p50, "speedup": base / stats[k].p50, **_fused_counts(p, work)}
        for k, p in paths.items()
    ]


def write(kernel_rows: list[dict], model_rows: list[dict], out: Path) -> None:
    lines = [
        "# SkipLayerNormalization on onnxruntime's CPU provider",
        "",
        "Generated by `.venv/bin/python benchmarks/skip_layernorm.py`; do not edit by hand. One thread, p50, "
        "models timed round-robin in one process (ratios are the result: the host is shared).",
        "",
        f"Host: {host_facts()}; onnxruntime {tool_versions().get('onnxruntime')}.",
        "",
        "## The kernel",
        "",
        "| input shape | Add + LayerNormalization (us) | SkipLayerNormalization (us) | fused / unfused |",
        "|---|---|---|---|",
    ]
    for r in kernel_rows:
        a, b = r["Add + LayerNormalization"], r["SkipLayerNormalization"]
        assert r["fused as loaded"] == 0, "the unfused pair was fused at load: the comparison would be void"
        lines.append(f"| {r['shape']} | {a:.1f} | {b:.1f} | {b / a:.2f}x |")
    lines += [
        "",
        "## all-MiniLM-L6-v2 INT8 (sequence 128), as onnxruntime loads it",
        "",
        "| model | SkipLayerNormalization after load | LayerNormalization after load | p50 ms | vs FP32 |",
        "|---|---|---|---|---|",
    ]
    for r in model_rows:
        lines.append(
            f"| {r['model']} | {r['SkipLayerNormalization']} | {r['LayerNormalization']} | {r['p50_ms']:.2f} | "
            f"{r['speedup']:.2f}x |"
        )
    lines += [
        "",
        "The quantizer's pre-processing annotates every intermediate shape; with them onnxruntime fuses "
        "the residual Add and LayerNormalization behind quantized MatMuls into SkipLayerNormalization. "
        "edgex drops the annotations from the quantized transformers it ships for CPU runtimes "
        "(`exporter/quant/shape_annotations.py`).",
        "",
    ]
    out.write_text("\n".join(lines), encoding="utf-8")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "SKIP_LAYERNORM.md")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="edgex-sln-") as tmp:
        work = Path(tmp)
        kernel_rows = kernels(work)
        model_rows = minilm(work)
    write(kernel_rows, model_rows, args.out)
    print(args.out.read_text(encoding="utf-8"))


if __name__ == "__main__":
    main()
