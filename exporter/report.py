"""report.md and its latency-vs-accuracy plot: what a person reads after a build."""

from __future__ import annotations

from pathlib import Path

from exporter.bench.affinity import describe
from exporter.estimate_text import FORMULA
from exporter.report_compression import chained_lines, compression_lines

PLOT = "latency_vs_accuracy.png"


def _plot(root: Path, metric: str, profiles: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=100)
    markers = {"baseline": "o", "int8": "s"}
    for i, prof in enumerate(profiles):
        color = f"C{i % 10}"
        xs = [v["latency_ms"]["p50"] for v in prof["variants"]]
        ys = [v["metric"]["value"] for v in prof["variants"]]
        ax.plot(xs, ys, "-", color=color, alpha=0.4)
        for v, x, y in zip(prof["variants"], xs, ys):
            ax.scatter(
                [x], [y], color=color, marker=markers.get(v["name"], "^"), s=50, label=f"{prof['id']} {v['name']}"
            )
    ax.set_xlabel("host latency p50 (ms, onnxruntime CPU)")
    ax.set_ylabel(metric)
    ax.set_title("Latency vs accuracy per profile and variant (host measurement)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(root / PLOT, metadata={"Software": None})
    plt.close(fig)


def _fmt(x: object) -> str:
    if x is None:
        return "—"
    if isinstance(x, float):
        return f"{x:.4g}"
    return str(x)


def write_report(
    root: Path, name: str, metric: str, baseline: float, profiles: list[dict], compression: dict | None = None
) -> Path:
    _plot(root, metric, profiles)
    lines = [
        f"# edgex build report: {name}",
        "",
        f"Metric: **{metric}**; FP32 source model: {baseline:.4f}. Latency and memory are **host "
        "measurements** (onnxruntime CPU on the build machine with the profile's thread count, capped at the "
        "host's cores), not device figures.",
        "",
        f"![latency vs accuracy]({PLOT})",
        "",
    ]
    lines += compression_lines(metric, compression or {})
    for prof in profiles:
        failed = prof.get("failed_variants") or []
        missed = any(v["ok"] is False and v["budget"] != "failed_variants" for v in prof["verdicts"])
        status = "within budget" if prof["ok"] else "**BUDGET MISSED**" if missed else "budgets met"
        if failed:
            status += f"; **{len(failed)} VARIANT{'S' if len(failed) > 1 else ''} FAILED** (below)"
        lines += [
            f"## {prof['id']} — {prof['name']}",
            "",
            f"Target `{prof['target']}` ({prof['execution_provider']}); threads {prof['threads']['profile']} "
            f"on device, {prof['threads']['host']} on host ({describe(prof['threads'].get('affinity'))}). Deliverable: **{prof['deliverable']}** — {status}. "
            f"Package: `{prof['package']['model']}` ({prof['package']['format']}) with `runtime.json` and a reference "
            f"check (`{prof['package']['reference']}`).",
            "",
            "| variant | precision | size MB | p50 ms | p90 ms | p99 ms | vs FP32 p50 | memory MB | "
            + metric
            + " | drop | MACs | ok |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        fp32_p50 = next((v["latency_ms"]["p50"] for v in prof["variants"] if v["name"] == "baseline"), None)
        for v in prof["variants"]:
            lat = v["latency_ms"]
            ratio = f"{lat['p50'] / fp32_p50:.2f}x" if fp32_p50 else "—"
            lines.append(
                f"| {v['name']} | {v['artifact']['precision']} | {v['artifact']['bytes'] / 1e6:.3f} | "
                f"{lat['p50']:.3f} | {lat['p90']:.3f} | {lat['p99']:.3f} | {ratio} | {v['memory_mb']:.1f} | "
                f"{v['metric']['value']:.4f} | {v['metric']['drop']:+.4f} | {v['macs']:,} | {_fmt(v['ok'])} |"
            )
        lines += _speed_lines(prof)
        lines += chained_lines(prof, metric)
        lines += _failed_lines(failed)
        lines += [
            "",
            "Device estimates (not measurements; model and constants in the manifest's `device_estimate`):",
            "",
            f"Formula: {FORMULA}.",
            "",
            "| variant | est. latency ms | error band | est. energy mJ | est. avg power W | latency model | "
            "host p-interval (95%) |",
            "|---|---|---|---|---|---|---|",
        ]
        for v in prof["variants"]:
            est, lat = v.get("device_estimate") or {}, v["latency_ms"]
            interval = f"p{lat['budget_percentile']:g} in [{lat['interval95'][0]:.3f}, {lat['interval95'][1]:.3f}] ms"
            if est.get("available"):
                power = f"{est['average_power_w']:.3g}" if "average_power_w" in est else "—"
                lines.append(
                    f"| {v['name']} | {est['device_latency_ms']:.3g} | {_band_text(est)} | {est['energy_mj']:.3g} | "
                    f"{power} | {_model_text(est)} | {interval} |"
                )
            else:
                lines.append(f"| {v['name']} | — | — | — | — | {est.get('reason', 'not available')} | {interval} |")
        lines += _power_lines(prof)
        lines += _quantization_lines(prof)
        lines += _npu_lines(prof)
        lines += ["", "Budgets (deliverable):", "", "| budget | limit | value | ok | basis |", "|---|---|---|---|---|"]
        for verdict in prof["verdicts"]:
            ok = {True: "pass", False: "**FAIL**", None: "not evaluated"}[verdict["ok"]]
            lines.append(
                f"| {verdict['budget']} | {_fmt(verdict['limit'])} | {_fmt(verdict['value'])} | {ok} | "
                f"{verdict['basis']} |"
            )
        lines += [
            "",
            "Preflight (operator coverage on the target's accelerator, estimated from op types and shapes) "
            "and package:",
            "",
            "| variant | nodes | on accelerator | partitions (nodes each) | CPU fallback | fallback MACs | "
            "package | package vs .onnx |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for v in prof["variants"]:
            pf, pkg = v["preflight"], v["package"]
            fallback = ", ".join(f"{op}×{n}" for op, n in pf["unsupported_ops"].items()) or "none"
            parity = pkg.get("parity")
            vs = "same file"
            if parity:
                vs = (
                    f"argmax {parity['argmax_agreement']:.1%}, max diff {parity['max_abs_diff']:.2g}; load "
                    f"{parity['load_seconds']['package'] * 1e3:.0f} vs {parity['load_seconds']['onnx'] * 1e3:.0f} ms; "
                    f"p50 {parity['latency_p50_ms']['package']:.3f} vs {parity['latency_p50_ms']['onnx']:.3f} ms"
                )
            lines.append(
                f"| {v['name']} | {pf['nodes']} | {pf['supported_nodes']} | {pf['partitions']} "
                f"({', '.join(map(str, pf['partition_map'])) or '-'}) | {fallback} | "
                f"{pf['cpu_fallback_macs_share']:.1%} | `{Path(pkg['path']).name}` | {vs} |"
            )
        for v in prof["variants"]:
            for op, advice in v["preflight"].get("advice", {}).items():
                lines.append(f"- `{v['name']}`: {op} stays on the CPU — {advice}.")
            fused = v["produced_by"].get("fused_ops")
            if fused is not None:
                lines.append(
                    f"- `{v['name']}` transformer fusions (onnxruntime.transformers): "
                    + (", ".join(f"{op}×{n}" for op, n in fused.items()) or "none")
                    + "."
                )
            elif v["produced_by"].get("fusion"):
                lines.append(f"- `{v['name']}` fusions {v['produced_by']['fusion']}.")
            race = v["produced_by"].get("fusion_race")
            if race:
                timed = (
                    "replayed from the earlier build"
                    if race.get("replayed")
                    else f"fused {race['fused_p50_ms']:.3f} ms vs plain {race['plain_p50_ms']:.3f} ms (p50, 1 thread, "
                    "side by side on this host)"
                )
                lines.append(f"- `{v['name']}` FP32 graph: {race['kept']} shipped; {timed}.")
            ingest = v["produced_by"].get("ingest") or {}
            if ingest.get("changed"):  # the given file was changed before anything else saw it: said
                lines.append(f"- `{v['name']}` model as given, ingested: {ingest['summary']}.")
        mode = prof["variants"][0]["metric"]["evaluated"]
        lines += [
            "",
            f"{metric} computed with Q/DQ {'fused into the CPU kernels that ship' if mode == 'deployed' else 'simulated as the device runtime executes them (host integer kernels are not the device’s)'}.",
        ]
        for v in prof["variants"]:
            kept = v["produced_by"].get("kept_in_float")
            if kept is not None:
                text = ", ".join(f"{op}×{n}" for op, n in kept.items()) or "nothing"
                lines += ["", f"`{v['name']}` kept in float: {text}."]
                for node, why in (v["produced_by"].get("excluded_nodes") or {}).items():
                    lines.append(f"- node `{node}` excluded from quantization: {why}")
            lines += _fidelity_lines(v)
        lines.append("")
    path = root / "report.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _fidelity_lines(v: dict) -> list[str]:
    """Each output's SQNR against FP32 and, for an output that concatenates unlike quantities, each part's:
    a YOLO head whose class scores shared the boxes' INT8 scale shows a good whole and a broken part."""
    lines = []
    for rec in v.get("output_sqnr") or []:
        parts = "; ".join(f"`{p['tensor']}` {p['slice']}: {p['sqnr_db']} dB" for p in rec["parts"])
        lines.append(
            f"- `{v['name']}` output `{rec['output']}` SQNR {rec['sqnr_db']} dB" + (f" ({parts})" if parts else "")
        )
    for rec in (v.get("produced_by") or {}).get("concat_parts") or []:
        kept = "kept in float" if rec["kept_as"] == "float" else "raised to 16-bit"
        lines.append(
            f"- `{v['name']}`: Concat `{rec['concat']}` joins ranges {rec['ratio']:.0f}x apart into `{rec['output']}`; "
            f"one INT8 scale would erase the small part, so it was {kept}"
        )
    return lines


def _speed_lines(prof: dict) -> list[str]:
    """What the "vs FP32" column means on this target: a rule on CPU targets, a host figure elsewhere."""
    if prof["execution_provider"] == "CPUExecutionProvider":
        slow = [
            f"`{v['name']}` ({verdict['value']:.2f}x)"
            for v in prof["variants"]
            for verdict in v["verdicts"]
            if verdict["budget"] == "int8_speed_vs_fp32" and verdict["ok"] is False
        ]
        return [
            "",
            "\"vs FP32 p50\": the variant's p50 over FP32's, timed interleaved in the same run. On a CPU "
            "target no INT8 file more than 5% slower than FP32 ships (verdict `int8_speed_vs_fp32`)"
            + (f"; failed it, so not shipped while FP32 meets the budgets: {', '.join(slow)}." if slow else "."),
        ]
    return [
        "",
        f'"vs FP32 p50" is a **host** ratio (onnxruntime CPU on the build machine), **not a device figure**: '
        f"{prof['execution_provider']} runs its own kernels, which this host cannot time. INT8 that is slower "
        "than FP32 here says nothing about the device; time it there (`edgex bench --runner`).",
    ]


def _failed_lines(failed: list[dict]) -> list[str]:
    """Variants that failed, each with its step and its whole reason (the build went on without them)."""
    if not failed:
        return []
    lines = [
        "",
        "Failed variants (recorded in the manifest's `failed_variants`; the build went on with the others, "
        "and the profile fails on `failed_variants`, exit 1):",
        "",
        "| variant | precision | step | file | reason |",
        "|---|---|---|---|---|",
    ]
    for f in failed:
        why = f["failed"]["error"].replace("|", "\\|")
        lines.append(
            f"| {f['name']} | {f['precision']} | {f['failed']['step']} | {f['failed'].get('file') or '—'} | {why} |"
        )
    return lines


def _power_lines(prof: dict) -> list[str]:
    """Measured power beside the estimate, and which of the two the energy/power budgets were judged on."""
    first = next((v.get("measured_power") for v in prof["variants"] if v.get("measured_power")), None)
    if first is None:
        return []
    if not first.get("available"):
        return ["", f"Measured power: none ({first['reason']}); energy and power budgets judged on the estimate."]
    lines = [
        "",
        f"Measured power ({first['sensor']}: {first['method']}; channels {', '.join(first['channels'])}; idle "
        f"{first['idle_w']:.3g} W over {first['idle_seconds']:g} s; {first['scope']}). Energy and power budgets "
        "are judged on these, not on the estimate:",
        "",
        "| variant | busy W | energy mJ / inference | above idle mJ | avg power W at rate | samples | est. energy mJ |",
        "|---|---|---|---|---|---|---|",
    ]
    for v in prof["variants"]:
        m, est = v.get("measured_power") or {}, v.get("device_estimate") or {}
        if not m.get("available"):
            continue
        power = f"{m['average_power_w']:.3g}" if "average_power_w" in m else "—"
        estimated = f"{est['energy_mj']:.3g}" if est.get("available") else "—"
        lines.append(
            f"| {v['name']} | {m['busy_w']:.3g} | {m['energy_mj']:.3g} | {m['dynamic_energy_mj']:.3g} | {power} | "
            f"{m['samples']} | {estimated} |"
        )
    return lines


def _quantization_lines(prof: dict) -> list[str]:
    """What the static INT8 search tried, what it kept out of INT8 and why, and what that cost."""
    lines: list[str] = []
    for v in prof["variants"]:
        pb = v["produced_by"]
        lines += _race_lines(v["name"], pb.get("preset_race"))
        search = pb.get("search")
        if not search:
            continue
        met = "met" if search["met"] else "**not met**"
        lines += [
            "",
            f"Static INT8 search for `{v['name']}` ({pb['calibration_method']} calibration kept; accuracy budget "
            f"{search['budget']:g}, {met}; judged on the {search['evaluated_on']}):",
            "",
            "| step | tensors out of INT8 | drop | within budget |",
            "|---|---|---|---|",
        ]
        lines += [f"| {s['step']} | {s['kept']} | {s['drop']:.4f} | {_fmt(s['ok'])} |" for s in search["steps"]]
        if search.get("op_types"):
            lines.append(
                f"- only {', '.join(search['op_types'])} quantized, every other op type float: no per-tensor step met "
                "the budget"
            )
        for k in search["kept_out_of_int8"]:
            if k["tensor"] == "*":
                lines.append("- every activation 16-bit, weights 8-bit (A16W8): no per-tensor step met the budget")
                continue
            why = (
                "matrix-product output, integer product kept" if k.get("cost") == "low" else "makes its consumer float"
            )
            lines.append(f"- kept as {k['kept_as']}: `{k['tensor']}` (INT8 SQNR {k['sqnr_db']} dB; {why})")
        guard = pb.get("speed_guard")
        if guard:
            cost = ""
            if guard.get("ratio_all_quantized") is not None:
                cost = f"; with every tensor in INT8 it was {guard['ratio_all_quantized']:.2f}x FP32's time"
            lines.append(
                f"- speed guard (1 thread): INT8 takes {guard['ratio']:.2f}x FP32's time{cost}. {guard['verdict']}"
            )
            for rung in guard["tried"]:
                lines.append(f"  - tried {rung['rung']}: {rung['ratio']}x time, drop {rung['drop']:.4f}")
        for note in pb.get("notes") or []:
            lines.append(f"- {note}")
        if pb.get("excluded_nodes"):
            lines.append(f"- nodes kept in float: {', '.join(pb['excluded_nodes'])}")
    return lines


def _race_lines(name: str, race: dict | None) -> list[str]:
    """The static INT8 configurations raced on a CPU target, and which one the search started from."""
    if not race:
        return []
    how = (
        " (replayed)" if race.get("replayed") else " (cached outcome of an earlier build)" if race.get("cached") else ""
    )
    lines = [
        "",
        f"Preset race for `{name}`: `{race['kept']}` kept{how}. Entrants: what the device's instruction set "
        f"({race['device_isa']}) runs; timed at 1 thread on this host ({race['host_isa']}), so the ranking is "
        f"{race['ranking']}; within {race['tie_band']:.0%} of the fastest the earlier entrant wins.",
    ]
    if race.get("candidates"):
        lines += [
            "",
            "| configuration | drop (quantized throughout) | within budget | speed-up vs FP32 |",
            "|---|---|---|---|",
        ]
        for c in race["candidates"]:
            speed = f"{c['speed_vs_fp32']:.2f}x" if "speed_vs_fp32" in c else "not timed"
            drop = f"{c['drop']:.4f}" if "drop" in c else f"failed: {c.get('error', '?')}"
            lines.append(f"| {c['candidate']} | {drop} | {'yes' if c['within_budget'] else 'no'} | {speed} |")
    if race.get("verdict"):
        lines.append(f"- {race['verdict']}")
    lines += [f"- not entered: {e['candidate']} ({e['why']})" for e in race.get("excluded", [])]
    return lines


def _band_text(est: dict) -> str:
    band = est.get("latency_interval_ms")
    return f"[{band[0]:.3g}, {band[1]:.3g}] ms" if band else "none (unvalidated)"


def _model_text(est: dict) -> str:
    """Which latency model made the estimate and how far it was validated."""
    band = est.get("error_band")
    if band:
        domain = "" if band.get("in_domain", True) else "; outside the fitted models' domain"
        return (
            f"fitted on {band['n_models']} published models, LOO median error "
            f"{band['loo_median_rel_error']:.0%}, worst {band['loo_max_ratio']:.2f}x{domain}"
        )
    if est.get("efficiency") is not None:
        return f"roofline / host efficiency {est['efficiency']:.2f}"
    return "measured on the device"


def _npu_lines(prof: dict) -> list[str]:
    """QNN profiles: the metric as the emulated HTP computes it, and the context binary that ships."""
    runs = [(v["name"], v["npu"]) for v in prof["variants"] if v.get("npu")]
    binary = prof.get("context_binary")
    if not runs and binary is None:
        return []
    lines = ["", "On the NPU (onnxruntime-qnn's HTP backend, emulated on this x86 host):", ""]
    done = [(n, r) for n, r in runs if r.get("available")]
    for name, r in runs:
        if not r.get("available"):
            lines.append(f"- `{name}`: not run on the HTP ({r['reason']}); accuracy is {r['accuracy_basis']}")
    if done:
        lines += [
            "| variant | samples | FP32 | on the HTP | Q/DQ simulated | drop on the HTP | HTP vs simulation |",
            "|---|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {n} | {r['samples']} | {r['baseline_metric']:.4f} | {r['metric']:.4f} | {r['simulated_metric']:.4f} | "
            f"{r['drop']:+.4f} | {r['htp_vs_simulation']} |"
            for n, r in done
        ]
        lines += ["", f"Basis: {done[0][1]['accuracy_basis']}; subset: {done[0][1]['samples_rule']}."]
    if binary is not None:
        if binary.get("compiled"):
            back = binary["loaded_back"]
            lines.append(
                f"\nContext binary `{binary['file']}` ({binary['bytes']:,} bytes) for soc_model "
                f"{binary['soc']['soc_model']} (HTP v{binary['soc']['htp_arch']}), CPU fallback disabled; loaded back "
                f"here, max |difference| vs the QDQ model on the HTP {back['max_abs_diff_vs_qdq_on_htp']:g} over "
                f"{back['samples']} samples. Compiled with QAIRT {binary['versions']['qairt']} (onnxruntime-qnn "
                f"{binary['versions']['onnxruntime_qnn']}); the device needs the same QNN SDK version."
            )
        else:
            lines.append(f"\nNo context binary: {binary['reason']}")
    return lines
