"""Tiny randomly initialised BERT folders, saved the way users' folders are (safetensors + tokenizer)."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import yaml
from conftest import FAST_BENCH, CompressedBuild, build_compressed

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def _vocab() -> list[str]:
    from exporter.hf.text import corpus

    words: Counter[str] = Counter()
    for sent in corpus()["train"][:800]:
        words.update(re.findall(r"[a-z]+|[^a-z\s]", sent.lower()))
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)] + [f"##{chr(c)}" for c in range(ord("a"), ord("z") + 1)]
    common = [w for w, _ in words.most_common(400) if w not in letters]
    return SPECIAL + letters + common


def make_tiny_bert(folder: Path, task: str = "embedding", num_labels: int = 3, **sizes) -> Path:
    """`sizes`: BertConfig fields replacing the tiny defaults (a model big enough to time)."""
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
    for key, value in sizes.items():
        setattr(config, key, value)
    torch.manual_seed(0)
    model = BertForSequenceClassification(config) if task == "classification" else BertModel(config)
    model.eval()
    model.save_pretrained(str(folder), safe_serialization=True)
    tokenizer.save_pretrained(str(folder))
    return folder


def write_bert_project(folder: Path, model: dict, **extra) -> Path:
    """A recipe for an `hf` model with text data beside it; extra replaces top-level recipe keys."""
    recipe = {
        "version": 1,
        "name": "tiny-bert",
        "model": {"source": "hf", "sequence_length": 16, **model},
        "data": {
            "calibration": {"text": "calib.txt"},
            "evaluation": {"callable": "sentences.py:evaluation"},
        },
        "metric": "cosine",
        "quantize": {"calibration_samples": 8},
        "bench": dict(FAST_BENCH, min_runs=10),
        "profiles": ["raspberry-pi-5-cpu", "sa8295p-qnn"],
        "output": "out",
        **extra,
    }
    from exporter.hf.text import corpus

    (folder / "calib.txt").write_text("\n".join(corpus()["calibration"][:16]) + "\n")
    (folder / "sentences.py").write_text(
        "from exporter.hf.text import corpus\n\n\ndef evaluation():\n    return corpus()['evaluation'][:24]\n"
    )
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def build_compressed_bert(folder: Path, compress: list[dict], cache: Path) -> CompressedBuild:
    """The embedding model in folder/model compressed by `compress` for one CPU board, unquantized
    so the build time goes to the compression; the tokenizer must travel with the student."""
    recipe = write_bert_project(
        folder,
        {"folder": "model", "task": "sentence-embedding"},
        compress=compress,
        profiles=["raspberry-pi-5-cpu"],
        quantize={"enabled": False},
    )
    built = build_compressed(recipe, cache)
    assert (folder / "out" / "raspberry-pi-5-cpu" / "tokenizer" / "vocab.txt").is_file()
    return built
