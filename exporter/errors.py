"""Typed errors whose class decides the exit code, so every command means the same thing by 0/1/2/3.

Release pipelines branch on the exit code; a message alone is not enough.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import PurePath

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


class InternalError(EdgexError):
    """A step of edgex failed, on a file edgex itself wrote or inside a library it drives (exit 3).

    The message names the step and the file edgex made, never the user's model as the culprit:
    "re-export the model" is no fix for a temporary file the user has never seen. `details` holds
    what `-v` prints (a sandboxed child's traceback, which the parent's own would not show).
    """

    exit_code = EXIT_INTERNAL

    def __init__(self, message: str, *, step: str | None = None, file: object | None = None, details: str = ""):
        text = message if message.startswith("internal error") else f"internal error: {message}"
        if step and file is not None:
            text = f"internal error in step '{step}' on the file edgex wrote ({file}): {message}"
        elif step:
            text = f"internal error in step '{step}': {message}"
        super().__init__(text)
        self.step = step
        self.file = file
        self.reason = message  # without the step and file: what a manifest's `failed.error` records
        self.details = details


def clip(text: str, limit: int = 600) -> str:
    """TEXT on one line, cut at a word boundary with an ellipsis when longer than LIMIT: never mid-word."""
    line = " ".join(str(text).split())
    if len(line) <= limit:
        return line
    cut = line[: limit + 1].rsplit(" ", 1)[0] if " " in line[: limit + 1] else line[:limit]
    return cut.rstrip(" ,;:") + " …"


def describe_exception(exc: BaseException) -> str:
    """`Type: message` on one line, whole; a pydantic ValidationError names every field it refused.

    pydantic's first line ("1 validation error for InputSpec") names the model, not the field;
    the field and the reason are on the lines after it, which a first-line cut would drop."""
    errors = getattr(exc, "errors", None)
    title = getattr(exc, "title", None)
    if callable(errors) and title is not None:
        try:
            found = errors()
        except Exception:  # not pydantic's after all
            found = None
        if found:
            parts = []
            for err in found:
                where = ".".join(str(p) for p in err.get("loc", ())) or "(top level)"
                got = f" (got {err['input']!r})" if "input" in err and not isinstance(err["input"], dict) else ""
                parts.append(f"{where}: {err.get('msg', '')}{got}")
            n = len(found)
            return f"{type(exc).__name__}: {n} validation error{'s' if n > 1 else ''} for {title}: " + "; ".join(parts)
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


@contextmanager
def internal_step(step: str, file: object | None = None) -> Iterator[None]:
    """Inside: a failure of STEP on FILE (a file edgex wrote) is edgex's, an InternalError (exit 3).

    onnxruntime's errors on such a file ("Load model from .../int8-0.onnx failed", "Expected X to be
    an initializer") would otherwise reach a handler that blames the user's model. EdgexErrors
    (already classified) and MemoryError (the sandbox reports it as a limit) pass through."""
    try:
        yield
    except (EdgexError, MemoryError, KeyboardInterrupt):
        raise
    except Exception as exc:
        reason, name = describe_exception(exc), file
        if isinstance(file, PurePath):  # a temporary folder's path means nothing to the user: its name only
            name = file.name
            if str(file.parent) not in ("", "."):
                reason = reason.replace(str(file.parent) + "/", "")
        raise InternalError(reason, step=step, file=name) from exc


# Test hook, for edgex's own tests only: EDGEX_TEST_FAULT="<fault>[,<fault>...]" makes the named step
# fail as a real failure there would, so failure isolation can be tested through the CLI on models
# that otherwise build. Faults: "quantize:<variant>" (the variant's quantize step raises) and
# "corrupt:int8-quantized" (the temporary file static INT8 writes is truncated before it is loaded).
TEST_FAULT_ENV = "EDGEX_TEST_FAULT"


def injected_fault(name: str) -> bool:
    """Whether the test hook asks step NAME to fail (never set outside edgex's tests)."""
    import os

    return name in [f.strip() for f in os.environ.get(TEST_FAULT_ENV, "").split(",") if f.strip()]
