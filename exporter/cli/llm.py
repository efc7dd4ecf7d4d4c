"""Commands for decoder language models: `edgex gguf`."""

from __future__ import annotations

from pathlib import Path

import click

from exporter.cli.common import JSON_OPT, command, emit_judged, get_profile
from exporter.errors import UsageError


def _text(record: dict) -> str:
    int4 = record["int4"]
    lines = [
        f"graph: {record['graph']}; tokenizer repaired: {'; '.join(record['tokenizer_repairs']) or 'nothing'}",
        f"source: {record['source']['file']} ({', '.join(f'{n} {k}' for k, n in sorted(record['source']['tensor_types'].items()))})",
        f"int4: {int4['on_source_grid']} weights on the source grid {int4['kinds']}; kept float: {len(int4['kept_float'])}",
        f"sizes MB: {record['sizes_mb']}; KV cache {record['kv_cache']['bytes_per_token'] / 1e3:.1f} kB per token, "
        f"{record['kv_cache']['mb_at_context']} MB at the context length {record['kv_cache']['context_length']}",
    ]
    timing = record["host_timing"]
    lines.append(
        f"this host ({timing['host']}, 1 thread; not a device figure): TTFT for {timing['prompt_tokens']} tokens "
        f"FP32 {timing['fp32']['ttft_ms']:.0f} ms, INT4 {timing['int4']['ttft_ms']:.0f} ms; decode FP32 "
        f"{timing['fp32']['decode_tok_s']} tok/s, INT4 {timing['int4']['decode_tok_s']} tok/s "
        f"({timing['int4_decode_vs_fp32']}x)"
    )
    judged = record["judged"]
    if judged:
        agree = [p["agree"] for p in judged["prompts"]]
        lines += [
            f"perplexity on {judged['eval_tokens']} held-out tokens: FP32 {judged['perplexity_fp32']:.2f}, "
            f"INT4 {judged['perplexity_int4']:.2f} ({judged['perplexity_rise']:+.1%})",
            f"greedy tokens equal to FP32's (of {len(judged['prompts'][0]['fp32_tokens'])}) per prompt: {agree}",
        ]
        if "genai_tokenizer" in judged:
            rt = judged["genai_tokenizer"]
            lines.append(
                f"onnxruntime-genai: tokenizer round trip {rt['texts'] - rt['mismatched']}/{rt['texts']} texts; "
                f"greedy tokens equal to FP32's per prompt: {[p['genai_agree'] for p in judged['prompts']]}"
            )
    else:
        lines.append("not judged on text: the GGUF carries no tokenizer")
    for name, graph in (record.get("qnn") or {}).get("graphs", {}).items():
        assignment = graph["assignment"] or {"supported_nodes": "?", "nodes": "?", "partitions": "?"}
        lines.append(
            f"QNN {name.upper()} (context {graph['context']}, W8A16): {assignment['supported_nodes']}/{assignment['nodes']} "
            f"nodes on the HTP in {assignment['partitions']} partition(s); "
            + (
                f"loads without CPU fallback; logits cosine {graph['logits_cosine_vs_fp32']} vs FP32 over "
                f"{graph['positions_compared']} held-out positions ({graph['logits_from']}); "
                f"context binary {graph['context_binary']['bytes'] / 1e6:.0f} MB"
                if graph["loads_without_cpu_fallback"]
                else f"refused without CPU fallback: {graph['refusal']}"
            )
        )
    if record["problem"]:
        lines.append(f"FAILED: {record['problem']} (the files and record.json are written)")
    return "\n".join(lines)


@click.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), required=True, help="New folder to write.")
@click.option(
    "--accuracy-level",
    type=click.Choice(["0", "4"]),
    default="4",
    show_default=True,
    help="MatMulNBits compute: 4 = int8 activations per block (fast), 0 = float.",
)
@click.option(
    "--max-ppl-rise",
    type=click.FloatRange(0),
    default=0.10,
    show_default=True,
    help="Largest allowed INT4 perplexity rise over FP32 (exit 1 above it).",
)
@click.option("--eval-sentences", type=click.IntRange(1), default=200, show_default=True)
@click.option(
    "--genai-python",
    type=click.Path(path_type=Path),
    help="Python of an environment with onnxruntime-genai's model builder (`make genai-builder`: "
    ".venv-genai/bin/python): export its graph and write onnxruntime-genai folders.",
)
@click.option(
    "--qnn-profile",
    help="A QNN profile (e.g. sa8295p-qnn): also the AR-128 prompt and AR-1 token graphs, W8A16, checked on "
    "the emulated HTP without CPU fallback and compiled to context binaries.",
)
@JSON_OPT
@click.pass_context
@command
def gguf(
    ctx: click.Context,
    model: Path,
    out: Path,
    accuracy_level: str,
    max_ppl_rise: float,
    eval_sentences: int,
    genai_python: Path | None,
    qnn_profile: str | None,
    as_json: bool,
) -> int:
    """Export a GGUF decoder (e.g. SmolLM2 Q4_1) to ONNX with its KV cache: FP32, and INT4 on the
    GGUF's own quantization grid (no second rounding), judged on held-out text.

    \b
    Example: edgex gguf SmolLM2-135M-Instruct.Q4_1.gguf --out build/smollm2
    """
    from exporter.llm.gguf_build import GgufOptions, export_gguf
    from exporter.pipeline.npu import soc_of

    qnn_soc = None
    if qnn_profile is not None:
        prof = get_profile(ctx, qnn_profile)
        if prof.target != "qnn":
            raise UsageError(
                f"profile '{prof.id}' targets {prof.target}, not qnn", field="--qnn-profile", fix="give a QNN profile"
            )
        qnn_soc = soc_of(prof)
    options = GgufOptions(int(accuracy_level), max_ppl_rise, eval_sentences, genai_python=genai_python, qnn_soc=qnn_soc)
    return emit_judged(export_gguf(model, out, options), as_json, _text)


COMMANDS = [gguf]
