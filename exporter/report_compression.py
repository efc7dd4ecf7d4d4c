"""The compression part of report.md: each compression run's stages, and per profile the chained
figure users compare tools by (compressed + quantized against the uncompressed FP32 model)."""

from __future__ import annotations


def compression_lines(metric: str, compression: dict) -> list[str]:
    """Each compression run: parameters, MACs and quality (PyTorch, evaluation set, against the
    source model) before compression and after each step; latency is in the profile tables."""
    lines: list[str] = []
    for key, rec in compression.items():
        used = [p for p in rec.get("profiles", [])]
        cached = " (from the cache: no retraining)" if rec.get("cache", {}).get("hit") else ""
        lines += [
            f"## Compression `{key}`{cached}",
            "",
            f"Alignment: multiples of {rec['align']}"
            + (f"; latency goal {rec['latency']}" if rec.get("latency") else "")
            + (f"; profiles {', '.join(used)}" if used else "")
            + f". MACs: {rec['teacher']['macs_basis']}. Quality in PyTorch on the evaluation set, against the "
            "source model.",
            "",
            f"| stage | params | MACs | MACs vs source | {metric} | drop |",
            "|---|---|---|---|---|---|",
        ]
        base = rec["teacher"]
        rows = [("source model", base)] + [(f"after {s['step']}", s["after"]) for s in rec["steps"]]
        for label, st in rows:
            lines.append(
                f"| {label} | {st['params']:,} | {st['macs']:,} | {st['macs'] / base['macs']:.3f} | "
                f"{st['metric']:.4f} | {st['drop']:+.4f} |"
            )
        lines.append("")
        for s in rec["steps"]:
            if s["step"] == "prune":
                goal = ", ".join(f"{k} {v}" for k, v in s["goal"].items())
                reached = "reached" if s.get("reached_goal") else "**not reached**"
                what = (
                    f"{len(s['history'])} channel groups removed; protected: {', '.join(s['protected']) or 'none'}"
                    if "history" in s
                    else f"heads removed per layer {{{', '.join(f'{k}: {len(v)}' for k, v in s['plan']['prune_heads'].items())}}}, "
                    f"FFN neurons kept per layer {_ffn_kept(s['plan'])}, "
                    f"layers dropped {s['plan']['drop_layers'] or 'none'}"
                )
                what += _refit_text(s) + _latency_text(s.get("plan", {}).get("latency_table"))
                lines.append(f"- prune ({s['engine']}, {s['criterion']}): goal {goal} {reached}; {what}.")
            elif s["step"] == "lowrank":
                plan = s["plan"]
                ranks = ", ".join(f"{n} {e['rank']}" for n, e in plan["layers"].items())
                goal = ", ".join(f"{k} {v}" for k, v in s["goal"].items())
                lines.append(
                    f"- lowrank ({s['criterion']}; {len(s['whitened'])} layers whitened by their inputs): goal {goal}, "
                    f"retained energy {plan['energy']:.4f}; {len(plan['layers'])} layers factorised (rank multiple "
                    f"{plan['align']}): {ranks or 'none'}; left dense (not cheaper at that energy): "
                    f"{', '.join(s['kept_dense']) or 'none'}."
                )
            elif s["step"] == "student":
                what = (
                    f"teacher layers {s['kept_layers']} kept (layers {s['dropped_layers']} dropped)"
                    if "kept_layers" in s
                    else f"architecture from {s['factory']}"
                )
                lines.append(f"- student: {what}.")
            else:
                lines.append(
                    f"- distill ({s['loss']} loss, labels from the {s['labels']}): {s['train_samples']} training / "
                    f"{s['validation_samples']} validation samples, best epoch {s['best_epoch']} of "
                    f"{len(s['history']) - 1}{' (early stop)' if s['stopped_early'] else ''}, {s['seconds']:.0f} s; "
                    f"data sha256 {s['data_sha256'][:12]}."
                )
        lines.append("")
    return lines


def _ffn_kept(plan: dict) -> str:
    sizes = [len(v) for v in plan["keep_ffn"].values()]
    if not sizes:
        return "all"
    return str(sizes[0]) if len(set(sizes)) == 1 else str(sizes)


def _latency_text(table: dict | None) -> str:
    """The host-measured costs a latency goal was spent with (exporter/compress/latency_table.py)."""
    if not table:
        return ""
    return (
        f"; latency table (onnxruntime on this host, {table['threads']} thread, p50 of 4 exports timed side by "
        f"side): fixed {table['fixed_ms']} ms + {table['head_ms']} ms per head + {table['neuron_ms']} ms per FFN "
        f"neuron (worst fit error {100 * table['fit_error']:.1f}%), the plan predicted at "
        f"{table['predicted_fraction']:.3f} of the unpruned time (a host figure; the speed-ups below are measured)"
    )


def _refit_text(step: dict) -> str:
    refit = step.get("reconstruction_error")
    if not refit:
        return ""
    text = (
        f"; {len(refit)} output projections refitted by least squares (worst relative error {max(refit.values()):.3f})"
    )
    decision = step.get("reconstruction")
    if decision:
        text += (
            f", {'kept' if decision['kept'] else 'reverted'}: held-out calibration {decision['held_out_cosine_before']:.4f}"
            f" -> {decision['held_out_cosine_after']:.4f}"
        )
    return text


def chained_lines(prof: dict, metric: str) -> list[str]:
    """Compressed + quantized against the uncompressed FP32 `baseline` of the same run: the one
    figure that says what the whole pipeline bought (host ratio; device figures are the estimates)."""
    variants = {v["name"]: v for v in prof["variants"]}
    if "compressed" not in variants or "baseline" not in variants:
        return []
    base = variants["baseline"]["latency_ms"]["p50"]
    rows = [
        f"`{v['name']}` {base / v['latency_ms']['p50']:.2f}x faster, {metric} {v['metric']['value']:.4f}"
        for v in prof["variants"]
        if v["name"] != "baseline"
    ]
    return [
        "",
        "Chained against the uncompressed FP32 `baseline` (host p50, same interleaved run; quality against the "
        f"uncompressed model): {'; '.join(rows)}.",
    ]
