"""Write a release into a temporary sibling folder and move it into place only when complete.

A crash or kill at any moment leaves either the previous complete release or nothing under the
final name, never half an artifact.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from exporter.errors import UsageError


def check_output(final: Path) -> Path:
    """Refuse unusable output paths before any work is done."""
    final = Path(os.path.abspath(final))
    if final.is_symlink():
        raise UsageError(
            "the output folder is a symlink; edgex does not write through links",
            path=final,
            field="output",
            fix="give a real folder path",
        )
    if final.exists() and not final.is_dir():
        raise UsageError(
            "the output path exists and is not a folder", path=final, field="output", fix="choose another --out"
        )
    if final.is_dir() and any(final.iterdir()) and not _is_release(final):
        raise UsageError(
            "the output folder holds files that are not an edgex release; edgex replaces only its own releases",
            path=final,
            field="output",
            fix="choose an empty or new folder for --out",
        )
    return final


def _is_release(folder: Path) -> bool:
    """A previous edgex build: its manifest names our schema. Anything else is never deleted."""
    import json

    try:
        return "schema_version" in json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False


@contextmanager
def staged_output(final: Path) -> Iterator[Path]:
    final = check_output(final)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.edgex-tmp-", dir=final.parent))
    except OSError as exc:
        raise UsageError(
            f"cannot write there ({exc.strerror})", path=final.parent, field="output", fix="choose a writable --out"
        ) from None
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes 0700; a release folder gets the user's usual mode
    old = None
    if final.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{final.name}.edgex-old-", dir=final.parent))
        os.rename(final, old / "previous")
    os.rename(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
