"""Progress and logs go to stderr, so stdout stays clean for --json."""

from __future__ import annotations

import sys

_level = 1  # 0 quiet, 1 normal, 2 verbose


def set_verbosity(level: int) -> None:
    global _level
    _level = level


def info(msg: str) -> None:
    if _level >= 1:
        print(msg, file=sys.stderr, flush=True)


def debug(msg: str) -> None:
    if _level >= 2:
        print(msg, file=sys.stderr, flush=True)
