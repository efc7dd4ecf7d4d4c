"""Models the user did not build here run in a child process with memory and time limits.

A hostile or broken ONNX file can crash onnxruntime (a segfault takes the whole interpreter
with it), allocate without bound or spin forever. `bench`, `inspect`, `quantize`, `diagnose` and
the `onnx` model source therefore touch such files only in a child (`python -I -m
exporter.isolate TASK`) whose address space is capped with RLIMIT_AS and whose wall time is
bounded by the parent, after `prescan` has refused declared sizes no machine could hold. The
parent turns a crash, a limit or an onnxruntime refusal into a one-line error (exit 2) and an
unexpected failure of edgex itself into exit 3; it never dies with the child and never waits
forever. Results come back as JSON (never pickle: the child is the untrusted side).

Limits: EDGEX_SANDBOX_MEMORY_MB (default: 3/4 of physical memory) and
EDGEX_SANDBOX_SECONDS (default 600).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from exporter.errors import EdgexError, GateFailure, UsageError

MEMORY_ENV = "EDGEX_SANDBOX_MEMORY_MB"
SECONDS_ENV = "EDGEX_SANDBOX_SECONDS"
_BITS = {  # onnx.TensorProto data type -> bits per element, for declared-size checks
    1: 32,  # FLOAT
    2: 8,  # UINT8
    3: 8,  # INT8
    4: 16,  # UINT16
    5: 16,  # INT16
    6: 32,  # INT32
    7: 64,  # INT64
    9: 8,  # BOOL
    10: 16,  # FLOAT16
    11: 64,  # DOUBLE
    12: 32,  # UINT32
    13: 64,  # UINT64
    14: 64,  # COMPLEX64
    15: 128,  # COMPLEX128
    16: 16,  # BFLOAT16
    17: 8,  # FLOAT8E4M3FN
    18: 8,
    19: 8,
    20: 8,
    21: 4,  # UINT4
    22: 4,  # INT4
    23: 4,  # FLOAT4E2M1
}


@dataclass(frozen=True)
class Limits:
    memory_mb: int
    seconds: float


def _env_number(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if value <= 0:
        raise UsageError(
            f"'{raw}' is not a positive number", path="environment", field=name, fix=f"unset {name} or give a number"
        )
    return value


def limits() -> Limits:
    """The sandbox limits from the environment (checked: a bad value is a usage error)."""
    try:
        physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20
    except (ValueError, OSError):
        physical = 8192
    # RLIMIT_AS caps address space, which runs well above resident memory (thread stacks, arenas):
    # the default leaves room for that and still stops a model that would take the machine down.
    default = max(1024, int(physical * 0.75))
    return Limits(int(_env_number(MEMORY_ENV, default)), _env_number(SECONDS_ENV, 600.0))


# --------------------------------------------------------------------------- pre-scan


def prescan(model: Any, path: Path, where: Path | str, field: str) -> dict:
    """Declared sizes checked before any session: tensors whose bytes disagree with their shape,
    negative dimensions, and weights or fixed-shape values larger than the sandbox may hold."""
    from exporter.onnx_io import all_tensors

    budget = limits().memory_mb * 2**20
    fix = "re-export the model"
    total = 0
    for tensor in all_tensors(model):
        if any(d < 0 for d in tensor.dims):
            raise UsageError(f"tensor '{tensor.name}' declares a negative dimension", path=where, field=field, fix=fix)
        count = 1
        for d in tensor.dims:
            count *= d
        bits = _BITS.get(tensor.data_type)
        if bits is None:
            continue
        need = -(-count * bits // 8)
        external = {e.key: e.value for e in tensor.external_data}
        if external:
            held = int(external.get("length") or 0)
            if held and held != need:
                raise UsageError(
                    f"tensor '{tensor.name}' declares {need} bytes but its external data holds {held}",
                    path=where,
                    field=field,
                    fix=fix,
                )
        elif tensor.HasField("raw_data") and len(tensor.raw_data) != need:
            raise UsageError(
                f"tensor '{tensor.name}' declares shape {list(tensor.dims)} ({need} bytes) but holds "
                f"{len(tensor.raw_data)} bytes",
                path=where,
                field=field,
                fix=fix,
            )
        total += need
    if total > budget:
        raise UsageError(
            f"'{path.name}' declares {total / 2**20:.0f} MB of weights, over the sandbox memory limit "
            f"({budget // 2**20} MB)",
            path=where,
            field=field,
            fix=f"raise {MEMORY_ENV} if the model is genuine",
        )
    graph = model.graph
    for value in list(graph.input) + list(graph.output) + list(graph.value_info):
        tt = value.type.tensor_type
        dims = [d.dim_value for d in tt.shape.dim if d.HasField("dim_value")]
        if not dims or len(dims) != len(tt.shape.dim) or any(d < 0 for d in dims):
            continue
        count = 1
        for d in dims:
            count *= d
        need = -(-count * _BITS.get(tt.elem_type, 8) // 8)
        if need > budget:
            raise UsageError(
                f"value '{value.name}' declares shape {dims} ({need / 2**20:.0f} MB), over the sandbox memory "
                f"limit ({budget // 2**20} MB)",
                path=where,
                field=field,
                fix=f"fix the declared shape, or raise {MEMORY_ENV} if it is genuine",
            )
    return {"weight_bytes": total}


# --------------------------------------------------------------------------- the parent side


def run_isolated(task: str, payload: dict, model: Path, field: str = "model", seconds: float | None = None) -> Any:
    """Run TASK(payload) in a limited child; its JSON result, or the child's error raised here."""
    lim = limits()
    timeout = seconds if seconds is not None else lim.seconds
    env = dict(os.environ)
    env["EDGEX_SANDBOX_CHILD_MB"] = str(lim.memory_mb)
    from exporter import log

    env["EDGEX_SANDBOX_VERBOSITY"] = str(log._level)
    proc = subprocess.Popen(
        [sys.executable, "-I", "-m", "exporter.isolate", task],
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
        kind, text = err.get("kind"), str(err.get("message", ""))[:500]
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
        raise RuntimeError(f"in the sandboxed run on '{model.name}': {text}")
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


def probe(model: Path, field: str = "model", threads: int = 1) -> dict:
    """Create a session for MODEL and run it once on seeded inputs of its declared shapes, in the sandbox."""
    return run_isolated("probe", {"path": str(model), "threads": threads, "field": field}, model, field)


# --------------------------------------------------------------------------- the child side


def _task_probe(p: dict) -> dict:
    from exporter.runtime import make_session, synthetic_inputs

    session = _session(Path(p["path"]), p["field"], p.get("threads", 1), make_session)
    feed = synthetic_inputs(session)
    try:
        outs = session.run(None, feed)
    except Exception as exc:
        raise _runtime_refusal(exc, Path(p["path"]), p["field"]) from None
    import numpy as np

    return {
        "inputs": {k: list(v.shape) for k, v in feed.items()},
        "outputs": [list(np.shape(o)) for o in outs],
        "finite": all(bool(np.isfinite(o).all()) for o in outs if isinstance(o, np.ndarray) and o.dtype.kind in "fc"),
    }


def _session(path: Path, field: str, threads: int, make: Callable):
    try:
        return make(path, threads)
    except Exception as exc:
        raise _runtime_refusal(exc, path, field) from None


def _runtime_refusal(exc: BaseException, path: Path, field: str) -> Exception:
    if isinstance(exc, MemoryError) or "alloc" in str(exc).lower():
        return MemoryError(str(exc).splitlines()[0][:300] if str(exc) else "allocation failed")
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
    return UsageError(
        f"onnxruntime cannot run this model ({type(exc).__name__}: {first})",
        path=path,
        field=field,
        fix="re-export the model; `edgex inspect` shows what it declares",
    )


def _task_bench(p: dict) -> dict:
    from exporter.bench_file import bench_file
    from exporter.profiles import get_profiles
    from exporter.recipe import BenchSection

    prof = get_profiles([p["profile"]], [Path(d) for d in p["profiles_dirs"]])[0]
    return _guarded(
        Path(p["path"]),
        lambda: bench_file(Path(p["path"]), prof, BenchSection(**p["settings"]), power_sensor=p.get("power_sensor")),
    )


def _task_inspect(p: dict) -> dict:
    from exporter.graph_stats import inspect_model

    return inspect_model(Path(p["path"]))


def _task_quantize(p: dict) -> dict:
    from exporter.profiles import get_profiles
    from exporter.quant.standalone import quantize_file

    prof = get_profiles([p["profile"]], [Path(d) for d in p["profiles_dirs"]])[0]
    args = dict(p["args"])
    for key in ("calibration", "out", "evaluation"):
        if args.get(key) is not None:
            args[key] = Path(args[key])
    return _guarded(Path(p["path"]), lambda: quantize_file(Path(p["path"]), prof, **args))


def _task_diagnose(p: dict) -> dict:
    from exporter.bench_file import synthetic_feed
    from exporter.quant.diagnose import diagnose

    path = Path(p["path"])
    fp32 = Path(p["fp32"]) if p.get("fp32") else None
    return _guarded(path, lambda: diagnose(path, synthetic_feed(path), fp32))


def _guarded(path: Path, fn: Callable[[], Any]) -> Any:
    """onnxruntime's own refusals of a given model are the model's problem (exit 2), not edgex's."""
    try:
        return fn()
    except EdgexError:
        raise
    except Exception as exc:
        if type(exc).__module__.startswith("onnxruntime"):
            raise _runtime_refusal(exc, path, "model") from None
        raise


TASKS: dict[str, Callable[[dict], Any]] = {
    "probe": _task_probe,
    "bench": _task_bench,
    "inspect": _task_inspect,
    "quantize": _task_quantize,
    "diagnose": _task_diagnose,
}


def _child(task: str) -> int:
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
        result = {"result": TASKS[task](payload)}
    except MemoryError as exc:
        result = {"error": {"kind": "memory", "message": str(exc) or "allocation failed"}}
    except UsageError as exc:
        result = {"error": {"kind": "usage", "message": exc.one_line()}}
    except EdgexError as exc:
        kind = "gate" if exc.exit_code == 1 else "internal"
        result = {"error": {"kind": kind, "message": exc.one_line()}}
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        kind = "memory" if "alloc" in first.lower() else "internal"
        result = {"error": {"kind": kind, "message": f"{type(exc).__name__}: {first}"}}
    channel.write(json.dumps(result, default=str) + "\n")
    channel.flush()
    return 0 if "result" in result else 1


if __name__ == "__main__":
    from exporter import log

    log.set_verbosity(int(os.environ.get("EDGEX_SANDBOX_VERBOSITY", "1")))
    sys.exit(_child(sys.argv[1]))
