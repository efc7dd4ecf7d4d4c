"""Decoder language models: GGUF sources, export with KV cache, INT4 on the source's own grid,
and the measures a decoder is judged on (perplexity, greedy agreement, time to first token, tokens/s)."""
