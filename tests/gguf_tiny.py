"""A tiny Llama written as a GGUF the way llama.cpp's converter writes one: q/k rows interleaved for
its rotary layout, Q4_1 weights (one Q4_0), a Q8_0 tied embedding and a byte-level GPT-2 tokenizer.
Weights are random but quantized by gguf's own reference quantizer, so the blocks are real."""

from __future__ import annotations

from pathlib import Path

import numpy as np

HIDDEN, FFN, HEADS, KV_HEADS, LAYERS, VOCAB = 64, 128, 4, 2, 2, 256
WEIGHTS = {"attn_q": (64, 64), "attn_k": (32, 64), "attn_v": (32, 64), "attn_output": (64, 64)}
WEIGHTS |= {"ffn_gate": (128, 64), "ffn_up": (128, 64), "ffn_down": (64, 128)}


def _interleave(rows: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp convert_hf_to_gguf's permute of q/k rows."""
    n = rows.shape[0]
    return rows.reshape(heads, 2, n // heads // 2, *rows.shape[1:]).swapaxes(1, 2).reshape(rows.shape)


def write_tiny_gguf(path: Path, *, tokenizer: bool = True, seed: int = 0) -> Path:
    import gguf
    from transformers.models.gpt2.tokenization_gpt2 import bytes_to_unicode

    kinds = gguf.GGMLQuantizationType
    rng = np.random.default_rng(seed)
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(LAYERS)
    writer.add_context_length(256)
    writer.add_embedding_length(HIDDEN)
    writer.add_feed_forward_length(FFN)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(VOCAB)
    if tokenizer:
        byte_chars = bytes_to_unicode()
        tokens = [byte_chars[i] for i in range(VOCAB)]
        tokens[0] = "<|endoftext|>"
        tokens[-2:] = ["Ġt", "he"]
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre("default")
        writer.add_token_list(tokens)
        writer.add_token_types([3] + [1] * (VOCAB - 1))
        writer.add_token_merges(["Ġ t", "h e"])
        writer.add_bos_token_id(0)
        writer.add_eos_token_id(1)
        writer.add_add_bos_token(False)

    def add(name: str, values: np.ndarray, kind) -> None:
        data = values if kind == kinds.F32 else gguf.quants.quantize(values, kind)
        writer.add_tensor(name, data, raw_dtype=kind)

    add("token_embd.weight", rng.standard_normal((VOCAB, HIDDEN)).astype(np.float32), kinds.Q8_0)
    add("output_norm.weight", (1 + 0.1 * rng.standard_normal(HIDDEN)).astype(np.float32), kinds.F32)
    for layer in range(LAYERS):
        for norm in ("attn_norm", "ffn_norm"):
            add(f"blk.{layer}.{norm}.weight", (1 + 0.1 * rng.standard_normal(HIDDEN)).astype(np.float32), kinds.F32)
        for name, shape in WEIGHTS.items():
            w = (rng.standard_normal(shape) / np.sqrt(shape[1])).astype(np.float32)
            if name == "attn_q":
                w = _interleave(w, HEADS)
            elif name == "attn_k":
                w = _interleave(w, KV_HEADS)
            kind = kinds.Q4_0 if (layer, name) == (1, "ffn_up") else kinds.Q4_1
            add(f"blk.{layer}.{name}.weight", w, kind)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
