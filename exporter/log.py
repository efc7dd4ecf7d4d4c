"""Progress and logs go to stderr, so stdout stays clean for --json."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

_level = 1  # 0 quiet, 1 normal, 2 verbose


def set_verbosity(level: int) -> None:
    global _level
    _level = level


def enabled() -> bool:
    """Whether progress (bars, per-epoch lines) should be shown."""
    return _level >= 1


def info(msg: str) -> None:
    if _level >= 1:
        print(msg, file=sys.stderr, flush=True)


def debug(msg: str) -> None:
    if _level >= 2:
        print(msg, file=sys.stderr, flush=True)


@contextmanager
def quiet_libraries() -> Iterator[None]:
    """Silence Python logging (WARNING and below) while a library call runs.

    onnxruntime.quantization and onnxruntime.transformers log every tensor they leave in float and
    every fusion, under many logger names; what matters is counted afterwards and reported.
    """
    import logging

    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)


@contextmanager
def stdout_to_stderr(discard: bool = False) -> Iterator[None]:
    """Send anything third-party code prints (Python or native) to stderr, or nowhere, while it runs.

    Some tools print progress to stdout (onnxruntime.transformers' shape inference notices, the
    ORT-format converter's chatter), which would corrupt `--json` output; stdout belongs to results.
    """
    sys.stdout.flush()
    saved = os.dup(1)
    target = os.open(os.devnull, os.O_WRONLY) if discard else 2
    os.dup2(target, 1)
    if discard:
        os.close(target)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)
