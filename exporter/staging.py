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
def _exclusive(final: Path) -> Iterator[None]:
    """An advisory lock per output folder: two builds into one folder cannot interleave.

    The lock file lives in the system temp dir (keyed by the folder's absolute path), so nothing
    is left beside the user's release and the file is never deleted under a waiting process.
    """
    import fcntl
    import hashlib

    locks = Path(tempfile.gettempdir()) / "edgex-locks"
    locks.mkdir(exist_ok=True)
    lock_path = locks / (hashlib.sha256(str(final).encode()).hexdigest()[:24] + ".lock")
    with open(lock_path, "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or "another process"
            raise UsageError(
                f"another edgex build ({holder}) is writing this folder",
                path=final,
                field="output",
                fix="wait for it to finish, or choose another --out",
            ) from None
        lock.seek(0)
        lock.truncate()
        lock.write(f"pid {os.getpid()}")
        lock.flush()
        try:
            yield
        finally:
            lock.seek(0)
            lock.truncate()


@contextmanager
def staged_output(final: Path) -> Iterator[Path]:
    final = check_output(final)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(
            f"cannot write there ({exc.strerror})", path=final.parent, field="output", fix="choose a writable --out"
        ) from None
    with _exclusive(final):
        check_output(final)  # checked again under the lock: another build may have just written it
        with _staged(final) as tmp:
            yield tmp


@contextmanager
def _staged(final: Path) -> Iterator[Path]:
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
