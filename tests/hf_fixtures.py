"""Tiny randomly initialised BERT folders, saved the way users' folders are (safetensors + tokenizer)."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def _vocab() -> list[str]:
    from exporter.hf.text import corpus

    words: Counter[str] = Counter()
    for sent in corpus()["train"][:800]:
        words.update(re.findall(r"[a-z]+|[^a-z\s]", sent.lower()))
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)] + [f"##{chr(c)}" for c in range(ord("a"), ord("z") + 1)]
    common = [w for w, _ in words.most_common(400) if w not in letters]
    return SPECIAL + letters + common


def make_tiny_bert(folder: Path, task: str = "embedding", num_labels: int = 3) -> Path:
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertModel, BertTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join(_vocab()) + "\n")
    tokenizer = BertTokenizerFast(vocab_file=str(vocab), do_lower_case=True)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        num_labels=num_labels,
    )
    torch.manual_seed(0)
    model = BertForSequenceClassification(config) if task == "classification" else BertModel(config)
    model.eval()
    model.save_pretrained(str(folder), safe_serialization=True)
    tokenizer.save_pretrained(str(folder))
    return folder
