"""The onnxruntime-genai folder checked in onnxruntime-genai itself: its tokenizer against the
source tokenizer (ids and text, on every evaluation sentence and prompt) and its greedy tokens
against edgex's own KV-cache loop on the same file. A folder whose tokenizer turns words into -1
generates garbage on the device while every ONNX-level check passes."""

from __future__ import annotations

from pathlib import Path


def tokenizer_round_trip(folder: Path, tokenizer, texts: list[str]) -> dict:
    """How many texts onnxruntime-genai encodes to the source tokenizer's ids and decodes back."""
    import onnxruntime_genai as og

    model = og.Model(str(folder))
    og_tok = og.Tokenizer(model)
    mismatches = []
    for text in texts:
        want = tokenizer(text)["input_ids"]  # with the special tokens the GGUF asks for (BOS or not)
        got = [int(i) for i in og_tok.encode(text)]
        # transformers' default clean-up rewrites " ..." as "...": compare with the exact decoding
        if got != want or og_tok.decode(want) != tokenizer.decode(want, clean_up_tokenization_spaces=False):
            mismatches.append(text)
    return {"texts": len(texts), "mismatched": len(mismatches), "first_mismatch": mismatches[0] if mismatches else None}


def genai_greedy(folder: Path, prompts: list[list[int]], new_tokens: int) -> list[list[int]]:
    """onnxruntime-genai's own greedy search (stops early at the folder's EOS tokens)."""
    import onnxruntime_genai as og

    model = og.Model(str(folder))
    outs = []
    for ids in prompts:
        params = og.GeneratorParams(model)
        params.set_search_options(do_sample=False, max_length=len(ids) + new_tokens)
        generator = og.Generator(model, params)
        generator.append_tokens(ids)
        while not generator.is_done():
            generator.generate_next_token()
        outs.append([int(t) for t in generator.get_sequence(0)[len(ids) :]])
    return outs
