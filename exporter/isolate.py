"""Models the user did not build here run in a child process with memory and time limits.

A hostile or broken ONNX file can crash onnxruntime (a segfault takes the whole interpreter
with it), allocate without bound or spin forever. `bench`, `inspect`, `quantize`, `diagnose` and
the `onnx` model source therefore touch such files only in a child (`python -I -m
exporter.isolate JOB`) whose address space is capped with RLIMIT_AS and whose wall time is
bounded by the parent, after `onnx_io.prescan` has refused declared sizes no machine could hold.
The parent turns a crash, a limit or an onnxruntime refusal into a one-line error (exit 2) and an
unexpected failure of edgex itself into exit 3; it never dies with the child and never waits
forever. Results come back as JSON (never pickle: the child is the untrusted side).

The guard runs a job it is given; it does not import the jobs. A job is named by reference,
`exporter.<module>:<function>`, and the child imports it only if the name is inside the
package and the function was marked with `sandbox_job`: no other code can be run through it.
The jobs themselves live in `exporter.sandbox_jobs`.

Limits (`exporter.limits`): EDGEX_SANDBOX_MEMORY_MB (default: 3/4 of physical memory) and
EDGEX_SANDBOX_SECONDS (default 600).
"""

from __future__ import annotations

import importlib
import json
import os
import signal
import subprocess
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from exporter.errors import EdgexError, GateFailure, InternalError, UsageError, clip, describe_exception
from exporter.limits import MEMORY_ENV, SECONDS_ENV, Limits, limits

JOB_PACKAGE = "exporter"
_MARK = "__edgex_sandbox_job__"
Job = Callable[[dict], Any]


# --------------------------------------------------------------------------- naming a job


def sandbox_job(fn: Job) -> Job:
    """Mark FN as runnable in the child: only marked functions of edgex's own package can be."""
    setattr(fn, _MARK, True)
    return fn


def _split_reference(ref: str) -> tuple[str, str]:
    """`exporter.<module>:<function>`, every part a plain identifier, or ValueError."""
    module, sep, name = ref.partition(":")
    parts = module.split(".")
    if not sep or not name.isidentifier() or parts[0] != JOB_PACKAGE or not all(p.isidentifier() for p in parts):
        raise ValueError(f"sandbox job '{ref}' is not a function of the {JOB_PACKAGE} package (module:function)")
    return module, name


def job_reference(job: Job | str) -> str:
    """The name the child imports JOB by; checked here so a wrong name fails before any child starts."""
    if isinstance(job, str):
        ref = job
    else:
        ref = f"{job.__module__}:{job.__qualname__}"
        if not getattr(job, _MARK, False):
            raise ValueError(f"'{ref}' is not marked with isolate.sandbox_job")
    _split_reference(ref)
    return ref


def resolve_job(ref: str) -> Job:
    """Child side: import the job REF names, refusing anything but a marked function of edgex."""
    module, name = _split_reference(ref)
    fn = getattr(importlib.import_module(module), name, None)
    if not callable(fn) or not getattr(fn, _MARK, False):
        raise ValueError(f"'{ref}' is not a sandbox job (mark it with isolate.sandbox_job)")
    return fn


# --------------------------------------------------------------------------- the parent side


def run_on_model(job: Job | str, model: Path, payload: dict, extra_seconds: float = 0.0, field: str = "model") -> Any:
    """A model given by the user (command line or Python API): checked here, then run only in the child."""
    from exporter.onnx_io import check_onnx_file

    check_onnx_file(model, field=field)
    seconds = limits().seconds + extra_seconds
    return run_isolated(job, {"path": str(model), **payload}, model, field=field, seconds=seconds)


def run_isolated(job: Job | str, payload: dict, model: Path, field: str = "model", seconds: float | None = None) -> Any:
    """Run JOB(payload) in a limited child; its JSON result, or the child's error raised here."""
    ref = job_reference(job)
    lim = limits()
    timeout = seconds if seconds is not None else lim.seconds
    env = dict(os.environ)
    env["EDGEX_SANDBOX_CHILD_MB"] = str(lim.memory_mb)
    from exporter import log

    env["EDGEX_SANDBOX_VERBOSITY"] = str(log._level)
    proc = subprocess.Popen(
        [sys.executable, "-I", "-m", "exporter.isolate", ref],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=None,  # progress lines go straight to the user's stderr
        env=env,
        start_new_session=True,  # its own process group: a timeout kills the grandchildren too
    )
    try:
        out, _ = proc.communicate(json.dumps(payload).encode(), timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        raise UsageError(
            f"'{model.name}' did not finish within the sandbox time limit ({timeout:g} s)",
            path=model,
            field=field,
            fix=f"raise {SECONDS_ENV} if the model is genuinely slow",
        ) from None
    except BaseException:
        _kill_group(proc)
        raise
    finally:
        _kill_group(proc)  # whatever the child left running in its group
    return _result(proc.returncode, out, model, field, lim)


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


def _result(code: int, out: bytes, model: Path, field: str, lim: Limits) -> Any:
    lines = out.decode("utf-8", "replace").strip().splitlines()
    message = None
    if lines:
        try:
            message = json.loads(lines[-1])
        except ValueError:
            message = None
    if isinstance(message, dict) and "result" in message and code == 0:
        return message["result"]
    if isinstance(message, dict) and "error" in message:
        err = message["error"]
        # Passed up whole (a cut would drop a pydantic field name); only a runaway message is
        # shortened, at a word boundary.
        kind, text = err.get("kind"), clip(str(err.get("message", "")), 2000)
        if kind == "memory":
            raise UsageError(
                f"'{model.name}' needs more memory than the sandbox limit ({lim.memory_mb} MB): {text}",
                path=model,
                field=field,
                fix=f"raise {MEMORY_ENV} if the model is genuine",
            )
        if kind == "usage":
            raise UsageError(text)  # already names the file, field and fix
        if kind == "gate":
            raise GateFailure(text)
        # edgex's own failure in the child: exit 3 with the child's message and, under -v, its traceback
        where = f"(in the sandboxed run on '{model.name}')"
        text = f"{text} {where}" if text.startswith("internal error") else f"{where}: {text}"
        raise InternalError(text, details=str(err.get("traceback", "")))
    if code < 0:
        name = signal.Signals(-code).name if -code in signal.Signals._value2member_map_ else str(-code)
        raise UsageError(
            f"onnxruntime crashed on '{model.name}' ({name}); the model is malformed or hostile",
            path=model,
            field=field,
            fix="re-export the model from its source; the build process was not affected",
        )
    raise UsageError(
        f"the sandboxed run on '{model.name}' exited with code {code} and no result",
        path=model,
        field=field,
        fix=f"re-export the model, or raise {MEMORY_ENV} if it ran out of memory",
    )


# --------------------------------------------------------------------------- the child side


def _child(ref: str) -> int:
    import resource

    limit = int(os.environ.get("EDGEX_SANDBOX_CHILD_MB", "8192")) * 2**20
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    # Results travel on a private copy of stdout; anything printed (by Python or native code) goes to stderr.
    channel = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    payload = json.loads(sys.stdin.read())
    try:
        result = {"result": resolve_job(ref)(payload)}
    except MemoryError as exc:
        result = {"error": {"kind": "memory", "message": str(exc) or "allocation failed"}}
    except UsageError as exc:
        result = {"error": {"kind": "usage", "message": exc.one_line()}}
    except EdgexError as exc:
        kind = "gate" if exc.exit_code == 1 else "internal"
        result = {"error": {"kind": kind, "message": exc.one_line(), "traceback": traceback.format_exc()}}
    except Exception as exc:
        # The whole message (describe_exception names a pydantic error's fields) and the traceback:
        # the parent's own traceback would end where it re-raised this and show nothing of the cause.
        text = describe_exception(exc)
        kind = "memory" if "alloc" in str(exc).lower() else "internal"
        result = {"error": {"kind": kind, "message": text, "traceback": traceback.format_exc()}}
    channel.write(json.dumps(result, default=str) + "\n")
    channel.flush()
    return 0 if "result" in result else 1


if __name__ == "__main__":
    from exporter import log

    log.set_verbosity(int(os.environ.get("EDGEX_SANDBOX_VERBOSITY", "1")))
    sys.exit(_child(sys.argv[1]))
