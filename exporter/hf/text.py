"""Text data: a file with one sentence per line, a callable returning sentences, or the bundled
corpus built from the standard library's `pydoc_data.topics` (real English, offline).

The corpus is split *by topic*, deterministically, so evaluation sentences come from topics
never seen in training or calibration.
"""

from __future__ import annotations

import hashlib
import re
from functools import lru_cache
from pathlib import Path

import numpy as np

from exporter.errors import UsageError
from exporter.recipe import InputSpec

SPLITS = {"train": range(0, 6), "calibration": range(6, 7), "evaluation": range(7, 10)}  # topic hash mod 10


def _split_of(topic: str) -> str:
    bucket = int(hashlib.sha256(topic.encode()).hexdigest(), 16) % 10
    return next(name for name, rng in SPLITS.items() if bucket in rng)


@lru_cache(maxsize=1)
def corpus() -> dict[str, list[str]]:
    """Sentences of pydoc_data.topics, deduplicated, grouped by split; stable across runs."""
    from pydoc_data.topics import topics

    seen: set[str] = set()
    out: dict[str, list[str]] = {name: [] for name in SPLITS}
    for topic in sorted(topics):
        split = _split_of(topic)
        for para in re.split(r"\n\s*\n", topics[topic]):
            para = " ".join(para.split())
            for sent in re.split(r"(?<=[.!?])\s+(?=[A-Z\"'(])", para):
                words = sent.split()
                if (
                    4 <= len(words) <= 60
                    and sent[-1] in ".!?:"
                    and sent not in seen
                    and not sent.startswith(("*", ">>>", "|", "..."))
                ):
                    seen.add(sent)
                    out[split].append(sent)
    return out


def _sentences_of(text: str) -> list[str]:
    out = []
    for para in re.split(r"\n\s*\n", text):
        para = " ".join(para.split())
        for sent in re.split(r"(?<=[.!?])\s+(?=[A-Z\"'(])", para):
            words = sent.split()
            if 4 <= len(words) <= 60 and sent[-1] in ".!?:" and not sent.startswith(("*", ">>>", "|", "...")):
                out.append(sent)
    return out


@lru_cache(maxsize=1)
def stdlib_docstrings() -> list[str]:
    """Sentences of the standard library's docstrings, read with `ast` (nothing is imported or
    run), in a fixed file order; any sentence of the pydoc-topics corpus is left out so its
    evaluation split stays unseen. ~14,000 real English sentences about Python, offline, in a
    fixed shuffled order: unlabelled text for distillation."""
    import ast
    import sysconfig

    root = Path(sysconfig.get_paths()["stdlib"])
    taken = {s for split in corpus().values() for s in split}
    seen: set[str] = set()
    out: list[str] = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).parts
        if any(p in ("test", "tests", "idlelib", "site-packages", "pydoc_data", "lib2to3") for p in rel):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                for sent in _sentences_of(doc) if doc else []:
                    if sent not in seen and sent not in taken:
                        seen.add(sent)
                        out.append(sent)
    order = np.random.default_rng(0).permutation(len(out))  # a `limit` takes a sample of every module
    return [out[i] for i in order]


def read_lines(path: Path, where: Path, field: str) -> list[str]:
    if not path.is_file():
        raise UsageError(f"text file '{path}' not found", path=where, field=field, fix="check the path")
    try:
        lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    except UnicodeDecodeError:
        raise UsageError(
            f"'{path.name}' is not UTF-8 text", path=where, field=field, fix="save it as UTF-8, one sentence per line"
        ) from None
    lines = [line for line in lines if line]
    if not lines:
        raise UsageError(f"'{path.name}' has no sentences", path=where, field=field, fix="one sentence per line")
    return lines


def tokenize(tokenizer, sentences: list[str], specs: list[InputSpec]) -> dict[str, np.ndarray]:
    """Pad/truncate to the recipe's sequence length, so every query has the benchmarked shape."""
    length = specs[0].shape[1]
    enc = tokenizer(list(sentences), padding="max_length", truncation=True, max_length=length, return_tensors="np")
    out = {}
    for spec in specs:
        if spec.name not in enc:
            raise UsageError(
                f"the tokenizer does not produce '{spec.name}'",
                path="model",
                field="model.folder",
                fix="use the tokenizer saved with the model",
            )
        out[spec.name] = enc[spec.name].astype(np.int64)
    return out
