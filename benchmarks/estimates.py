"""Fit edgex's device-latency model on published Snapdragon NPU latencies and measure it out of sample.

    python -m benchmarks.estimates            # export the zoo (cached), fit, write ESTIMATES.md + fit files
    python -m benchmarks.estimates --refresh-published /path/to/ai-hub-models.git
                                              # re-read the published figures into published_latency.yaml

Why: the device estimate must be worth judging on. Qualcomm AI Hub publishes, per model, device and
precision, the latency its jobs measured; the zoo (benchmarks/arch_zoo.py) rebuilds those
architectures so their work can be counted (exporter/bench/device_fit.py), a non-negative linear model
is fitted per device and precision on all models, and each model is predicted by a fit that never saw
it (leave-one-model-out) to report the error honestly. Output is deterministic (sorted, rounded).
"""

from __future__ import annotations

import argparse
import subprocess
import time
from pathlib import Path

import onnx
import yaml

from benchmarks.arch_zoo import IMAGE, ZOO, export
from exporter.bench.device_fit import error_summary, fit, graph_features, leave_one_out, predict_ms, shares

ROOT = Path(__file__).resolve().parent.parent
PUBLISHED = ROOT / "benchmarks" / "published_latency.yaml"
REPORT = ROOT / "benchmarks" / "ESTIMATES.md"
FITS = ROOT / "device_profiles" / "fits"
CACHE = ROOT / "build" / "arch_zoo"
REPO = "https://github.com/quic/ai-hub-models"
COMMIT = "b61a009028de5420032377d9e6bd7280aae24c74"
TAG = "v0.47.0"
DEVICES = {  # AI Hub device name -> edgex profile id
    "Samsung Galaxy S24": "snapdragon-8-gen3-qnn",
    "SA8295P ADP": "sa8295p-qnn",
    "SA8775P ADP": "sa8775p-qnn",
    "Samsung Galaxy S25": "snapdragon-8-elite-qnn",
}
PRECISIONS = {"w8a8": "int8", "w8a16": "a16w8"}  # AI Hub precision -> edgex compute precision key in fit files
# One feature set for every device and precision, chosen up front from the devices' LOO errors (see ESTIMATES.md).
FEATURES = ("dense_macs", "act_elems", "const")
# The zoo's only transformer: no other fitted model has attention, so a leave-one-out prediction of it
# is an extrapolation, not a test. It is kept out of the fits and reported as an out-of-domain check;
# estimates of graphs outside the fitted MatMul/attention shares say so (device_fit.in_domain).
OUT_OF_DOMAIN = {"vit": "the only transformer (attention) among the published models"}
MIN_MODELS = 6  # fewer published models than this: no fit (a band from 5 points is not a band)


# ---- published figures ---------------------------------------------------------------------------------------
def refresh_published(git_dir: Path) -> None:
    """Read every zoo model's perf.yaml at the pinned commit into published_latency.yaml (onnx and qnn_dlc)."""
    rows = []
    for model in sorted(ZOO):
        rel = f"qai_hub_models/models/{model}/perf.yaml"
        text = subprocess.run(
            ["git", "-C", str(git_dir), "show", f"{COMMIT}:{rel}"], capture_output=True, text=True, check=True
        ).stdout
        perf = yaml.safe_load(text)
        for prec, pdata in sorted(perf.get("precisions", {}).items()):
            if prec not in PRECISIONS:
                continue
            for _component, cdata in sorted(pdata["components"].items()):
                for device, runtimes in sorted(cdata.get("performance_metrics", {}).items()):
                    if device not in DEVICES:
                        continue
                    for runtime in ("onnx", "qnn_dlc"):
                        entry = runtimes.get(runtime)
                        if not entry or entry.get("job_status") != "Passed":
                            continue
                        layers = entry.get("layer_counts", {})
                        rows.append(
                            {"model": model, "device": device, "precision": prec, "runtime": runtime,
                             "latency_ms": float(entry["inference_time_milliseconds"]),
                             "layers_total": layers.get("total"), "layers_cpu": layers.get("cpu", 0),
                             "input_shape": "x".join(map(str, IMAGE)), "source": rel}
                        )  # fmt: skip
    doc = {
        "about": (
            "Published per-device latencies of Qualcomm AI Hub models (inference_time_milliseconds of each "
            "perf.yaml), the data the device-latency fit is made on. Runtime onnx = onnxruntime QNN EP, "
            "qnn_dlc = QNN's own runtime. Regenerate: python -m benchmarks.estimates --refresh-published <git dir>."
        ),
        "repository": REPO,
        "commit": COMMIT,
        "tag": TAG,
        "rows": rows,
    }
    PUBLISHED.write_text(yaml.safe_dump(doc, sort_keys=True, width=120))


def choose(rows: list[dict]) -> dict[tuple[str, str], dict[str, dict]]:
    """Per (device, precision): one figure per model. onnx (what edgex ships) when published, else
    qnn_dlc; an onnx figure more than 2x the same job's qnn_dlc figure is the EP leaving part of the
    graph on the CPU (densenet121 w8a8 on the S25: 374 of 880 layers on CPU) and is not the NPU's
    latency: the qnn_dlc figure is used and the choice recorded."""
    by: dict[tuple, dict] = {}
    for r in rows:
        by.setdefault((r["device"], r["precision"], r["model"]), {})[r["runtime"]] = r
    out: dict[tuple[str, str], dict[str, dict]] = {}
    for (device, prec, model), rts in sorted(by.items()):
        pick = rts.get("onnx")
        note = "onnx"
        if pick is None:
            pick, note = rts["qnn_dlc"], "qnn_dlc (no onnx figure published)"
        elif "qnn_dlc" in rts and pick["latency_ms"] > 2 * rts["qnn_dlc"]["latency_ms"]:
            pick = rts["qnn_dlc"]
            note = f"qnn_dlc (onnx {rts['onnx']['latency_ms']} ms has {rts['onnx']['layers_cpu']} layers on CPU)"
        out.setdefault((device, prec), {})[model] = {**pick, "note": note}
    return out


def inconsistent(chosen: dict[tuple[str, str], dict[str, dict]], limit: float = 2.0) -> dict[tuple, str]:
    """Figures that disagree with the same model's figures on the other devices, decided from the
    data alone (before any fit): each device's speed relative to another is the median over the
    (model, precision) figures both publish of its latency over the other's; a figure more than `limit` x off what that speed and the
    model's figures elsewhere imply is flagged (SA8775P's densenet121 w8a8 is 11.7 ms where the
    SA8295P, a slower chip, publishes 3.5 ms). Flagged figures are left out of the fits and listed."""
    import statistics

    flagged: dict[tuple, str] = {}
    precisions = sorted({p for _, p in chosen})
    for prec in precisions:
        devices = [d for d in DEVICES if (d, prec) in chosen]
        for dev in devices:
            for model, row in sorted(chosen[(dev, prec)].items()):
                implied = []
                for other in devices:
                    if other == dev or model not in chosen[(other, prec)]:
                        continue
                    speed = statistics.median(
                        chosen[(dev, p)][m]["latency_ms"] / chosen[(other, p)][m]["latency_ms"]
                        for p in precisions
                        if (dev, p) in chosen and (other, p) in chosen
                        for m in chosen[(dev, p)]
                        if m in chosen[(other, p)] and (m, p) != (model, prec)
                    )
                    implied.append(speed * chosen[(other, prec)][model]["latency_ms"])
                if len(implied) < 2:
                    continue
                expected = statistics.median(implied)
                ratio = row["latency_ms"] / expected
                if max(ratio, 1 / ratio) > limit:
                    flagged[(dev, prec, model)] = (
                        f"{row['latency_ms']} ms published, {expected:.2f} ms implied by the other devices ({ratio:.1f}x)"
                    )
    return flagged


# ---- fitting and the report ------------------------------------------------------------------------------
def features_of_zoo() -> dict[str, dict[str, float]]:
    return {name: graph_features(onnx.load(str(export(name, CACHE))), {"image": IMAGE}) for name in sorted(ZOO)}


def _r(x: float, digits: int = 4) -> float:
    return float(f"{x:.{digits}g}")


def run() -> float:
    """Everything from the published table and the (cached) zoo; returns the seconds it took."""
    start = time.perf_counter()
    published = yaml.safe_load(PUBLISHED.read_text())
    feats = features_of_zoo()
    chosen = choose(published["rows"])
    flagged = inconsistent(chosen)
    FITS.mkdir(parents=True, exist_ok=True)
    sections, fit_docs, verdicts = [], {}, []
    for (device, prec), models in sorted(chosen.items(), key=lambda kv: (list(DEVICES).index(kv[0][0]), kv[0][1])):
        key, profile = PRECISIONS[prec], DEVICES[device]
        used = {m: p for m, p in models.items() if m not in OUT_OF_DOMAIN and (device, prec, m) not in flagged}
        rows = [{"model": m, "features": feats[m], "latency_ms": p["latency_ms"]} for m, p in sorted(used.items())]
        if len(rows) < MIN_MODELS:
            sections.append(
                f"### {device} — `{profile}`, {prec}\n\nNo fit: {len(rows)} usable models (< {MIN_MODELS}).\n"
            )
            continue
        constants = fit(rows, FEATURES)
        loo = leave_one_out(rows, FEATURES)
        summary = error_summary(loo)
        domain = {
            f"max_{k}": _r(max(shares(feats[m])[k] for m in used), 3) for k in ("matmul_share", "attention_share")
        }
        doc = fit_docs.setdefault(
            profile, {"device": device, "profile_id": profile, "precisions": {}, "sources": set()}
        )
        doc["sources"].update(f"{REPO}/blob/{TAG}/{p['source']}" for p in used.values())
        doc["precisions"][key] = {
            "published_precision": prec,
            "features": list(FEATURES),
            "seconds_per_unit": {f: _r(c, 6) for f, c in constants["seconds_per_unit"].items()},
            "n_models": summary["n_models"],
            "runtimes": {m: p["runtime"] for m, p in sorted(used.items())},
            "loo_median_rel_error": _r(summary["loo_median_rel_error"]),
            "loo_max_ratio": _r(summary["loo_max_ratio"]),
            "band_rel": _r(summary["band_rel"]),
            "band_definition": "90th percentile of leave-one-model-out |relative error|",
            "domain": domain,
            "input_shape": "x".join(map(str, IMAGE)),
        }
        passed = summary["loo_median_rel_error"] <= 0.30 and summary["loo_max_ratio"] <= 2.0
        verdicts.append((device, prec, summary, passed))
        extra = []
        for m, p in sorted(models.items()):
            if m in OUT_OF_DOMAIN:
                pred = predict_ms(feats[m], constants)
                extra.append(
                    f"| {m} | out of domain ({OUT_OF_DOMAIN[m]}) | {p['latency_ms']:.3f} | {pred:.3f} (fit on all) "
                    f"| {pred / p['latency_ms']:.2f}x |"
                )
            elif (device, prec, m) in flagged:
                extra.append(
                    f"| {m} | left out: inconsistent across devices ({flagged[(device, prec, m)]}) "
                    f"| {p['latency_ms']:.3f} | {predict_ms(feats[m], constants):.3f} (fit on all) | — |"
                )
        sections.append(_section(device, profile, prec, used, loo, summary, constants, extra))
    for profile, doc in sorted(fit_docs.items()):
        doc["sources"] = sorted(doc["sources"])
        doc["commit"], doc["repository"], doc["tag"] = COMMIT, REPO, TAG
        header = (
            f"# Device-latency fit for {profile} on Qualcomm AI Hub's published latencies ({TAG}).\n"
            "# Generated by `python -m benchmarks.estimates` (method: benchmarks/ESTIMATES.md); do not edit by hand.\n"
        )
        (FITS / f"{profile}.yaml").write_text(header + yaml.safe_dump(doc, sort_keys=True, width=120))
    REPORT.write_text(_report(sections, verdicts))
    return time.perf_counter() - start


def _section(device, profile, prec, models, loo, summary, constants, extra) -> str:
    lines = [
        f"### {device} — `{profile}`, {prec} (edgex `{PRECISIONS[prec]}`)",
        "",
        "| model | input | runtime | published ms | LOO-predicted ms | error |",
        "|---|---|---|---:|---:|---:|",
    ]
    for r in loo:
        p = models[r["model"]]
        lines.append(
            f"| {r['model']} | {p['input_shape']} | {p['runtime']} | {p['latency_ms']:.3f} | "
            f"{r['predicted_ms']:.3f} | {100 * r['rel_error']:+.0f}% |"
        )
    lines += [
        "",
        f"LOO median |error| **{100 * summary['loo_median_rel_error']:.0f}%**, max ratio "
        f"**{summary['loo_max_ratio']:.2f}x**, band (90th percentile of |error|) {100 * summary['band_rel']:.0f}%, "
        f"{summary['n_models']} models.",
        "",
        "Fit on all of them (seconds per unit): "
        + ", ".join(f"{f} {c:.3g}" for f, c in constants["seconds_per_unit"].items()),
        "",
    ]
    if extra:
        lines += [
            "Not in the fit:",
            "",
            "| model | why | published ms | predicted ms | ratio |",
            "|---|---|---:|---:|---:|",
        ]
        lines += extra + [""]
    return "\n".join(lines)


def _report(sections: list[str], verdicts: list[tuple]) -> str:
    summary = ["| device | precision | models | LOO median abs error | LOO max ratio | band | bar met |",
               "|---|---|---:|---:|---:|---:|---|"]  # fmt: skip
    for device, prec, s, passed in verdicts:
        summary.append(
            f"| {device} | {prec} | {s['n_models']} | {100 * s['loo_median_rel_error']:.0f}% | "
            f"{s['loo_max_ratio']:.2f}x | {100 * s['band_rel']:.0f}% | {'yes' if passed else 'no'} |"
        )
    met = sorted({d for d, _, s, ok in verdicts if ok and s["n_models"] >= 8})
    head = f"""# Device-latency estimates checked against published Snapdragon NPU latencies

Generated by `python -m benchmarks.estimates` (seconds with the zoo's ONNX exports cached under
build/arch_zoo/; the first run exports the 19 architectures, about 2 minutes on 2 cores).
Deterministic: a rerun writes the same bytes.

## Summary

{chr(10).join(summary)}

Acceptance bar (issue 16 item 7): >= 8 models on >= 3 devices with LOO median |error| <= 30% and no
model beyond 2x. Met (>= 8 models) on {len(met)} devices: {", ".join(met) or "none"}.

## Method

* **Data**: Qualcomm AI Hub's published `inference_time_milliseconds` ({REPO}, tag {TAG}, commit
  {COMMIT[:8]}), per model, device and precision; every figure is in `benchmarks/published_latency.yaml`
  with its perf.yaml path. Runtime `onnx` (onnxruntime's QNN EP, what edgex ships) where published, else
  `qnn_dlc` (the SA8295P/SA8775P ADPs publish only qnn_dlc); an onnx figure over 2x the qnn_dlc one
  (CPU fallback) is replaced by the qnn_dlc one. The runtime used is in each table.
* **Data check (before any fit)**: a figure more than 2x away from what the same model's figures on the
  other devices imply (each device's speed = median latency ratio over all shared figures) is left out
  and listed under its table.
* **Graphs**: the architectures AI Hub times (torchvision configurations named in its model.py files),
  rebuilt in plain torch in `benchmarks/arch_zoo.py` (parameter counts match torchvision's within 0.2%),
  exported to ONNX at 1x3x224x224 (AI Hub's IMAGENET_DIM), random weights.
* **Features** (`exporter/bench/device_fit.py`, after nn-Meter's kernel-level view; Q/DQ looked
  through): dense MACs (group-1 convolutions + MatMul/Gemm), activation elements read and written by
  the non-MAC ops after conv+BN+ReLU fusion (elementwise, norms, pools, concat, softmax), and 1 per
  inference. Depthwise MACs, weight elements and layer counts are computed too; the feature set
  {FEATURES} is the one of the candidate subsets with the smallest worst-device LOO max ratio among
  those with LOO medians <= 30% on w8a8 (it is shared by all devices and both precisions; choosing it
  from the same LOO figures makes them slightly optimistic).
* **Fit**: non-negative coefficients minimising the squared *relative* error (exact NNLS on rows
  divided by the latency), on all usable models of a device and precision. **Error**: leave-one-model-out:
  each model predicted by a fit on the others. Band = 90th percentile of LOO |relative error|; edgex
  reports latency x [1/(1+band), 1+band] with every estimate made from a fit, and says when a graph's
  MatMul/attention share lies outside the fitted models' (a transformer against a CNN-only fit).

## Results
"""
    return head + "\n" + "\n".join(sections) + "\n" + LIMITS


LIMITS = """## Limits

* Vision classifiers at 224x224 only; a model unlike every fitted one (a transformer, a detector at
  640x640, a recurrent net) is an extrapolation: the band is measured on CNNs of this zoo.
* Published figures are AI Hub's jobs (their QNN SDK and onnxruntime versions, burst mode); a user's
  QDQ graph from edgex's quantizer may fuse differently.
* Fit files: device_profiles/fits/<profile>.yaml (read by `exporter.bench.device_fit.load_fit`).
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--refresh-published", type=Path, metavar="GIT_DIR")
    args = parser.parse_args()
    if args.refresh_published:
        refresh_published(args.refresh_published)
    print(f"benchmarks/ESTIMATES.md and device_profiles/fits/ written in {run():.0f} s")


if __name__ == "__main__":
    main()
