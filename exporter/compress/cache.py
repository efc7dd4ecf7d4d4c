"""The compression results' view of the shared content-addressed cache (exporter/cache.py).

The key covers the teacher's weight bytes, the input and data digests, every step's settings,
the seed, the alignment, and the versions of the libraries that do the work. Weights are stored
as safetensors only.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from pathlib import Path

from exporter import cache as _store
from exporter.cache import cache_root

__all__ = ["FORMAT", "cache_key", "cache_root", "lookup", "storing"]

FORMAT = 1  # bump when what an entry holds changes
KIND = "compress"


def cache_key(facts: dict) -> str:
    return _store.cache_key(facts, FORMAT)


def lookup(key: str) -> Path | None:
    return _store.lookup(KIND, key, "record.json")


def storing(key: str) -> AbstractContextManager[Path]:
    """Yield a temporary folder to fill; on success it becomes the entry (first writer wins)."""
    return _store.storing(KIND, key)
