"""One content-addressed store for everything edgex caches (compressed models, matrix cells).

A key is a sha256 over the facts a result depends on, bytes included (a cache keyed on
configuration alone gives wrong hits: Olive #1936). An entry is filled in a temporary folder
beside its final place and renamed into place, so a killed job or parallel jobs sharing one
cache folder never see half an entry: an entry exists completely or not at all, and when two
jobs store the same key the first rename wins and the second job's copy is discarded.
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


def cache_root() -> Path:
    """$EDGEX_CACHE_DIR, else $XDG_CACHE_HOME/edgex, else ~/.cache/edgex."""
    if os.environ.get("EDGEX_CACHE_DIR"):
        return Path(os.environ["EDGEX_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "edgex"


def cache_key(facts: dict, fmt: int) -> str:
    """sha256 of the canonical JSON of the facts; `fmt` is bumped when what an entry holds changes."""
    blob = json.dumps({"format": fmt, **facts}, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def entry_path(kind: str, key: str) -> Path:
    return cache_root() / kind / key


def lookup(kind: str, key: str, marker: str) -> Path | None:
    """The entry, if complete: `marker` is a file written last, before the rename."""
    entry = entry_path(kind, key)
    return entry if (entry / marker).is_file() else None


def scratch(kind: str, key: str) -> Path:
    """A fresh temporary folder on the cache's filesystem, to be `put` in place or removed."""
    parent = cache_root() / kind
    parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{key[:12]}-", dir=parent))


def put(kind: str, key: str, filled: Path) -> Path:
    """Rename a filled scratch folder into place; if another job got there first, keep theirs."""
    final = entry_path(kind, key)
    try:
        filled.rename(final)
    except OSError:  # the same inputs were stored first by another job: same inputs, same result
        shutil.rmtree(filled, ignore_errors=True)
    return final


def discard(kind: str, key: str) -> None:
    """Move a bad entry out of the way atomically (readers see it gone at once), then delete it."""
    final = entry_path(kind, key)
    aside = scratch(kind, key)
    try:
        os.rename(final, aside / "bad")
    except OSError:
        pass  # already discarded by another job
    shutil.rmtree(aside, ignore_errors=True)


@contextmanager
def storing(kind: str, key: str) -> Iterator[Path]:
    """Yield a temporary folder to fill; on success it becomes the entry (first writer wins)."""
    tmp = scratch(kind, key)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    put(kind, key, tmp)
