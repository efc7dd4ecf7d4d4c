"""The benchmark that runs on a board: numpy + onnxruntime + the standard library, nothing of edgex.

The remote runner (exporter/bench/remote.py) copies this file, power.py and the model into a
temporary folder on the board and calls `main(folder)`. It reads `settings.json` (threads, cores to
pin them to, warm-up, runs, seconds, seed, input shapes, power sensor), times the model single-stream the way a local `edgex bench`
does (two blocks, each at least half the runs and half the seconds), reads the process's own peak
RSS, and prints one JSON line: raw samples and facts, which the host turns into the same result a
local run gives. Python 3.8 compatible (JetPack 5 ships 3.8).

`synthetic_feed`, `open_session` and `timed_block` are also what edgex uses on the host (a local
`edgex bench`, a build's interleaved timing), so both time the same query with the same rule.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time

NUMPY_TYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(double)": "float64",
    "tensor(int64)": "int64",
    "tensor(int32)": "int32",
    "tensor(uint8)": "uint8",
    "tensor(int8)": "int8",
    "tensor(bool)": "bool",
}


def open_session(path: str, threads: int = 1, level=None):
    """The single-stream CPU session every timing uses: `threads` intra-op threads, one inter-op,
    sequential, every graph optimisation unless `level` says otherwise."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL if level is None else level
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])


def synthetic_feed(model, seed: int = 0, shapes=None, values=None) -> dict:
    """Seeded inputs in the given shapes: normal floats, zero integers.

    `model`: a model file, an onnxruntime session, or the session's `get_inputs()`. `shapes`:
    {input name: sizes} (edgex resolves them with exporter.shapes.resolve_shapes). A fixed size the
    model declares is used as is; a dynamic one (symbolic or unknown) must be given: no size is
    ever guessed, because timing a 1x1 image of a detector is no measure of the 640x640 one.
    Raises ValueError naming the input and axis otherwise. `values`: {input name: array-like}
    fed as given (broadcast to the shape), for inputs whose value picks what the model runs
    (a sample rate, a state's initial value) where random data would pick a branch never used."""
    import numpy as np

    if isinstance(model, (str, os.PathLike)):
        model = open_session(os.fspath(model))
    inputs = model.get_inputs() if hasattr(model, "get_inputs") else model
    shapes = shapes or {}
    values = values or {}
    rng = np.random.default_rng(seed)
    feed = {}
    for inp in inputs:
        shape = _feed_shape(inp.name, list(inp.shape), shapes.get(inp.name))
        dtype = np.dtype(NUMPY_TYPES.get(inp.type, "float32"))
        if inp.name in values:
            feed[inp.name] = np.broadcast_to(np.asarray(values[inp.name], dtype=dtype), shape).copy()
        elif np.issubdtype(dtype, np.floating):
            feed[inp.name] = rng.standard_normal(shape).astype(dtype)
        else:
            feed[inp.name] = np.zeros(shape, dtype=dtype)
    return feed


def _feed_shape(name: str, declared: list, given) -> list:
    """The declared shape with each dynamic size taken from `given`; ValueError where that cannot be."""
    if given is not None:
        given = [int(d) for d in given]
        if len(given) != len(declared):
            raise ValueError(f"input '{name}' has rank {len(declared)}, the shape given has {len(given)} sizes")
        for axis, (d, g) in enumerate(zip(declared, given)):
            if isinstance(d, int) and d > 0 and d != g:
                raise ValueError(f"input '{name}' axis {axis} is fixed at {d}, the shape given says {g}")
        return given
    for axis, d in enumerate(declared):
        if not (isinstance(d, int) and d > 0):
            what = repr(d) if d else "unnamed"
            raise ValueError(f"input '{name}' axis {axis} ({what}) is dynamic and no size was given for it")
    return declared


def block_limits(min_runs: int, min_seconds: float, max_seconds: float, rounds: int) -> tuple:
    """Each of `rounds` blocks gets its share of the minimum runs (rounded up) and of the seconds."""
    return max(1, -(-int(min_runs) // rounds)), float(min_seconds) / rounds, float(max_seconds) / rounds


def timed_block(run, feed: dict, limits: tuple, samples: list) -> tuple:
    """One block of single-stream queries, each after the previous one: it ends once it has both
    its runs and its seconds, or at its maximum seconds. Appends each query's milliseconds to
    `samples`; returns (queries, seconds)."""
    per_runs, per_secs, max_secs = limits
    clock = time.perf_counter_ns
    start, count = clock(), 0
    while True:
        t0 = clock()
        run(None, feed)
        t1 = clock()
        samples.append((t1 - t0) / 1e6)
        count += 1
        if (count >= per_runs and t1 - start >= per_secs * 1e9) or t1 - start >= max_secs * 1e9:
            break
    return count, (clock() - start) / 1e9


def status_mb(key: str):
    """A /proc/self/status figure in MB (VmRSS now, VmHWM the peak so far); None where there is none."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _fail(kind: str, message: str) -> int:
    print(json.dumps({"ok": False, "error": {"kind": kind, "message": message}}))
    return 0


def run(folder: str, settings: dict) -> dict:
    import numpy as np
    import onnxruntime as ort

    sys.path.insert(0, folder)
    import affinity  # copied beside this script (exporter/bench/affinity.py)

    pinning = affinity.plan(settings.get("cpu_affinity"))
    if pinning["applied"]:  # before the session: its pool threads inherit the mask (a throwaway process)
        os.sched_setaffinity(0, pinning["applied"])
    threads = max(1, min(int(settings["threads"]), os.cpu_count() or 1))
    before = status_mb("VmRSS")
    sess = open_session(os.path.join(folder, "model.onnx"), threads)
    feed = synthetic_feed(sess, int(settings.get("seed", 0)), settings.get("shapes"), settings.get("values"))
    meter, power = None, None
    spec = settings.get("power")
    if spec:
        sys.path.insert(0, folder)
        import power as power_mod

        meter, missing = power_mod.meter_for(
            spec["sensor"], None, tuple(spec.get("channels", ())), spec["rate_hz"], spec["idle_seconds"]
        )
        if meter is None:
            if spec.get("required"):
                raise LookupError(missing["reason"])
            power = missing
    for _ in range(int(settings["warmup_runs"])):
        sess.run(None, feed)
    rounds = 2
    limits = block_limits(settings["min_runs"], settings["min_seconds"], settings["max_seconds"], rounds)
    samples, seconds = [], 0.0
    if meter is not None:
        meter.idle()
    for _ in range(rounds):
        if meter is not None:
            meter.block_start("model")
        count, spent = timed_block(sess.run, feed, limits, samples)
        seconds += spent
        if meter is not None:
            meter.block_stop("model", count)
    if meter is not None:
        power = meter.result("model", spec.get("rate_hz_budget"))
    peak = status_mb("VmHWM")
    memory = {
        "peak_rss_mb": round(peak, 2) if peak is not None else None,
        "baseline_rss_mb": round(before, 2) if before is not None else None,
        "session_mb": round(max(peak - before, 0.0), 2) if peak is not None and before is not None else None,
        "basis": "VmHWM of the benchmark process on the board (numpy + onnxruntime only)",
    }
    return {
        "ok": True,
        "samples_ms": [round(s, 6) for s in samples],
        "seconds": seconds,
        "threads": threads,
        "affinity": pinning,
        "memory": memory,
        "power": power,
        "board": {
            "hostname": platform.node(),
            "machine": platform.machine(),
            "cpu_count": os.cpu_count(),
            "python_version": platform.python_version(),
            "numpy": np.__version__,
            "onnxruntime": ort.__version__,
        },
    }


def main(folder: str) -> int:
    missing = []
    for module in ("numpy", "onnxruntime"):
        try:
            __import__(module)
        except ImportError:
            missing.append(module)
    if missing:
        return _fail("missing-module", f"the board's python ({sys.executable}) lacks {', '.join(missing)}")
    with open(os.path.join(folder, "settings.json")) as f:
        settings = json.load(f)
    try:
        result = run(folder, settings)
    except LookupError as exc:
        return _fail("power-sensor", str(exc))
    except Exception as exc:  # one line back to the host, which decides the exit code
        return _fail("internal", f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc) else ''}")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else os.getcwd()))
