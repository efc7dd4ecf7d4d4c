"""What a decoder costs on this host and in memory: time to first token and decode tokens/s of the
FP32 and INT4 files side by side (one thread, interleaved rounds: the host is shared, so the ratio
is the figure to read; a host timing says nothing final about a phone), and the KV cache's bytes
per token and at the model's context length (the memory that grows while it talks)."""

from __future__ import annotations

import statistics
from pathlib import Path

from exporter.llm import decode
from exporter.versions import host_facts

PROMPT_TOKENS = 128
NEW_TOKENS = 32
ROUNDS = 3


def kv_cache(config) -> dict:
    """FP32 keys and values of every layer: 2 x layers x kv heads x head size x 4 bytes per token."""
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    per_token = 2 * config.num_hidden_layers * kv_heads * head_dim * 4
    context = int(getattr(config, "max_position_embeddings", 0) or 0)
    return {
        "bytes_per_token": per_token,
        "context_length": context,
        "mb_at_context": round(per_token * context / 1e6, 1),
    }


def host_timing(files: dict[str, Path], prompt: list[int]) -> dict:
    """Medians over interleaved rounds of each file's TTFT (ms) and decode tokens/s, and INT4 vs FP32."""
    sessions = {name: decode.open_session(path, threads=1) for name, path in files.items()}
    ttft: dict[str, list[float]] = {name: [] for name in files}
    speed: dict[str, list[float]] = {name: [] for name in files}
    for _ in range(ROUNDS):
        for name, session in sessions.items():
            _, first, rate = decode.greedy(session, prompt, NEW_TOKENS)
            ttft[name].append(first * 1000)
            speed[name].append(rate)
    out: dict = {
        "host": host_facts()["cpu"],
        "threads": 1,
        "prompt_tokens": len(prompt),
        "new_tokens": NEW_TOKENS,
        "rounds": ROUNDS,
    }
    for name in files:
        out[name] = {
            "ttft_ms": round(statistics.median(ttft[name]), 1),
            "decode_tok_s": round(statistics.median(speed[name]), 1),
        }
    if "fp32" in files and "int4" in files:
        out["int4_decode_vs_fp32"] = round(out["int4"]["decode_tok_s"] / out["fp32"]["decode_tok_s"], 2)
    return out
