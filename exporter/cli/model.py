"""Commands on one ONNX file the user gives: bench, quantize, diagnose, inspect.

The file was not built here, so each runs it only in the sandbox (`isolate.run_on_model`) with
the matching job from `exporter.sandbox_jobs`; only `bench --runner ssh://...` reads it here, to copy it.
Each takes `--shape NAME=1x3x640x640` for the file's dynamic dimensions (parsed here, resolved against
the file in the child, printed with every result and listed as `shapes` in --json).
"""

from __future__ import annotations

from pathlib import Path

import click

from exporter.cli.common import JSON_OPT, JUNIT_OPT, command, emit, emit_judged, get_profile, profile_payload
from exporter.isolate import run_on_model
from exporter.sandbox_jobs import bench_job, diagnose_job, inspect_job, quantize_job
from exporter.shapes import SHAPE_FLAG, SHAPE_HELP, VALUE_FLAG, VALUE_HELP, parse_shape_options, parse_value_options
from exporter.shapes import describe as describe_shapes

SHAPE_OPT = click.option(SHAPE_FLAG, "shape_options", multiple=True, metavar="NAME=DIMS", help=SHAPE_HELP)
VALUE_OPT = click.option(VALUE_FLAG, "value_options", multiple=True, metavar="NAME=NUMBER", help=VALUE_HELP)


@click.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--profile", "profile_id", required=True, help="Profile whose threads and budgets apply.")
@click.option("--runs", type=click.IntRange(1), default=100, show_default=True, help="Minimum timed runs.")
@click.option("--seconds", type=click.FloatRange(0), default=1.0, show_default=True, help="Minimum timed seconds.")
@click.option("--mlperf", is_flag=True, help="MLPerf minimums: at least 1024 queries and 60 s.")
@SHAPE_OPT
@VALUE_OPT
@JUNIT_OPT
@click.option("--runner", default="local", show_default=True, help="Where to run: local, or ssh://user@host[:port].")
@click.option("--remote-python", default="python3", show_default=True, help="The board's Python (ssh runner).")
@click.option("--ssh-config", type=click.Path(path_type=Path), help="ssh client config file (ssh -F).")
@click.option("--identity", type=click.Path(path_type=Path), help="Private key for the board (ssh -i).")
@click.option("--known-hosts", type=click.Path(path_type=Path), help="known_hosts file the board's key is pinned in.")
@click.option(
    "--accept-new-host-key", is_flag=True, help="Trust a board's key on first contact (ssh accept-new); recorded."
)
@click.option(
    "--power-sensor",
    help="Measure power with this sensor (rapl, hwmon, jetson-ina3221, android-battery) or `none`; "
    "default: the profile's power_sensor, if the machine has it.",
)
@JSON_OPT
@click.pass_context
@command
def bench(
    ctx: click.Context,
    model: Path,
    profile_id: str,
    runs: int,
    seconds: float,
    mlperf: bool,
    shape_options: tuple[str, ...],
    value_options: tuple[str, ...],
    junit: Path | None,
    runner: str,
    remote_python: str,
    ssh_config: Path | None,
    identity: Path | None,
    known_hosts: Path | None,
    accept_new_host_key: bool,
    power_sensor: str | None,
    as_json: bool,
) -> int:
    """Benchmark any ONNX MODEL with a profile's threads, against its budgets (exit 1 on a miss).

    \b
    Example: edgex bench build/digits/raspberry-pi-5-cpu/int8.onnx --profile raspberry-pi-5-cpu
             edgex bench model.onnx --profile jetson-orin-nano-tensorrt --runner ssh://me@orin.local
    """
    from exporter.bench.remote import RunnerOptions
    from exporter.recipe import BenchSection, run_cap

    shapes = parse_shape_options(shape_options)
    values = parse_value_options(value_options)
    prof = get_profile(ctx, profile_id)
    cap = max(10.0, run_cap(runs, seconds))
    settings = BenchSection(min_runs=runs, min_seconds=seconds, max_seconds=cap, mlperf=mlperf).effective()
    if runner == "local":  # the model runs here: in the sandboxed child
        result = run_on_model(
            bench_job,
            model,
            {
                **profile_payload(ctx, prof),
                "settings": settings.model_dump(),
                "power_sensor": power_sensor,
                "shapes": shapes,
                "values": values,
            },
            extra_seconds=2 * settings.max_seconds,
        )
    else:  # the model runs on the board; here it is only checked and copied
        from exporter.bench_file import bench_file

        options = RunnerOptions(remote_python, ssh_config, identity, known_hosts, accept_new_host_key)
        result = bench_file(model, prof, settings, runner, options, power_sensor, shapes, values)
    if junit is not None:
        from exporter.junit import write_junit

        write_junit(junit, [(f"{prof.id}/{model.name}", result["verdicts"])])

    from exporter.bench.affinity import describe

    def text(r: dict) -> str:
        lat = r["latency_ms"]
        where = "host measurement" if r["runner"]["kind"] == "local" else f"measured on {r['runner']['target']}"
        used = describe_shapes(r["shapes"])
        lines = [
            f"{r['model']} on {r['profile']} at {used} ({where}, {r['threads']['host']} thread(s)): "
            f"p50 {lat['p50']:.3f} ms, p90 {lat['p90']:.3f} ms, p99 {lat['p99']:.3f} ms over {lat['runs']} runs; "
            f"memory {r['memory']['session_mb']:.1f} MB; size {r['size_mb']:.3f} MB; {describe(r['threads']['affinity'])}"
        ]
        m = r["measured_power"]
        if m.get("available"):
            lines.append(
                f"  measured power ({m['sensor']}, {m['method']}): {m['busy_w']:.3g} W busy, {m['idle_w']:.3g} W idle, "
                f"{m['energy_mj']:.3g} mJ per inference"
            )
        for v in r["verdicts"]:
            ok = {True: "pass", False: "FAIL", None: "not evaluated"}[v["ok"]]
            lines.append(
                f"  {v['budget']:<18} {ok:<13} value {v['value']} limit {v['limit']} ({v['basis']}; judged on {used})"
            )
        return "\n".join(lines)

    return emit_judged(result, as_json, text)


@click.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--profile", "profile_id", required=True, help="Profile whose target preset and accuracy budget apply.")
@click.option(
    "--calibration",
    type=click.Path(path_type=Path),
    required=True,
    help="An .npz whose arrays are named after the model's inputs, first axis = samples.",
)
@click.option("--out", type=click.Path(path_type=Path), required=True, help="The quantized .onnx file to write.")
@click.option("--precision", type=click.Choice(["int8", "int4", "fp16"]), default="int8", show_default=True)
@click.option(
    "--method",
    type=click.Choice(["minmax", "entropy", "percentile", "distribution"]),
    default="minmax",
    show_default=True,
    help="First calibration method (the search may try percentile too).",
)
@click.option("--samples", type=click.IntRange(1), default=128, show_default=True, help="Calibration samples used.")
@click.option(
    "--evaluation", type=click.Path(path_type=Path), help="An .npz to judge fidelity on (default: calibration)."
)
@click.option(
    "--max-drop", type=click.FloatRange(0), help="Largest allowed 1 - cosine (default: the profile's budget)."
)
@SHAPE_OPT
@JSON_OPT
@click.pass_context
@command
def quantize(
    ctx: click.Context,
    model: Path,
    profile_id: str,
    calibration: Path,
    out: Path,
    precision: str,
    method: str,
    samples: int,
    evaluation: Path | None,
    max_drop: float | None,
    shape_options: tuple[str, ...],
    as_json: bool,
) -> int:
    """Quantize an existing ONNX MODEL for a profile's target (exit 1 when the fidelity budget is missed).

    \b
    Example: edgex quantize model.onnx --profile raspberry-pi-5-cpu --calibration calib.npz --out model-int8.onnx
    """
    shapes = parse_shape_options(shape_options)
    prof = get_profile(ctx, profile_id)
    args = {
        "calibration": str(calibration),
        "out": str(out),
        "precision": precision,
        "method": method,
        "samples": samples,
        "evaluation": None if evaluation is None else str(evaluation),
        "max_drop": max_drop,
    }
    result = run_on_model(quantize_job, model, {**profile_payload(ctx, prof), "args": args, "shapes": shapes})

    def text(r: dict) -> str:
        lines = [
            f"{r['out']}: {r['precision']} for {r['profile']} ({r['target']}) at {describe_shapes(r['shapes'])}, "
            f"cosine {r['cosine']:.4f} vs FP32 "
            f"on {r['evaluated_on']} (budget: drop <= {r['budget']:g}), size {100 * r['size_ratio']:.0f}% of FP32"
        ]
        search = r.get("search") or {}
        for k in search.get("kept_out_of_int8", []):
            if k["tensor"] == "*":
                lines.append("  every activation 16-bit, weights 8-bit (A16W8)")
            else:
                lines.append(f"  kept as {k['kept_as']}: {k['tensor']} (SQNR {k['sqnr_db']} dB)")
        guard = r.get("speed_guard") or {}
        if guard:
            lines.append(f"  speed guard: INT8/FP32 time {guard['ratio']} ({guard['verdict']})")
        lines += [f"  note: {n}" for n in r.get("notes", [])]
        return "\n".join(lines)

    return emit_judged(result, as_json, text)


@click.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--profile", "profile_id", required=True, help="Profile whose target the model is meant for.")
@click.option("--fp32", type=click.Path(path_type=Path), help="The FP32 source, for per-op time side by side.")
@SHAPE_OPT
@JSON_OPT
@click.pass_context
@command
def diagnose(
    ctx: click.Context, model: Path, profile_id: str, fp32: Path | None, shape_options: tuple[str, ...], as_json: bool
) -> int:
    """Explain a slow or inaccurate quantized MODEL: unfused Q/DQ, float ops, requantization, per-op time.

    \b
    Example: edgex diagnose build/digits/raspberry-pi-5-cpu/int8.onnx --profile raspberry-pi-5-cpu \\
             --fp32 build/digits/raspberry-pi-5-cpu/baseline.onnx
    """
    from exporter.onnx_io import check_onnx_file

    shapes = parse_shape_options(shape_options)
    prof = get_profile(ctx, profile_id)
    if fp32 is not None:
        check_onnx_file(fp32, field="--fp32")
    report = run_on_model(diagnose_job, model, {"fp32": None if fp32 is None else str(fp32), "shapes": shapes})
    report["profile"] = prof.id
    report["target"] = prof.target

    def text(r: dict) -> str:
        top = ", ".join(f"{k} {v:.2f} ms" for k, v in list(r["time_ms_by_op_type"].items())[:6])
        lines = [
            f"{r['model']} for {r['profile']} at {describe_shapes(r['shapes'])} (host CPU provider, 1 thread): {top}"
        ]
        lines += [f"  - {f}" for f in r["findings"]] or ["  - nothing unusual found"]
        return "\n".join(lines)

    emit(report, as_json, text)
    return 0


@click.command()
@click.argument("model", type=click.Path(path_type=Path))
@SHAPE_OPT
@JSON_OPT
@command
def inspect(model: Path, shape_options: tuple[str, ...], as_json: bool) -> int:
    """Inputs/outputs, opset, op histogram, parameters, MACs and size of an ONNX MODEL."""
    info = run_on_model(inspect_job, model, {"shapes": parse_shape_options(shape_options)})

    def text(d: dict) -> str:
        lines = [
            f"{d['path']}: {d['bytes'] / 1e6:.3f} MB, opset {d['opset']}, {d['nodes']} nodes, "
            f"{d['parameters']:,} parameters, {d['macs']:,} MACs at {describe_shapes(d['shapes'])}"
        ]
        if d["parameters_in_constant_nodes"]:
            lines.append(f"  {d['parameters_in_constant_nodes']:,} of the parameters are held in Constant nodes")
        if d.get("macs_uncounted_nodes"):
            n = len(d["macs_uncounted_nodes"])
            lines.append(f"  MACs of {n} node(s) not counted: sizes unknown after shape inference")
        if d.get("macs_not_counted_in_subgraphs_of"):
            names = ", ".join(d["macs_not_counted_in_subgraphs_of"][:5])
            lines.append(f"  MACs inside the subgraphs of {names} not counted (the branch is chosen at run time)")
        lines += [f"  input  {i['name']}: {i['dtype']} {i['shape']}" for i in d["inputs"]]
        lines += [f"  output {o['name']}: {o['dtype']} {o['shape']}" for o in d["outputs"]]
        lines.append("  ops: " + ", ".join(f"{k}×{v}" for k, v in d["op_histogram"].items()))
        return "\n".join(lines)

    emit(info, as_json, text)
    return 0


COMMANDS = [bench, quantize, diagnose, inspect]
