"""`edgex bench`: benchmark any ONNX file against a profile's budgets, here or on a board (`--runner`).

Everything is measured and judged at the input shapes resolved from the file and `--shape`
(`exporter.shapes`): the timing query, the memory probe, and the device estimate's MACs and bytes
(counted on a copy of the file whose dynamic sizes are fixed to those shapes).
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path

from exporter.bench.judging import judge_timed
from exporter.bench.latency import summarize
from exporter.bench.power import SENSORS
from exporter.bench.remote import RUNNERS, BenchJob, RunnerOptions, parse_runner
from exporter.bench.verdicts import HOST, overall
from exporter.errors import UsageError
from exporter.onnx_io import check_onnx_file
from exporter.profiles import DeviceProfile
from exporter.recipe import BenchSection
from exporter.shapes import declared_inputs, fixed_copy, resolve_shapes
from exporter.targets import get_target


@contextlib.contextmanager
def judged_file(path: Path, model, shapes: dict[str, list[int]]) -> Iterator[Path]:
    """The file the estimate reads: PATH itself when its inputs are static, else a graph-only copy
    (weights' sizes kept, their bytes not) with the dynamic sizes fixed to SHAPES, in a scratch folder."""
    import onnx

    if not any(i.dynamic_axes() for i in declared_inputs(model)):
        yield path
        return
    fixed = fixed_copy(model, shapes)
    from exporter.onnx_io import all_tensors

    for tensor in all_tensors(fixed):  # dims are all the estimate reads; external bytes stay where they are
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            tensor.data_location = onnx.TensorProto.DEFAULT
            del tensor.external_data[:]
    with tempfile.TemporaryDirectory(prefix="edgex-bench-shapes-") as tmp:
        copy = Path(tmp) / path.name
        onnx.save_model(fixed, str(copy))
        yield copy


def _precision(model) -> str:
    """int8 when the graph computes with quantized tensors, else fp32 (for the estimate's constants)."""
    ops = {n.op_type for n in model.graph.node}
    quantized = {"QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul", "MatMulInteger", "ConvInteger"}
    return "int8" if ops & quantized else "fp32"


def _power_request(profile: DeviceProfile, sensor: str | None, rate: float | None) -> dict | None:
    """What the board should measure: the profile's sensor (if absent there, said in the result) or the
    one named by --power-sensor (then it must be there)."""
    spec = profile.power_sensor
    if sensor == "none" or (sensor is None and spec is None):
        return None
    name = sensor or spec.sensor
    same = spec is not None and spec.sensor == name
    return {
        "sensor": name,
        "channels": list(spec.channels) if same else [],
        "rate_hz": spec.rate_hz if spec else 100.0,
        "idle_seconds": spec.idle_seconds if spec else 1.0,
        "required": sensor is not None,
        "rate_hz_budget": rate,
    }


def bench_file(
    path: Path,
    profile: DeviceProfile,
    settings: BenchSection | None = None,
    runner: str = "local",
    options: RunnerOptions | None = None,
    power_sensor: str | None = None,
    shapes: dict[str, list[int]] | None = None,
    values: dict[str, int | float] | None = None,
) -> dict:
    """Benchmark one ONNX file on this machine or on a board (`runner`), against the profile's budgets.

    shapes: sizes from `--shape`; every dynamic dimension of the file needs one (exit 2 otherwise).
    values: numbers from `--value`, fed to those inputs instead of seeded data (a sample rate)."""
    settings = settings or BenchSection()
    model = check_onnx_file(path)
    used = resolve_shapes(model, shapes, path)
    values = dict(values or {})
    unknown = sorted(set(values) - set(used))
    if unknown:
        raise UsageError(
            f"the model has no input named '{unknown[0]}'",
            path=path,
            field="--value",
            fix=f"its inputs are: {', '.join(used)}",
        )
    scheme, parts = parse_runner(runner)
    rate = profile.budgets.average_power.rate_hz if profile.budgets.average_power else None
    if power_sensor is not None and power_sensor != "none" and power_sensor not in SENSORS:
        raise UsageError(
            f"unknown power sensor '{power_sensor}'", field="--power-sensor", fix=f"use one of {', '.join(SENSORS)}"
        )
    if scheme == "local":
        from exporter.measure import profile_meter

        meter, unmeasured = profile_meter(profile, power_sensor)
        power = (meter, unmeasured, rate)
        where, latency_basis = "the build machine", HOST
    else:
        power = _power_request(profile, power_sensor, rate)
        where = parts["host"]
        latency_basis = f"device measurement (onnxruntime CPU on {runner} over ssh)"
    raw = RUNNERS[scheme](
        BenchJob(path, profile.threads, settings, power, profile.cpu_affinity, used, values),
        parts,
        options or RunnerOptions(),
    )
    if raw.power is None:
        raw_power = {"available": False, "reason": "no power sensor named (profile `power_sensor:` or --power-sensor)"}
    else:
        raw_power = raw.power
    stats = summarize(raw.samples_ms, raw.seconds)
    size_mb = path.stat().st_size / 1e6
    pct = profile.budgets.latency.percentile
    on_device = stats.p50 if scheme != "local" else None
    with judged_file(path, model, used) as judged_path:
        judged = judge_timed(
            judged_path,
            profile,
            get_target(profile.target),
            _precision(model),
            stats,
            raw.threads,
            peak_memory_mb=raw.memory.get("session_mb"),
            size_mb=size_mb,
            accuracy_drop=None,
            max_accuracy_drop=profile.budgets.max_accuracy_drop,
            measured=raw_power,
            device_latency_ms=on_device,
            latency_basis=latency_basis,
            measured_on=where,
        )
    interval, verdicts = judged.interval, judged.verdicts
    return {
        "model": str(path),
        "profile": profile.id,
        "runner": raw.runner,
        "threads": {"profile": profile.threads, "host": raw.threads, "affinity": raw.affinity},
        "latency_ms": {
            **stats.as_dict(),
            "interval95": [round(interval[0], 4), round(interval[1], 4)],
            "budget_percentile": pct,
            "basis": latency_basis,
        },
        "device_estimate": judged.device,
        "measured_power": raw_power,
        "power_judged_on": judged.power_judged_on,
        "memory": raw.memory,
        "size_mb": round(size_mb, 6),
        "inputs": "synthetic (seeded normal / zeros), in `shapes`",
        "shapes": used,
        "verdicts": [v.as_dict() for v in verdicts],
        "ok": overall(verdicts),
    }
