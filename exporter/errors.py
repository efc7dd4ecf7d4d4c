"""Typed errors whose class decides the exit code, so every command means the same thing by 0/1/2/3.

Release pipelines branch on the exit code; a message alone is not enough.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_GATE = 1
EXIT_USAGE = 2
EXIT_INTERNAL = 3


class EdgexError(Exception):
    """Base class: carries the exit code and a one-line message meant for a human."""

    exit_code = EXIT_INTERNAL

    def one_line(self) -> str:
        return " ".join(str(self).split())


class UsageError(EdgexError):
    """Bad input: a recipe, profile, data file or flag the user must fix (exit 2).

    The message names the file, the field and the fix.
    """

    exit_code = EXIT_USAGE

    def __init__(self, message: str, *, path: object | None = None, field: str | None = None, fix: str | None = None):
        parts = []
        if path is not None:
            parts.append(f"{path}:")
        if field:
            parts.append(f"{field}:")
        parts.append(message.rstrip("."))
        text = " ".join(parts)
        if fix:
            text += f" — {fix.rstrip('.')}"
        super().__init__(text)
        self.path = path
        self.field = field
        self.fix = fix


class GateFailure(EdgexError):
    """A quality gate the model cannot pass (parity, NaN/Inf): the artifact is meaningless (exit 1)."""

    exit_code = EXIT_GATE
