"""Real and realistic models judged on their task metric: FP32 vs edgex per profile vs onnxruntime's defaults.

Scenarios (each an example recipe, its data made here with ground truth):
  detector  examples/detector.yaml: YOLOv8-style head (boxes in pixels concatenated with class scores),
            mAP@0.5 against the true boxes of 200 rendered images
  ocr-det   examples/ocr-det.yaml: PP-OCRv4 det from rapidocr-onnxruntime, H-mean of DB boxes vs the true lines
  ocr-rec   examples/ocr-rec.yaml: PP-OCRv4 rec, exact match of CTC-decoded lines (CER beside it)
  ocr-cls   examples/ocr-cls.yaml: PP-OCR mobile text-direction classifier, top-1
  vad       examples/vad.yaml: Silero VAD v5 with its carried state, frame F1 against known speech
For each scenario and profile (raspberry-pi-5-cpu: onnxruntime CPU, deployed kernels; snapdragon-8-gen3-qnn:
Q/DQ simulated as the NPU runs it, plus the emulated HTP on a subset when onnxruntime-qnn is installed) the
real `build_profile` runs; the CPU table adds onnxruntime's quantize_static with its defaults (QDQ, uint8
activations, int8 weights, per-tensor, MinMax) on the same FP32 graph and calibration samples, and times
FP32, edgex's shipped variant and the peer on one thread, interleaved (speed-up = p50 FP32 / p50 model).

Run: nice -n 10 .venv/bin/python benchmarks/real_models.py [--only detector,ocr-cls] [--out FILE]
(about 20-40 min on 2 cores with the HTP emulation; needs `pip install 'edgex[models,qnn]'`)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.quantization import peer_ort_default  # noqa: E402
from benchmarks.suite import _ratio_interval  # noqa: E402
from exporter import log  # noqa: E402
from exporter.measure import evaluate_outputs, time_interleaved  # noqa: E402
from exporter.pipeline import build_profile, prepare  # noqa: E402
from exporter.pipeline import export_for as _export_for  # noqa: E402
from exporter.pipeline.context import query_feed  # noqa: E402
from exporter.recipe import BenchSection  # noqa: E402
from exporter.targets import get_target  # noqa: E402
from exporter.versions import host_facts, tool_versions  # noqa: E402

SCENARIOS = {
    "detector": "examples/detector.yaml",
    "ocr-det": "examples/ocr-det.yaml",
    "ocr-rec": "examples/ocr-rec.yaml",
    "ocr-cls": "examples/ocr-cls.yaml",
    "vad": "examples/vad.yaml",
}
PROFILES = ("raspberry-pi-5-cpu", "snapdragon-8-gen3-qnn")
TIMING = BenchSection(warmup_runs=3, min_runs=40, min_seconds=1.0, max_seconds=6.0)


def _metric(ctx, path: Path, mode: str) -> tuple[float, dict]:
    out = evaluate_outputs(path, ctx.evaluation.inputs, 2, path.stem, mode, ctx.evaluation.feeding)
    extras = ctx.metric_extras(out[0], ctx.evaluation.labels, ctx.reference[0]) if ctx.metric_extras else {}
    return float(ctx.metric_fn(out[0], ctx.evaluation.labels, ctx.reference[0])), extras


def _variant_row(v: dict) -> dict:
    npu = v.get("npu") or {}
    return {
        "name": v["name"],
        "value": v["metric"]["value"],
        "drop": v["metric"]["drop"],
        "evaluated": v["metric"]["evaluated"],
        "extras": v["metrics"],
        "ok": v["ok"],
        "activations": v["produced_by"].get("activations"),
        "kept": len(((v["produced_by"].get("search") or {}).get("kept_out_of_int8")) or []),
        "concat_parts": [c["kept_as"] for c in v["produced_by"].get("concat_parts") or []],
        "npu": {k: npu.get(k) for k in ("metric", "baseline_metric", "drop", "samples", "available") if k in npu}
        or None,
        "missed": [x["budget"] for x in v["verdicts"] if x["ok"] is False],
    }


def scenario(name: str, work: Path) -> dict:
    started = time.perf_counter()
    ctx = prepare(ROOT / SCENARIOS[name], list(PROFILES))
    result: dict = {
        "scenario": name,
        "recipe": SCENARIOS[name],
        "metric": ctx.metric_name,
        "baseline_metric": ctx.baseline_metric,
        "evaluation_samples": len(ctx.evaluation),
        "inputs": {s.name: list(s.shape) for s in ctx.inputs},
        "profiles": {},
    }
    cache: dict = {}
    for profile in ctx.profiles:
        stage = work / name / profile.id
        (stage / ".work").mkdir(parents=True)
        log.info(f"[real-models] {name}: edgex build for {profile.id}")
        record = build_profile(ctx, profile, stage, stage / ".work", cache)
        rows = {v["name"]: v for v in record["variants"]}
        entry = {
            "deliverable": record["deliverable"],
            "max_accuracy_drop": profile.budgets.max_accuracy_drop,
            "variants": [_variant_row(v) for v in record["variants"]],
        }
        if profile.id == PROFILES[0]:
            entry.update(_cpu_side_by_side(ctx, profile, stage, cache, rows, record["deliverable"]))
        result["profiles"][profile.id] = entry
    result["seconds"] = round(time.perf_counter() - started, 1)
    return result


def _cpu_side_by_side(ctx, profile, stage: Path, cache: dict, rows: dict, shipped: str) -> dict:
    """onnxruntime's defaults on the same FP32 graph, and the 1-thread speed of FP32, edgex and the peer."""
    target = get_target(profile.target)
    src, _ = _export_for(ctx, target, stage / ".work", cache, fusion="full")
    calib = ctx.calibration.take(ctx.loaded.recipe.quantize.calibration_samples, 0)
    peer_path = stage / "ort-default.onnx"
    peer: dict = {"name": "onnxruntime quantize_static defaults"}
    try:
        peer_ort_default(src, peer_path, calib.feeds(ctx.inputs[0].shape[0]))  # states and constants fed too
        peer["value"], peer["extras"] = _metric(ctx, peer_path, "deployed")
        peer["drop"] = ctx.baseline_metric - peer["value"]
    except Exception as exc:  # noqa: BLE001 - a peer that fails is a row saying so
        peer["error"] = f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:160]}"
    timed = {"FP32": stage / rows["baseline"]["artifact"]["path"]}
    if shipped != "baseline":
        timed[f"edgex {shipped}"] = stage / rows[shipped]["artifact"]["path"]
    if "error" not in peer:
        timed["peer"] = peer_path
    stats = time_interleaved(timed, query_feed(ctx), 1, TIMING, rounds=4)
    base = stats["FP32"]
    speed = {
        k: {"p50": s.p50, "speedup": base.p50 / s.p50, "interval": _ratio_interval(base.samples, s.samples)}
        for k, s in stats.items()
    }
    return {"peer": peer, "speed": speed}


def _cell(row: dict | None, metric: str) -> str:
    if row is None:
        return "—"
    if "error" in row:
        return f"failed: {row['error']}"
    return f"{row['value']:.4f} (drop {row['drop']:+.4f})"


def _missed(row: dict) -> str:
    return f"; missed {', '.join(row['missed'])}" if row.get("missed") else ""


def write(results: list[dict], out: Path, seconds: float, command: str) -> None:
    host = host_facts()
    lines = [
        "# Real models on their task metric: FP32 vs edgex vs onnxruntime's defaults",
        "",
        f"Generated by `{command}` in {seconds / 60:.1f} min on {time.strftime('%Y-%m-%d', time.gmtime())} (UTC); "
        "rerun it to refresh every number here.",
        "",
        f"Machine: {host['cpu']}, {host['cores']} cores (shared: compare ratios within a row). Versions: "
        + ", ".join(f"{k} {v}" for k, v in tool_versions().items() if k in ("onnxruntime", "onnxruntime-qnn", "torch"))
        + ".",
        "",
        "Metric values are against ground truth made here (boxes, lines, strings, speech segments); the drop is "
        "FP32 minus the model (positive = worse). CPU: onnxruntime's deployed kernels; QNN: Q/DQ simulated, and "
        "the emulated HTP on the build's seeded subset where onnxruntime-qnn is installed.",
        "",
        "| scenario | metric | FP32 | profile | edgex ships | edgex metric | HTP (subset) | onnxruntime defaults "
        "| speed-up edgex / defaults (1 thread) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for res in results:
        for pid, entry in res["profiles"].items():
            shipped = next(v for v in entry["variants"] if v["name"] == entry["deliverable"])
            npu = shipped.get("npu") or {}
            htp = "—"
            if npu.get("metric") is not None:
                htp = f"{npu['metric']:.4f} (FP32 {npu['baseline_metric']:.4f}) on {npu['samples']}"
            speed = entry.get("speed", {})
            edgex_speed = speed.get(f"edgex {entry['deliverable']}", speed.get("FP32"))
            sp = "—"
            if edgex_speed:
                sp = f"{edgex_speed['speedup']:.2f}x"
                if "peer" in speed:
                    sp += f" / {speed['peer']['speedup']:.2f}x"
            what = shipped["name"] + (f" ({shipped['activations']})" if shipped.get("activations") else "")
            if shipped["concat_parts"]:
                what += f", concat kept {'/'.join(shipped['concat_parts'])}"
            lines.append(
                f"| {res['scenario']} | {res['metric']} | {res['baseline_metric']:.4f} | {pid} | {what} | "
                f"{_cell(shipped, res['metric'])}{_missed(shipped)} | {htp} | "
                f"{_cell(entry.get('peer'), res['metric']) if pid == PROFILES[0] else '—'} | {sp} |"
            )
    lines += ["", "Every variant each build tried, with its further values:", ""]
    for res in results:
        lines.append(
            f"- **{res['scenario']}** ({res['recipe']}, {res['evaluation_samples']} samples, {res['seconds']:.0f} s):"
        )
        for pid, entry in res["profiles"].items():
            for v in entry["variants"]:
                extras = ", ".join(f"{k} {val:.4g}" for k, val in v["extras"].items())
                lines.append(
                    f"  - {pid} `{v['name']}`: {res['metric']} {v['value']:.4f} ({v['evaluated']}); {extras}"
                    + (f"; {v['kept']} tensor(s) kept out of INT8" if v["kept"] else "")
                )
            peer = entry.get("peer")
            if peer and "extras" in peer:
                extras = ", ".join(f"{k} {val:.4g}" for k, val in peer["extras"].items())
                lines.append(f"  - {pid} onnxruntime defaults: {res['metric']} {peer['value']:.4f}; {extras}")
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out.with_suffix(".json").write_text(json.dumps(results, indent=1, sort_keys=True, default=str) + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", help=f"Comma-separated scenarios (default: all of {', '.join(SCENARIOS)}).")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "REAL_MODELS.md")
    args = ap.parse_args(argv)
    names = args.only.split(",") if args.only else list(SCENARIOS)
    unknown = sorted(set(names) - set(SCENARIOS))
    if unknown:
        ap.error(f"unknown scenario(s) {unknown}; choose from {', '.join(SCENARIOS)}")
    started = time.perf_counter()
    out = args.out.resolve()
    here = os.getcwd()
    # libraries' INFO logs (onnx_ir passes, onnxruntime's QNN notices) stay out, as in the CLI
    with tempfile.TemporaryDirectory(prefix="edgex-real-") as tmp, log.stdout_to_stderr(), log.quiet_libraries():
        os.chdir(tmp)
        try:
            results = [scenario(n, Path(tmp)) for n in names]
        finally:
            os.chdir(here)
    command = "benchmarks/real_models.py" + (f" --only {args.only}" if args.only else "")
    write(results, out, time.perf_counter() - started, command)
    print(out.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
