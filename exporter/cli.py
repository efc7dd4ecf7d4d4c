"""`edgex` command line. Exit codes: 0 ok, 1 budget or quality gate missed, 2 bad input, 3 internal error.

stdout carries results (JSON with --json, errors too); progress and logs go to stderr.
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

from exporter import __version__, log
from exporter.errors import EXIT_GATE, EXIT_INTERNAL, EdgexError, UsageError

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


def _plan_opt(help_text: str, required: bool = False) -> Callable:
    """`--plan` means a plan.json wherever it appears (build, run, merge); only its role differs."""
    return click.option("--plan", "plan_path", type=click.Path(path_type=Path), required=required, help=help_text)


def _out_file_opt(help_text: str) -> Callable:
    """The one JSON file a matrix command writes (plan, merge): required, as `-o` or `--out`."""
    return click.option("-o", "--out", type=click.Path(path_type=Path), required=True, help=help_text)


def _emit(data: Any, as_json: bool, text: Callable[[Any], str]) -> None:
    if as_json:
        click.echo(json.dumps(data, indent=2, sort_keys=True))
    else:
        click.echo(text(data))


def _emit_judged(result: dict, as_json: bool, text: Callable[[Any], str]) -> int:
    """Emit, then exit 1 when a budget or gate was missed: the result is printed either way."""
    _emit(result, as_json, text)
    return 0 if result["ok"] else EXIT_GATE


def _emit_build(result: dict, manifest: dict, junit: Path | None, as_json: bool, text: Callable[[Any], str]) -> int:
    """A whole build and one matrix cell end alike, so a CI job reads the same JUnit file from either."""
    if junit is not None:
        from exporter.junit import from_manifest, write_junit

        write_junit(junit, from_manifest(manifest))
    return _emit_judged(result, as_json, text)


def _profile(ctx: click.Context, profile_id: str) -> DeviceProfile:
    """The profile given by id, looked up where `edgex --profiles-dir` says too."""
    from exporter.profiles import get_profiles

    return get_profiles([profile_id], ctx.obj["profiles_dirs"])[0]


def _profile_payload(ctx: click.Context, prof: DeviceProfile) -> dict:
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
            _fail(exc.one_line(), exc.exit_code, as_json, type(exc).__name__)
        except KeyboardInterrupt:
            _fail("interrupted", 130, as_json, "KeyboardInterrupt")
        except Exception as exc:  # an edgex bug, not the user's input
            if log._level >= 2:
                traceback.print_exc()
            first = (str(exc).strip().splitlines() or [""])[0][:300]
            _fail(
                f"internal error: {type(exc).__name__}: {first} (rerun with -v for the traceback)",
                EXIT_INTERNAL,
                as_json,
                "InternalError",
            )
        sys.exit(code or 0)

    return wrapper


def _fail(message: str, code: int, as_json: bool, kind: str) -> None:
    if as_json:
        click.echo(json.dumps({"error": {"type": kind, "message": message, "exit_code": code}}, sort_keys=True))
    click.echo(f"edgex: error: {message}", err=True)
    sys.exit(code)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="edgex")
@click.option("-v", "--verbose", count=True, help="More logs on stderr (-v: tracebacks on internal errors).")
@click.option("-q", "--quiet", is_flag=True, help="Only results and errors.")
@click.option(
    "--profiles-dir",
    multiple=True,
    type=click.Path(path_type=Path),
    help="Extra folder of device profile YAMLs (also EDGEX_PROFILES, os.pathsep-separated).",
)
@click.pass_context
def cli(ctx: click.Context, verbose: int, quiet: bool, profiles_dir: tuple[Path, ...]) -> None:
    """edgex: turn a PyTorch or ONNX model into per-device INT8 artifacts, benchmarked against budgets.

    \b
    Examples:
      edgex build examples/digits.yaml
      edgex build examples/digits.yaml --profile raspberry-pi-5-cpu --out build/pi --json
      edgex profiles list
      edgex bench model.onnx --profile sa8295p-qnn
      edgex inspect build/digits/sa8295p-qnn/int8.onnx
      edgex verify build/digits
    """
    log.set_verbosity(0 if quiet else 1 + verbose)
    ctx.obj = {"profiles_dirs": profiles_dir}


def _sandboxed(task: str, model: Path, payload: dict, extra_seconds: float = 0.0) -> Any:
    """A model given on the command line: checked here, then run only in the limited child (exporter.isolate)."""
    from exporter.isolate import limits, run_isolated
    from exporter.onnx_io import check_onnx_file

    check_onnx_file(model)
    return run_isolated(task, {"path": str(model), **payload}, model, seconds=limits().seconds + extra_seconds)


def _summary(manifest: dict) -> str:
    lines = []
    for prof in manifest["profiles"]:
        deliv = next(v for v in prof["variants"] if v["name"] == prof["deliverable"])
        base = prof["variants"][0]
        lat = next(v for v in prof["verdicts"] if v["budget"].startswith("latency"))
        pct = lat["budget"].split("_")[1]
        status = (
            "within budget"
            if prof["ok"]
            else "BUDGET MISSED: " + ", ".join(v["budget"] for v in prof["verdicts"] if v["ok"] is False)
        )
        speed = base["latency_ms"]["p50"] / deliv["latency_ms"]["p50"] if deliv["latency_ms"]["p50"] else 0
        lines.append(
            f"{prof['id']:<28} {prof['deliverable']:<8} {pct} {lat['value']:.2f} ms (host, {prof['threads']['host']}t; "
            f"budget {lat['limit']:g}), {deliv['artifact']['bytes'] / 1e6:.2f} MB "
            f"({deliv['artifact']['bytes'] / base['artifact']['bytes']:.0%} of FP32), {speed:.2f}x vs FP32, "
            f"{deliv['metric']['name']} {deliv['metric']['value']:.4f} (FP32 {base['metric']['value']:.4f}) — {status}"
        )
        est = deliv.get("device_estimate") or {}
        if est.get("available"):
            lines.append(
                f"{'':<28} device estimate (not measured): {est['device_latency_ms']:.3g} ms, "
                f"{est['energy_mj']:.3g} mJ per inference"
                + (f", {est['average_power_w']:.3g} W at {est['rate_hz']:g} Hz" if "average_power_w" in est else "")
            )
        if prof["not_evaluated"]:
            lines.append(f"{'':<28} not evaluated: {', '.join(prof['not_evaluated'])}")
    return "\n".join(lines)


@cli.command()
@click.argument("recipe", type=click.Path(path_type=Path), required=False)
@click.option(
    "--profile", "profiles", multiple=True, help="Build for this profile id (repeatable; replaces the recipe's list)."
)
@click.option("--out", type=click.Path(path_type=Path), help="Output folder (default: the recipe's `output`).")
@JUNIT_OPT
@_plan_opt("Build one cell of this plan (with --cell).")
@click.option("--cell", "cell_id", help="The id of the cell to build from --plan (default --out: out/<ID>).")
@click.option(
    "--replay",
    type=click.Path(path_type=Path),
    help="An earlier build's manifest.json: repeat its timing-based decisions (speed guard, deliverable).",
)
@click.option("--mlperf", is_flag=True, help="MLPerf minimums for every variant: at least 1024 queries and 60 s.")
@TRUST_OPT
@JSON_OPT
@click.pass_context
@command
def build(
    ctx: click.Context,
    recipe: Path | None,
    profiles: tuple[str, ...],
    out: Path | None,
    junit: Path | None,
    plan_path: Path | None,
    cell_id: str | None,
    replay: Path | None,
    mlperf: bool,
    trust_code: bool,
    as_json: bool,
) -> int:
    """Build RECIPE for each profile: export, quantize, benchmark, judge budgets.

    \b
    Writes OUT/<profile>/{baseline,int8}.onnx, OUT/manifest.json, OUT/report.md and a plot.
    Exit 1 when a profile misses a budget (artifacts are still written).
    With --plan P --cell ID: one cell of a release matrix, from the cache when its key is there.
    """
    if plan_path is not None or cell_id is not None:
        return _build_cell(recipe, profiles, out, junit, plan_path, cell_id, as_json)
    if recipe is None:
        raise UsageError(
            "Missing argument 'RECIPE'",
            field="RECIPE",
            fix="give a RECIPE, or --plan plan.json --cell ID (see `edgex build --help`)",
        )
    from exporter.pipeline import build as run_build
    from exporter.sources import trusting_code

    with trusting_code(trust_code):
        manifest = run_build(recipe, list(profiles) or None, out, ctx.obj["profiles_dirs"], replay, mlperf)
    return _emit_build(manifest, manifest, junit, as_json, _summary)


@cli.command()
@click.argument("recipe", type=click.Path(path_type=Path))
@TRUST_OPT
@JSON_OPT
@click.pass_context
@command
def validate(ctx: click.Context, recipe: Path, trust_code: bool, as_json: bool) -> int:
    """Check RECIPE, its profiles, model source and data without building."""
    from exporter.sources import trusting_code
    from exporter.validate import validate_recipe

    with trusting_code(trust_code):
        result = validate_recipe(recipe, ctx.obj["profiles_dirs"])
    _emit(
        result,
        as_json,
        lambda r: (
            f"{recipe}: ok ({r['profiles']} profile(s), {r['calibration_samples']} "
            f"calibration and {r['evaluation_samples']} evaluation samples)"
        ),
    )
    return 0


@cli.group()
def profiles() -> None:
    """Device profiles: list, show, validate."""


@profiles.command("list")
@JSON_OPT
@click.pass_context
@command
def profiles_list(ctx: click.Context, as_json: bool) -> int:
    """List every known profile (shipped and from --profiles-dir / EDGEX_PROFILES)."""
    from exporter.profiles import all_profiles

    found = all_profiles(ctx.obj["profiles_dirs"])
    data = [
        {
            "id": p.id,
            "name": p.name,
            "class": p.device_class,
            "target": p.target,
            "threads": p.threads,
            "budgets": p.budgets.model_dump(mode="json"),
        }
        for p in found.values()
    ]

    def text(rows: list[dict]) -> str:
        out = [f"{'id':<30} {'class':<19} {'target':<9} latency budget"]
        for r in rows:
            lat = r["budgets"]["latency"]
            out.append(
                f"{r['id']:<30} {r['class']:<19} {r['target']:<9} p{lat['percentile']:g} <= {lat['max_ms']:g} ms"
            )
        return "\n".join(out)

    _emit(data, as_json, text)
    return 0


@profiles.command("show")
@click.argument("profile_id")
@JSON_OPT
@click.pass_context
@command
def profiles_show(ctx: click.Context, profile_id: str, as_json: bool) -> int:
    """Show one profile with its facts and sources."""
    prof = _profile(ctx, profile_id)
    _emit(prof.model_dump(mode="json", by_alias=True), as_json, lambda d: json.dumps(d, indent=2, sort_keys=False))
    return 0


@profiles.command("validate")
@click.argument("path", type=click.Path(path_type=Path))
@JSON_OPT
@command
def profiles_validate(path: Path, as_json: bool) -> int:
    """Validate a profile YAML file, or every *.yaml in a folder."""
    from exporter.profiles import load_profile_file

    files = sorted(path.glob("*.yaml")) if path.is_dir() else [path]
    if not files:
        raise UsageError("no *.yaml profiles in this folder", path=path, fix="give a profile file or folder")
    ids = [load_profile_file(f).id for f in files]
    _emit({"valid": ids}, as_json, lambda d: "\n".join(f"{i}: ok" for i in d["valid"]))
    return 0


@cli.group()
def targets() -> None:
    """Runtime targets: list, show."""


@targets.command("list")
@JSON_OPT
@command
def targets_list(as_json: bool) -> int:
    """List the runtime targets and what each produces."""
    from exporter.targets import all_targets

    data = [
        {
            "id": t.id,
            "execution_provider": t.execution_provider,
            "package_format": t.package_format,
            "static_shapes": t.static_shapes,
            "activation_type": t.quantization.activation_type,
            "weight_type": t.quantization.weight_type,
        }
        for t in all_targets().values()
    ]
    _emit(
        data,
        as_json,
        lambda rows: "\n".join(
            f"{r['id']:<9} {r['execution_provider']:<27} .{r['package_format']:<5} "
            f"{'static' if r['static_shapes'] else 'dynamic'} shapes, INT8 {r['activation_type']}/{r['weight_type']}"
            for r in rows
        ),
    )
    return 0


@targets.command("show")
@click.argument("target_id")
@JSON_OPT
@command
def targets_show(target_id: str, as_json: bool) -> int:
    """Show one target's declaration (the YAML file carries the reason for each choice)."""
    from exporter.targets import get_target

    _emit(get_target(target_id, where="targets").model_dump(mode="json"), as_json, lambda d: json.dumps(d, indent=2))
    return 0


@cli.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--profile", "profile_id", required=True, help="Profile whose threads and budgets apply.")
@click.option("--runs", type=click.IntRange(1), default=100, show_default=True, help="Minimum timed runs.")
@click.option("--seconds", type=click.FloatRange(0), default=1.0, show_default=True, help="Minimum timed seconds.")
@click.option("--mlperf", is_flag=True, help="MLPerf minimums: at least 1024 queries and 60 s.")
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

    prof = _profile(ctx, profile_id)
    cap = max(10.0, run_cap(runs, seconds))
    settings = BenchSection(min_runs=runs, min_seconds=seconds, max_seconds=cap, mlperf=mlperf).effective()
    if runner == "local":  # the model runs here: in the sandboxed child
        result = _sandboxed(
            "bench",
            model,
            {**_profile_payload(ctx, prof), "settings": settings.model_dump(), "power_sensor": power_sensor},
            extra_seconds=2 * settings.max_seconds,
        )
    else:  # the model runs on the board; here it is only checked and copied
        from exporter.bench_file import bench_file

        options = RunnerOptions(remote_python, ssh_config, identity, known_hosts, accept_new_host_key)
        result = bench_file(model, prof, settings, runner, options, power_sensor)
    if junit is not None:
        from exporter.junit import write_junit

        write_junit(junit, [(f"{prof.id}/{model.name}", result["verdicts"])])

    from exporter.bench.affinity import describe

    def text(r: dict) -> str:
        lat = r["latency_ms"]
        where = "host measurement" if r["runner"]["kind"] == "local" else f"measured on {r['runner']['target']}"
        lines = [
            f"{r['model']} on {r['profile']} ({where}, {r['threads']['host']} thread(s)): "
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
            lines.append(f"  {v['budget']:<18} {ok:<13} value {v['value']} limit {v['limit']} ({v['basis']})")
        return "\n".join(lines)

    return _emit_judged(result, as_json, text)


@cli.command()
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
    as_json: bool,
) -> int:
    """Quantize an existing ONNX MODEL for a profile's target (exit 1 when the fidelity budget is missed).

    \b
    Example: edgex quantize model.onnx --profile raspberry-pi-5-cpu --calibration calib.npz --out model-int8.onnx
    """
    prof = _profile(ctx, profile_id)
    args = {
        "calibration": str(calibration),
        "out": str(out),
        "precision": precision,
        "method": method,
        "samples": samples,
        "evaluation": None if evaluation is None else str(evaluation),
        "max_drop": max_drop,
    }
    result = _sandboxed("quantize", model, {**_profile_payload(ctx, prof), "args": args})

    def text(r: dict) -> str:
        lines = [
            f"{r['out']}: {r['precision']} for {r['profile']} ({r['target']}), cosine {r['cosine']:.4f} vs FP32 "
            f"on {r['evaluated_on']} (budget: drop <= {r['budget']:g}), size {100 * r['size_ratio']:.0f}% of FP32"
        ]
        search = r.get("search") or {}
        for k in search.get("kept_out_of_int8", []):
            lines.append(f"  kept as {k['kept_as']}: {k['tensor']} (SQNR {k['sqnr_db']} dB)")
        guard = r.get("speed_guard") or {}
        if guard:
            lines.append(f"  speed guard: INT8/FP32 time {guard['ratio']} ({guard['verdict']})")
        lines += [f"  note: {n}" for n in r.get("notes", [])]
        return "\n".join(lines)

    return _emit_judged(result, as_json, text)


@cli.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--profile", "profile_id", required=True, help="Profile whose target the model is meant for.")
@click.option("--fp32", type=click.Path(path_type=Path), help="The FP32 source, for per-op time side by side.")
@JSON_OPT
@click.pass_context
@command
def diagnose(ctx: click.Context, model: Path, profile_id: str, fp32: Path | None, as_json: bool) -> int:
    """Explain a slow or inaccurate quantized MODEL: unfused Q/DQ, float ops, requantization, per-op time.

    \b
    Example: edgex diagnose build/digits/raspberry-pi-5-cpu/int8.onnx --profile raspberry-pi-5-cpu \\
             --fp32 build/digits/raspberry-pi-5-cpu/baseline.onnx
    """
    from exporter.onnx_io import check_onnx_file

    prof = _profile(ctx, profile_id)
    if fp32 is not None:
        check_onnx_file(fp32, field="--fp32")
    report = _sandboxed("diagnose", model, {"fp32": None if fp32 is None else str(fp32)})
    report["profile"] = prof.id
    report["target"] = prof.target

    def text(r: dict) -> str:
        top = ", ".join(f"{k} {v:.2f} ms" for k, v in list(r["time_ms_by_op_type"].items())[:6])
        lines = [f"{r['model']} for {r['profile']} (host CPU provider, 1 thread): {top}"]
        lines += [f"  - {f}" for f in r["findings"]] or ["  - nothing unusual found"]
        return "\n".join(lines)

    _emit(report, as_json, text)
    return 0


@cli.command()
@click.argument("old", type=click.Path(path_type=Path))
@click.argument("new", type=click.Path(path_type=Path))
@click.option(
    "--rounds",
    type=click.IntRange(1, 50),
    default=5,
    show_default=True,
    help="Interleaved A/A and A/B timing rounds that calibrate the latency threshold.",
)
@click.option(
    "--floor",
    type=click.FloatRange(0),
    default=0.10,
    show_default=True,
    help="Smallest latency slow-down (fraction) ever flagged.",
)
@JSON_OPT
@command
def compare(old: Path, new: Path, rounds: int, floor: float, as_json: bool) -> int:
    """Compare two releases (folders or manifest.json); exit 1 on a regression beyond noise.

    \b
    Example: edgex compare release-1.2/ build/digits/ --json
    """
    from exporter.compare import compare as run_compare

    result = run_compare(old, new, rounds, floor)

    def text(r: dict) -> str:
        lines = []
        for f in r["compared"]:
            for c in f["checks"]:
                flag = "REGRESSION" if c["regression"] else "ok"
                lines.append(
                    f"{f['profile']:<28} {f['variant']:<8} {c['check']:<22} {c['change']:+.2%} "
                    f"(threshold {c['threshold']:.2%}) {flag}"
                )
        lines += [f"missing in new: {p}" for p in r["missing_in_new"]]
        return "\n".join(lines) or "nothing in common to compare"

    _emit(result, as_json, text)
    return EXIT_GATE if result["regression"] else 0


@cli.command()
@click.argument("folder", type=click.Path(path_type=Path))
@click.option(
    "--public-key", type=click.Path(path_type=Path), help="Also check the manifest's signature with this PEM key."
)
@click.option("--signature", type=click.Path(path_type=Path), help="The signature file (default: FOLDER/manifest.sig).")
@JSON_OPT
@command
def verify(folder: Path, public_key: Path | None, signature: Path | None, as_json: bool) -> int:
    """Re-hash every file of a release (a folder, or a merged release.json) against its manifest;
    exit 1 on any changed, missing or extra file.

    \b
    With --public-key, the signature over manifest.json (`edgex sign`) must verify too.
    """
    from exporter.verify import verify as run_verify

    if signature is not None and public_key is None:
        raise UsageError(
            "a signature needs the key to check it with", field="--signature", fix="add --public-key KEY.pem"
        )
    result = run_verify(folder, public_key, signature)

    def text(r: dict) -> str:
        head = f"{r['folder']}: {'OK' if r['ok'] else 'FAILED'} ({r['files']} files listed)"
        return "\n".join([head] + [f"  {p['path']}: {p['problem']}" for p in r["problems"]])

    return _emit_judged(result, as_json, text)


@cli.command()
@click.argument("folder", type=click.Path(path_type=Path))
@click.option("--key", "key", type=click.Path(path_type=Path), required=True, help="EC private key (PEM).")
@click.option("--password-env", help="Environment variable holding the key's password, if it has one.")
@JSON_OPT
@command
def sign(folder: Path, key: Path, password_env: str | None, as_json: bool) -> int:
    """Sign a release's manifest.json with model_signing (offline, key-based); writes FOLDER/manifest.sig.

    \b
    Example: edgex sign build/digits --key release.pem && edgex verify build/digits --public-key release.pub
    """
    import os

    from exporter.signing import sign_release

    password = os.environ.get(password_env) if password_env else None
    path = sign_release(folder, key, password)
    _emit({"signature": str(path)}, as_json, lambda d: f"signed: {d['signature']}")
    return 0


@cli.command()
@click.argument("model", type=click.Path(path_type=Path))
@JSON_OPT
@command
def inspect(model: Path, as_json: bool) -> int:
    """Inputs/outputs, opset, op histogram, parameters, MACs and size of an ONNX MODEL."""
    info = _sandboxed("inspect", model, {})

    def text(d: dict) -> str:
        lines = [
            f"{d['path']}: {d['bytes'] / 1e6:.3f} MB, opset {d['opset']}, {d['nodes']} nodes, "
            f"{d['parameters']:,} parameters, {d['macs']:,} MACs"
        ]
        lines += [f"  input  {i['name']}: {i['dtype']} {i['shape']}" for i in d["inputs"]]
        lines += [f"  output {o['name']}: {o['dtype']} {o['shape']}" for o in d["outputs"]]
        lines.append("  ops: " + ", ".join(f"{k}×{v}" for k, v in d["op_histogram"].items()))
        return "\n".join(lines)

    _emit(info, as_json, text)
    return 0


@cli.command()
@click.argument("kind", type=click.Choice(["recipe", "profile", "target"]))
@JSON_OPT
@command
def schema(kind: str, as_json: bool) -> int:
    """Print the JSON Schema of a recipe, profile or target (for editor completion; JSON with or without --json)."""
    from exporter.profiles import DeviceProfile
    from exporter.recipe import Recipe
    from exporter.targets import Target

    model = {"recipe": Recipe, "profile": DeviceProfile, "target": Target}[kind]
    click.echo(json.dumps(model.model_json_schema(by_alias=True), indent=2, sort_keys=True))
    return 0


def _build_cell(
    recipe: Path | None,
    profiles: tuple[str, ...],
    out: Path | None,
    junit: Path | None,
    plan_path: Path | None,
    cell_id: str | None,
    as_json: bool,
) -> int:
    from exporter.matrix.cell import build_cell

    if plan_path is None or cell_id is None:
        raise UsageError(
            "--plan and --cell go together", field="--plan/--cell", fix="give both, e.g. --plan plan.json --cell ID"
        )
    if recipe is not None or profiles:
        raise UsageError(
            "a cell names its recipe and profile", field="RECIPE/--profile", fix="drop RECIPE and --profile with --plan"
        )
    result = build_cell(plan_path, cell_id, out)
    return _emit_build(
        result,
        result["manifest"],
        junit,
        as_json,
        lambda r: (
            f"{r['cell']}: {'from the cache' if r['cached'] else 'built'} into {r['out']}\n" + _summary(r["manifest"])
        ),
    )


@cli.command()
@click.argument("recipes", nargs=-1, type=click.Path(path_type=Path))
@click.option(
    "--profiles",
    "profile_ids",
    multiple=True,
    help="Profile ids for every recipe (repeatable or comma-separated; default: each recipe's own list).",
)
@click.option("--shard", help="k/N: only the k-th of N parts of the matrix (CI job limits: GitHub 256, GitLab 200).")
@click.option("--only-changed", is_flag=True, help="Leave out of the matrix the cells already in the cache.")
@click.option("--runners", type=click.Path(path_type=Path), help="YAML: runner labels and Ray resources per profile.")
@click.option(
    "--max-cells",
    type=click.IntRange(0),
    default=256,
    show_default=True,
    help="Refuse a matrix larger than this (0: no limit).",
)
@_out_file_opt("The plan.json to write.")
@click.option("--gitlab", type=click.Path(path_type=Path), help="Also write a GitLab child pipeline here.")
@click.option(
    "--gitlab-template",
    default=".gitlab/edgex-cell.yml",
    show_default=True,
    help="Repository file defining the `.edgex-cell` job template the child pipeline includes.",
)
@JSON_OPT
@click.pass_context
@command
def plan(
    ctx: click.Context,
    recipes: tuple[Path, ...],
    profile_ids: tuple[str, ...],
    shard: str | None,
    only_changed: bool,
    runners: Path | None,
    max_cells: int,
    out: Path,
    gitlab: Path | None,
    gitlab_template: str,
    as_json: bool,
) -> int:
    """Plan the release matrix of RECIPES x profiles: one cell each, with inputs, cache key and runner.

    \b
    Example: edgex plan recipes/*.yaml --profiles raspberry-pi-5-cpu,sa8295p-qnn -o plan.json
    GitHub: strategy.matrix: ${{ fromJson(needs.plan.outputs.matrix) }} with `jq -c .matrix plan.json`.
    """
    from exporter.matrix.plan import make_plan, parse_shard, write_json

    ids = [p.strip() for item in profile_ids for p in item.split(",") if p.strip()]
    result = make_plan(
        list(recipes), ids or None, ctx.obj["profiles_dirs"], runners, parse_shard(shard), only_changed, max_cells
    )
    write_json(out, result)
    if gitlab is not None:
        import yaml

        from exporter.matrix.ci import gitlab_child

        child = gitlab_child(result, Path(out).as_posix(), gitlab_template)
        Path(gitlab).write_text(yaml.safe_dump(child, sort_keys=False, width=1000), encoding="utf-8")
    summary = {
        "plan": str(out),
        "matrix_id": result["matrix_id"],
        "cells_total": result["cells_total"],
        "count": result["count"],
        "shard": {"index": result["shard"]["index"], "count": result["shard"]["count"]},
        "cells": [c["cell"] for c in result["matrix"]["include"]],
    }
    _emit(
        summary,
        as_json,
        lambda r: (
            f"{r['plan']}: {r['count']} cell(s) to build of {r['cells_total']} "
            f"(shard {r['shard']['index']}/{r['shard']['count']}, matrix {r['matrix_id'][:12]})"
        ),
    )
    return 0


@cli.command()
@_plan_opt("The plan.json to run.", required=True)
@click.option("--executor", type=click.Choice(["local", "ray"]), default="local", show_default=True)
@click.option(
    "-j",
    "--jobs",
    type=click.IntRange(1),
    default=2,
    show_default=True,
    help="Cells at once (local; CPUs of a new Ray cluster).",
)
@click.option(
    "--resource",
    "resources",
    multiple=True,
    help="NAME=N: capacity of a custom resource (a board), for the local pool or a new local Ray cluster.",
)
@click.option("--ray-address", help="Join this Ray cluster (e.g. auto) instead of starting a local one.")
@click.option("--out-root", type=click.Path(path_type=Path), default=Path("out"), show_default=True)
@JSON_OPT
@command
def run(
    plan_path: Path,
    executor: str,
    jobs: int,
    resources: tuple[str, ...],
    ray_address: str | None,
    out_root: Path,
    as_json: bool,
) -> int:
    """Build every cell of a plan's shard with an executor; cached cells are copied, not rebuilt.

    \b
    Example: edgex run --plan plan.json --executor ray --resource board-rpi5=1
    Exit code: the worst of the cells' (a failing cell never hides the others' results).
    """
    from exporter.matrix.executors import Settings, run_plan

    capacity = {}
    for item in resources:
        name, _, amount = item.partition("=")
        try:
            capacity[name.strip()] = float(amount)
        except ValueError:
            raise UsageError(
                f"'{item}' is not NAME=N", field="--resource", fix="e.g. --resource board-rpi5=1"
            ) from None
    result = run_plan(plan_path, executor, out_root, Settings(jobs, capacity, ray_address))

    def text(r: dict) -> str:
        lines = [f"{r['built']} built, {r['cached']} from the cache, {r['failed']} failed ({r['executor']})"]
        for c in r["cells"]:
            state = "cached" if c["cached"] else ("ok" if c["exit_code"] == 0 else f"exit {c['exit_code']}")
            lines.append(f"  {c['cell']:<48} {state:<8} {c['seconds']:7.1f} s  {c['error'] or ''}".rstrip())
        return "\n".join(lines)

    _emit(result, as_json, text)
    return result["exit_code"]


@cli.command()
@click.argument("manifests", nargs=-1, type=click.Path(path_type=Path))
@_out_file_opt("The release.json to write.")
@_plan_opt("Also check the cells against this plan.")
@JSON_OPT
@command
def merge(manifests: tuple[Path, ...], out: Path, plan_path: Path | None, as_json: bool) -> int:
    """Merge the cells' manifests into release.json; exit 1 on a missing, duplicate or altered cell.

    \b
    Example: edgex merge out/*/manifest.json -o release.json && edgex verify release.json
    """
    from exporter.matrix.merge import merge as run_merge
    from exporter.matrix.plan import load_plan

    result = run_merge(list(manifests), out, load_plan(plan_path) if plan_path else None)

    def text(r: dict) -> str:
        if r["problems"]:
            return "\n".join(["release NOT written:"] + [f"  {p['cell']}: {p['problem']}" for p in r["problems"]])
        bad = [c["id"] for c in r["cells"] if not c["ok"]]
        head = f"{out}: {len(r['cells'])} cells, {len(r['files'])} files"
        return head + (f"; BUDGET MISSED in {', '.join(bad)}" if bad else "; every cell within budget")

    return _emit_judged(result, as_json, text)


def main(argv: list[str] | None = None) -> None:
    """Console entry point: click's own usage errors get the same exit code and JSON shape as ours."""
    args = sys.argv[1:] if argv is None else argv
    try:
        cli.main(args=args, prog_name="edgex", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        _fail("interrupted", 130, "--json" in args, "KeyboardInterrupt")
    except click.ClickException as exc:
        ctx = getattr(exc, "ctx", None)
        hint = f" (see `{ctx.command_path if ctx else 'edgex'} --help`)"
        _fail(f"{exc.format_message()}{hint}", exc.exit_code, "--json" in args, "UsageError")
    sys.exit(0)


if __name__ == "__main__":
    main()
