"""A content-addressed cache of compressed models, so a rebuild or another profile does not retrain.

The key is a sha256 over everything the result depends on: the teacher's weight bytes, the
input and data digests, every step's settings, the seed, the alignment, and the versions of the
libraries that do the work (a cache keyed on configuration alone gives wrong hits: Olive #1936).
Entries are written to a temporary folder and renamed into place, so a killed build or two
builds sharing the cache never leave half an entry. Weights are stored as safetensors only.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

FORMAT = 1  # bump when what an entry holds changes


def cache_root() -> Path:
    """$EDGEX_CACHE_DIR, else $XDG_CACHE_HOME/edgex, else ~/.cache/edgex."""
    if os.environ.get("EDGEX_CACHE_DIR"):
        return Path(os.environ["EDGEX_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "edgex"


def cache_key(facts: dict) -> str:
    blob = json.dumps({"format": FORMAT, **facts}, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def lookup(key: str) -> Path | None:
    entry = cache_root() / "compress" / key
    return entry if (entry / "record.json").is_file() else None


@contextmanager
def storing(key: str) -> Iterator[Path]:
    """Yield a temporary folder to fill; on success it becomes the entry (first writer wins)."""
    parent = cache_root() / "compress"
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key[:12]}-", dir=parent))
    try:
        yield tmp
        try:
            tmp.rename(parent / key)
        except OSError:  # another build stored the same entry first: same inputs, same result
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
