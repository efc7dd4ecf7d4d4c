"""Qualcomm's QNN execution provider on the HTP (Hexagon NPU) backend, emulated on x86_64 Linux.

The `onnxruntime-qnn` wheel (the `edgex[qnn]` extra) plugs into the stock onnxruntime and ships
Qualcomm's HTP backend, which on x86_64 emulates the NPU. So the real runtime, not an operator
table, says which nodes the NPU takes; QDQ models are evaluated with the NPU's own integer
arithmetic; and the EPContext model a device loads (context binary embedded) is compiled here.

Handled here so callers need not know: QNN prints a banner to fd 1 when it loads and the EP logs
refused nodes at ERROR level (both captured: refusals come back as data); a session whose HTP
device cannot start (e.g. unknown soc_model) silently runs every node on the CPU (refused).
Compiling twice in one process gives different bytes (process-wide graph/tensor counters) and
compiling from a path hashes the path into the node name, so `compile_context` compiles the
model's bytes in a fresh child: the ctx file depends only on model bytes, SoC and versions.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import json
import logging
import mmap
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from exporter.errors import InternalError, UsageError

EP = "QNNExecutionProvider"
EXTRA = "edgex[qnn]"
_log = logging.getLogger(__name__)

_QNN_TYPES_H = (
    "QAIRT SDK include/QNN/QnnTypes.h enum Qnn_SocModel_t, as published in "
    "https://github.com/peyer/qcom_qnn/blob/2371f46e94fbed5cef62243acd33eabbfb06b580/include/QNN/QnnTypes.h"
)
_EXECUTORCH = (
    "https://github.com/pytorch/executorch/blob/0e9182a36b1ca9e423e28c4fa862e47887b050c1/"
    "backends/qualcomm/serialization/qc_schema.py (QcomChipset, _soc_info_table)"
)


def _soc(qnn_name: str, soc_model: int, htp_arch: int) -> dict:
    src = f"{qnn_name} = {soc_model}: {_QNN_TYPES_H}; V{htp_arch}: {_EXECUTORCH}"
    return {"soc_model": soc_model, "htp_arch": htp_arch, "source": src}


# soc_model is QNN's SoC id (provider option `soc_model`); htp_arch the Hexagon version (`htp_arch`).
SOCS: dict[str, dict] = {
    "snapdragon-8-gen2": _soc("SM8550", 43, 73),
    "snapdragon-8-gen3": _soc("SM8650", 57, 75),
    "snapdragon-8-elite": _soc("SM8750", 69, 79),
    "sa8295p": _soc("SA8295", 39, 68),
    "sa8255p": _soc("SA8255", 52, 73),
    "qcs9100": _soc("QCS9100", 77, 73),
    # No published QNN id for SA8775P: QnnTypes.h (deprecated, frozen) has none. Qualcomm AI Hub's
    # "SA8775P ADP" reports hexagon:v73; its same-die siblings are QCS9100 (77) and SA8255P (52).
    "sa8775p": {
        "soc_model": None,
        "htp_arch": 73,
        "source": "HTP v73: Qualcomm AI Hub device 'SA8775P ADP' attributes (hexagon:v73); soc_model: not published",
    },
}

_BANNER = re.compile(r"^\s*# LIBNATIVE: .*$")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
# Lines that come back as data or as the raised error, rather than as terminal noise.
_REPORTED = ("Unsupported nodes in QNN EP", "QNN SetupBackend failed")
_MARK = "EDGEX_QNN_RESULT "  # the compile child's result line, among whatever QNN prints
_CAPABILITY_FAILED = re.compile(r"GetCapability\(\) for QNNExecutionProvider failed with error: (.*)")


@functools.cache
def _register() -> str | None:
    """Register the plugin once per process; the reason it cannot be used, or None."""
    if not (sys.platform.startswith("linux") and platform.machine() in ("x86_64", "AMD64")):
        return f"the QNN HTP emulator runs on linux x86_64 only, not {sys.platform} {platform.machine()}"
    try:
        import onnxruntime_qnn
    except ImportError:
        return f"onnxruntime-qnn is not installed: install {EXTRA} (pip install '{EXTRA}')"
    if not any(d.ep_name == EP for d in ort.get_ep_devices()):
        try:
            ort.register_execution_provider_library(EP, onnxruntime_qnn.get_library_path())
        except Exception as exc:  # the library's own message is the reason
            return f"registering {onnxruntime_qnn.get_library_path()} with onnxruntime failed: {exc}"
    if not _devices():
        return f"{EP} registered but offers no device on this machine"
    return None


def _devices() -> list:
    return [d for d in ort.get_ep_devices() if d.ep_name == EP]


def unavailable_reason() -> str | None:
    """None when the HTP emulator can be used here, else one sentence saying why not.

    Callers (preflight, quantize, bench) decide between the real runtime and an estimate with
    this, and print the sentence, so a missing extra is said rather than silently estimated.
    """
    return _register()


def _require() -> None:
    reason = _register()
    if reason is not None:
        raise UsageError(f"the QNN HTP backend is unavailable: {reason}", fix=f"install {EXTRA} on linux x86_64")


@functools.cache
def versions() -> dict:
    """Versions that decide what a QNN artifact is: the EP wheel, the QAIRT SDK inside it, onnxruntime.

    A context binary is tied to the QAIRT version that compiled it and needs an onnxruntime at
    least as new as the wheel requires, so a manifest records all of them.
    """
    out: dict = {"onnxruntime": ort.__version__, "onnxruntime_qnn": None, "qnn_sdk": None, "qairt": None}
    try:
        import onnxruntime_qnn
    except ImportError:
        return out
    out["onnxruntime_qnn"] = importlib.metadata.version("onnxruntime-qnn")
    out["qnn_sdk"] = getattr(onnxruntime_qnn.build_and_package_info, "qnn_version", None)
    out["qairt"] = _qairt_build(Path(onnxruntime_qnn.get_qnn_htp_path()))
    needs = [r for r in importlib.metadata.requires("onnxruntime-qnn") or [] if re.match(r"onnxruntime\s*[<>=!~]", r)]
    out["onnxruntime_required"] = needs[0].removeprefix("onnxruntime").strip() if needs else None
    return out


def _qairt_build(htp_lib: Path) -> str | None:
    """The full QAIRT build (e.g. 2.51.0.260929181845), as the backend stamps it into context binaries."""
    with open(htp_lib, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        found = re.search(rb"\x00v(\d+\.\d+\.\d+\.\d{6,})\x00", m)
        return found.group(1).decode() if found else None


@contextmanager
def _captured(report: dict) -> Iterator[None]:
    """Hold the process's stdout and stderr (fds 1 and 2) while QNN starts; sort what it wrote.

    The HTP library's banner would corrupt `--json` output; the EP's per-node refusals are
    returned as data. `report["capability_error"]` gets the EP's reason when it could not start.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    files = {fd: tempfile.TemporaryFile() for fd in (1, 2)}
    for fd, f in files.items():
        os.dup2(f.fileno(), fd)
    try:
        yield
    finally:
        for fd in (1, 2):
            os.dup2(saved[fd], fd)
            os.close(saved[fd])
        keep = []
        for line in "\n".join(_drain(f) for f in files.values()).splitlines():
            plain = _ANSI.sub("", line)
            failed = _CAPABILITY_FAILED.search(plain)
            if failed:
                report["capability_error"] = failed.group(1).strip()
            if failed or not plain.strip() or _BANNER.match(plain) or any(s in plain for s in _REPORTED):
                continue
            keep.append(line)
        if keep:
            print("\n".join(keep), file=sys.stderr, flush=True)


def _drain(f) -> str:
    with f:
        f.seek(0)
        return f.read().decode(errors="replace")


def _options(soc_model: int | None, htp_arch: int | None) -> dict[str, str]:
    # Graph I/O quantize/dequantize stay on the HTP: the ctx model (CPU fallback disabled) has them
    # there too, so what is measured and assigned here is what is shipped.
    opts = {"backend_type": "htp", "offload_graph_io_quantization": "0"}
    if soc_model is not None:
        opts["soc_model"] = str(int(soc_model))
    if htp_arch is not None:
        opts["htp_arch"] = str(int(htp_arch))
    return opts


def _session(
    model: str | Path | bytes,
    soc_model: int | None,
    htp_arch: int | None,
    *,
    cpu_fallback: bool,
    threads: int,
    optimize: bool,
) -> tuple[ort.InferenceSession, list]:
    _require()
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    if not optimize:  # the graph as given, as ModelCompiler sees it
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.add_session_config_entry("session.record_ep_graph_assignment_info", "1")
    if not cpu_fallback:
        so.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    so.add_provider_for_devices(_devices(), _options(soc_model, htp_arch))
    source = model if isinstance(model, bytes) else str(model)
    report: dict = {}
    try:
        with _captured(report):
            sess = ort.InferenceSession(source, so)
    except Exception:
        if "capability_error" not in report:
            raise
    if "capability_error" in report:
        raise _no_device(soc_model, htp_arch, report["capability_error"])
    return sess, list(sess.get_provider_graph_assignment_info())


def _no_device(soc_model: int | None, htp_arch: int | None, why: str) -> UsageError:
    return UsageError(
        f"the QNN HTP backend could not start for soc_model={soc_model} htp_arch={htp_arch}: {why}",
        fix="use a soc_model/htp_arch pair from exporter.qnn_htp.SOCS",
    )


def htp_session(
    model: str | Path | bytes,
    *,
    soc_model: int | None = None,
    htp_arch: int | None = None,
    cpu_fallback: bool = True,
    threads: int = 1,
) -> ort.InferenceSession:
    """An onnxruntime session on the (emulated) HTP, refusing one where no node reached the HTP.

    `cpu_fallback=False` makes onnxruntime refuse a model the HTP cannot run whole, which is what
    a device loading a context binary requires. `threads` serves the CPU-side nodes only.
    """
    sess, assigned = _session(model, soc_model, htp_arch, cpu_fallback=cpu_fallback, threads=threads, optimize=True)
    if not any(sg.ep_name == EP for sg in assigned):
        raise UsageError(
            "no node of this model runs on the QNN HTP; it would run entirely on the CPU",
            path=None if isinstance(model, bytes) else model,
            fix="quantize the model to QDQ (uint8/uint16 activations) for the QNN target",
        )
    return sess


def node_assignment(model_path: str | Path, *, soc_model: int | None = None, htp_arch: int | None = None) -> dict:
    """Which nodes the QNN EP itself takes and which fall back to the CPU EP, as onnxruntime decided.

    This is the provider's own GetCapability answer (recorded by onnxruntime per session), not an
    operator-table estimate; the keys match `exporter.preflight.preflight` so it can replace it.
    The graph is not optimized first, as for `compile_context`, so the two agree. Counts are in
    the model's own nodes (see `_partition_sizes`).
    """
    _, assigned = _session(model_path, soc_model, htp_arch, cpu_fallback=True, threads=1, optimize=False)
    groups = [[n.name for n in sg.get_nodes()] for sg in assigned if sg.ep_name == EP]
    on_cpu = [n for sg in assigned if sg.ep_name != EP for n in sg.get_nodes()]
    graph = onnx.load(str(model_path), load_external_data=False).graph
    cpu_names = {n.name for n in on_cpu}
    kept = [i for i, n in enumerate(graph.node) if n.name not in cpu_names]
    sizes = _partition_sizes(graph, kept, groups)
    return {
        "checker": f"onnxruntime-qnn {versions()['onnxruntime_qnn']} HTP node assignment",
        "nodes": len(graph.node),
        "supported_nodes": len(kept),
        "cpu_fallback_nodes": len(graph.node) - len(kept),
        "partitions": len(groups),
        "unsupported_ops": dict(sorted(Counter(n.op_type for n in on_cpu).items())),
        "partition_map": sizes,
        "on_cpu": [n.name for n in on_cpu],
    }


def _partition_sizes(graph: onnx.GraphProto, kept: list[int], groups: list[list[str]]) -> list[int]:
    """How many of the model's own nodes each HTP partition holds.

    onnxruntime records the graph after its NHWC layout transform for the QNN EP: it renames
    converted nodes `<name>_token_<k>` and adds Transpose/Q/DQ nodes, so a partition lists more
    nodes than the model has. A model node is placed by its name, else next to a placed neighbour
    (the node feeding it or fed by it), so the sizes add up to the supported node count.
    """
    by_name: dict[str, int] = {}
    for p, names in enumerate(groups):
        for name in names:
            by_name.setdefault(re.sub(r"_token_\d+$", "", name), p)
    part = {i: by_name[graph.node[i].name] for i in kept if graph.node[i].name in by_name}
    producer = {out: i for i, n in enumerate(graph.node) for out in n.output}
    consumers: dict[str, list[int]] = {}
    for i, n in enumerate(graph.node):
        for name in n.input:
            consumers.setdefault(name, []).append(i)
    pending = [i for i in kept if i not in part]
    while pending:
        before = len(pending)
        for i in list(pending):
            node = graph.node[i]
            near = [producer.get(x) for x in node.input] + [j for o in node.output for j in consumers.get(o, [])]
            found = next((part[j] for j in near if j in part), None)
            if found is not None:
                part[i] = found
                pending.remove(i)
        if len(pending) == before:
            break
    for i in pending:  # isolated from every placed node: count it with the first partition
        part[i] = 0
    return [sum(1 for p in part.values() if p == k) for k in range(len(groups))]


def run_on_htp(
    model_path: str | Path,
    feeds: list[dict[str, np.ndarray]],
    *,
    soc_model: int | None = None,
    htp_arch: int | None = None,
    progress: Callable[[int, int, float], None] | None = None,
) -> list[list[np.ndarray]]:
    """Outputs of the model on the emulated HTP for each feed, through one session.

    Emulation is slow (0.13 s per inference for the 46-node digits CNN here), so `progress(done, total,
    seconds_of_that_inference)` is called after each run; the times measure the emulator, never
    the device.
    """
    sess = htp_session(model_path, soc_model=soc_model, htp_arch=htp_arch)
    return _run_all(sess, feeds, progress)


def _run_all(
    sess: ort.InferenceSession, feeds: list[dict[str, np.ndarray]], progress: Callable[[int, int, float], None] | None
) -> list[list[np.ndarray]]:
    outputs, times = [], []
    for i, feed in enumerate(feeds):
        start = time.perf_counter()
        outputs.append(sess.run(None, feed))
        times.append(time.perf_counter() - start)
        if progress is not None:
            progress(i + 1, len(feeds), times[-1])
    if times:
        _log.info("QNN HTP emulation: %d inferences, median %.3f s each", len(times), float(np.median(times)))
    return outputs


def compile_context(qdq_path: str | Path, ctx_path: str | Path, *, soc_model: int, htp_arch: int | None = None) -> dict:
    """Compile a QDQ model into an EPContext model (context binary embedded) for one SoC.

    CPU fallback is disabled: a device loading the ctx model has no CPU EP plan for leftovers, so
    a graph the HTP cannot take whole is refused here, naming its nodes. `htp_arch` defaults to
    the SoC's from SOCS, so the binary's compatibility record names it. Runs in a fresh child
    process so equal inputs give byte-identical files (see the module docstring).
    """
    _require()
    if htp_arch is None:
        htp_arch = next((s["htp_arch"] for s in SOCS.values() if s["soc_model"] == soc_model), None)
    qdq_path, ctx_path = Path(qdq_path), Path(ctx_path)
    ctx_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = ctx_path.with_name(f".{ctx_path.name}.{os.getpid()}.tmp")
    job = {"model": str(qdq_path), "out": str(tmp), "options": _options(soc_model, htp_arch)}
    try:
        child = subprocess.run(
            [sys.executable, "-m", "exporter.qnn_htp", json.dumps(job)], capture_output=True, text=True, check=False
        )
        marked = [line for line in child.stdout.splitlines() if line.startswith(_MARK)]
        result = json.loads(marked[-1].removeprefix(_MARK)) if marked else None
        if result is None or child.returncode != 0:
            raise InternalError(
                f"the QNN compile child exited with {child.returncode}",
                step="qnn-compile",
                file=qdq_path,
                details=child.stderr[-4000:],
            )
        if "error" in result:
            raise _refusal(qdq_path, soc_model, htp_arch, result["error"])
        os.replace(tmp, ctx_path)
    finally:
        tmp.unlink(missing_ok=True)
    data = ctx_path.read_bytes()
    return {
        "ctx_file": str(ctx_path),
        "bytes": len(data),
        "soc_model": soc_model,
        "htp_arch": htp_arch,
        "seconds": result["seconds"],
        "sha256": hashlib.sha256(data).hexdigest(),
    }


def _refusal(qdq_path: Path, soc_model: int, htp_arch: int | None, error: str) -> UsageError:
    """Name what keeps the graph off the HTP, from the provider's own assignment."""
    if "fallback to CPU EP has been explicitly disabled" not in error:
        return UsageError(f"QNN could not compile for soc_model={soc_model}: {error}", path=qdq_path)
    where = node_assignment(qdq_path, soc_model=soc_model, htp_arch=htp_arch)
    ops = ", ".join(f"{op} x{n}" for op, n in where["unsupported_ops"].items())
    names = ", ".join(where["on_cpu"][:20]) + (" ..." if len(where["on_cpu"]) > 20 else "")
    return UsageError(
        f"the QNN HTP cannot run the whole graph for soc_model={soc_model}: {where['cpu_fallback_nodes']} "
        f"of {where['nodes']} nodes would need the CPU ({ops}: {names})",
        path=qdq_path,
        fix="replace those operators, or ship the QDQ model with CPU fallback instead of a context binary",
    )


def load_context(
    ctx_path: str | Path, feeds: list[dict[str, np.ndarray]], *, soc_model: int | None = None
) -> list[list[np.ndarray]]:
    """Load an EPContext model with CPU fallback disabled and run it: proof that it loads here.

    The emulator loads a binary compiled for any SoC, so only the device itself checks the SoC.
    """
    sess = htp_session(ctx_path, soc_model=soc_model, cpu_fallback=False)
    return _run_all(sess, feeds, None)


def _compile_child(job: dict) -> dict:
    """Child side of compile_context: a fresh process, so QNN's counters start from zero."""
    _require()
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    so.add_provider_for_devices(_devices(), job["options"])
    data = Path(job["model"]).read_bytes()  # bytes, not the path: the path would be hashed into the output
    start = time.perf_counter()
    try:
        compiler = ort.ModelCompiler(
            so, data, embed_compiled_data_into_model=True, flags=ort.OrtCompileApiFlags.ERROR_IF_NO_NODES_COMPILED
        )
        report: dict = {}
        with _captured(report):
            compiler.compile_to_file(job["out"])
    except Exception as exc:  # reported to the parent, which names the nodes
        return {"error": " ".join(str(exc).split())}
    return {"seconds": round(time.perf_counter() - start, 3)}


if __name__ == "__main__":
    print(_MARK + json.dumps(_compile_child(json.loads(sys.argv[1]))), flush=True)
