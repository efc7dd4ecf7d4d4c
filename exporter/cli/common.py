"""What every `edgex` command shares: its options, how it prints, how it fails.

One exit-code contract for all commands: `command` turns an EdgexError into its exit code and a
one-line message (JSON on stdout with --json), anything else into exit 3. It lives here, not in
the group's module, because every command module needs it and the group imports them all.
"""

from __future__ import annotations

import json
import sys
import traceback
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from exporter import log
from exporter.errors import EXIT_GATE, EXIT_INTERNAL, EdgexError, clip, describe_exception

if TYPE_CHECKING:
    from exporter.profiles import DeviceProfile

JSON_OPT = click.option("--json", "as_json", is_flag=True, help="Machine-readable output on stdout.")
TRUST_OPT = click.option(
    "--trust-code",
    is_flag=True,
    help="Load code-carrying checkpoints (TorchScript): their code runs. Only for files you trust.",
)
JUNIT_OPT = click.option(
    "--junit", type=click.Path(path_type=Path), help="Also write the budget verdicts as JUnit XML here."
)


def plan_opt(help_text: str, required: bool = False) -> Callable:
    """`--plan` means a plan.json wherever it appears (build, run, merge); only its role differs."""
    return click.option("--plan", "plan_path", type=click.Path(path_type=Path), required=required, help=help_text)


def out_file_opt(help_text: str) -> Callable:
    """The one JSON file a matrix command writes (plan, merge): required, as `-o` or `--out`."""
    return click.option("-o", "--out", type=click.Path(path_type=Path), required=True, help=help_text)


def emit(data: Any, as_json: bool, text: Callable[[Any], str]) -> None:
    if as_json:
        click.echo(json.dumps(data, indent=2, sort_keys=True))
    else:
        click.echo(text(data))


def emit_judged(result: dict, as_json: bool, text: Callable[[Any], str]) -> int:
    """Emit, then exit 1 when a budget or gate was missed: the result is printed either way."""
    emit(result, as_json, text)
    return 0 if result["ok"] else EXIT_GATE


def get_profile(ctx: click.Context, profile_id: str) -> DeviceProfile:
    """The profile given by id, looked up where `edgex --profiles-dir` says too."""
    from exporter.profiles import get_profiles

    return get_profiles([profile_id], ctx.obj["profiles_dirs"])[0]


def profile_payload(ctx: click.Context, prof: DeviceProfile) -> dict:
    """What a sandboxed child needs to load the same profile: it cannot see this process's objects."""
    return {"profile": prof.id, "profiles_dirs": [str(d) for d in ctx.obj["profiles_dirs"]]}


def command(fn: Callable) -> Callable:
    """Turn EdgexError into its exit code and a one-line message; anything else is exit 3."""

    @wraps(fn)
    def wrapper(*args, **kwargs):
        as_json = kwargs.get("as_json", False)
        try:
            code = fn(*args, **kwargs)
        except EdgexError as exc:
            if exc.exit_code == EXIT_INTERNAL:
                _internal(exc, exc.one_line(), as_json, type(exc).__name__)
            fail(exc.one_line(), exc.exit_code, as_json, type(exc).__name__)
        except KeyboardInterrupt:
            fail("interrupted", 130, as_json, "KeyboardInterrupt")
        except Exception as exc:  # an edgex bug, not the user's input
            _internal(exc, f"internal error: {clip(describe_exception(exc), 1000)}", as_json, "InternalError")
        sys.exit(code or 0)

    return wrapper


def _internal(exc: BaseException, message: str, as_json: bool, kind: str) -> None:
    """Exit 3: the whole message (pydantic errors with their fields), the tracebacks under -v.

    A sandboxed child's traceback (`InternalError.details`) is printed before the parent's: the
    parent's alone ends at the line that re-raised the child's error and shows nothing of the cause."""
    details = getattr(exc, "details", "")
    if log._level >= 2:
        if details:
            click.echo(details.rstrip("\n"), err=True)
        traceback.print_exc()
    else:
        message += " (rerun with -v for the traceback)"
    fail(message, EXIT_INTERNAL, as_json, kind)


def fail(message: str, code: int, as_json: bool, kind: str) -> None:
    if as_json:
        click.echo(json.dumps({"error": {"type": kind, "message": message, "exit_code": code}}, sort_keys=True))
    click.echo(f"edgex: error: {message}", err=True)
    sys.exit(code)
