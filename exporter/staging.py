"""Write a release into a temporary sibling folder and move it into place only when complete.

A crash or kill at any moment leaves either the previous complete release or nothing under the
final name, never half an artifact.
"""

from __future__ import annotations

import errno
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


@contextmanager
def atomic_file(path: Path) -> Iterator[Path]:
    """Where to write `path`: the same file name in a fresh hidden folder beside it (same filesystem),
    renamed onto `path` in one step when the block succeeds, so a reader sees the old file or the
    new one and never half of one. When the block fails, nothing is left behind."""
    path = Path(path)
    with tempfile.TemporaryDirectory(prefix=f".{path.name}.edgex-", dir=path.parent) as tmp:
        staged = Path(tmp) / path.name
        yield staged
        os.replace(staged, path)


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
        _recover(final)  # under the lock, anything staged beside this folder is from a build that died
        check_output(final)  # checked again under the lock: another build may have just written it
        with _staged(final) as tmp:
            yield tmp


def _recover(final: Path) -> None:
    """Clean up after a build that was killed: restore a release caught between the two renames of
    the fallback swap, then delete stale staging folders. Only called while holding the lock."""
    olds = sorted(final.parent.glob(f".{final.name}.edgex-old-*"))
    if not final.exists():
        for old in olds:
            previous = old / "previous"
            if previous.is_dir() and not previous.is_symlink() and _is_release(previous):
                os.rename(previous, final)
                break
    for stale in olds + sorted(final.parent.glob(f".{final.name}.edgex-tmp-*")):
        if stale.is_dir() and not stale.is_symlink():
            shutil.rmtree(stale, ignore_errors=True)


_WRITE_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EACCES, errno.EPERM, errno.EROFS}


def _write_error(exc: OSError, final: Path, tmp: Path) -> UsageError | None:
    """Disk full, quota, file too large, permission, read-only: the path and the fix, nothing half-written.

    None for errors that are not about writing the release (e.g. an unreadable input file)."""
    if exc.errno not in _WRITE_ERRORS:
        return None
    where = Path(os.fsdecode(exc.filename)) if exc.filename else final
    if where.is_relative_to(tmp):
        where = final / where.relative_to(tmp)  # name the file as the user will know it
    elif exc.errno in (errno.EACCES, errno.EPERM) and not where.is_relative_to(final.parent):
        return None
    full = exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
    return UsageError(
        f"cannot write {where} ({exc.strerror or errno.errorcode.get(exc.errno, exc)}); nothing was left "
        "under the output name",
        path=final,
        field="output",
        fix="free space on that disk or choose another --out" if full else "make it writable or choose another --out",
    )


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (renameat2 RENAME_EXCHANGE); False where the kernel or filesystem cannot."""
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(b))


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
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes 0700; a release folder gets the user's usual mode
        _fsync_tree(tmp)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        mapped = _write_error(exc, final, tmp)
        if mapped is not None:
            raise mapped from None
        raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    # From here on the name always holds a complete release: the new one, or (until the swap) the old.
    if final.exists():
        if _exchange(tmp, final):
            shutil.rmtree(tmp, ignore_errors=True)  # tmp now holds the previous release
            return
        old = Path(tempfile.mkdtemp(prefix=f".{final.name}.edgex-old-", dir=final.parent))
        os.rename(final, old / "previous")  # a kill right here is repaired by the next build (`_recover`)
        os.rename(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, final)


def _fsync_tree(root: Path) -> None:
    """Flush every file before the rename, so a power cut cannot leave a renamed folder of empty files."""
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.is_symlink():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
