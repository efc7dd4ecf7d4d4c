"""Package stage: what an app loads on the device, per target.

Mobile runtimes (NNAPI, CoreML, XNNPACK) get the ORT format (.ort, onnxruntime's converter) with
its required-operators config for a reduced onnxruntime build; QNN, TensorRT and the CPU get the
(fixed-shape, QDQ) .onnx itself. Beside it: runtime.json (everything an app needs to create the
session) and a reference bundle (inputs, expected outputs and a script that checks them on the
device with onnxruntime).
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from exporter import log
from exporter.digest import sha256_file
from exporter.feeding import Feeding
from exporter.recipe import BenchSection
from exporter.runtime import make_session, run_all
from exporter.shapes import RECORDED_SHAPES
from exporter.targets import Target

REFERENCE_SAMPLES = 8
CHECK_SCRIPT = '''"""Check an edgex package on the device: run the reference inputs, compare with the expected outputs.

Usage: python check_reference.py [EXECUTION_PROVIDER ...]   (default: the provider in runtime.json, then CPU)
Needs only numpy and onnxruntime. Exit code 0 = PASS, 1 = FAIL.
"""

import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort

here = Path(__file__).resolve().parent
runtime = json.loads((here.parent / "runtime.json").read_text())
check = runtime["reference_check"]
wanted = sys.argv[1:] or [runtime["execution_provider"], "CPUExecutionProvider"]
providers = [p for p in wanted if p in ort.get_available_providers()] or ["CPUExecutionProvider"]
session = ort.InferenceSession(str(here.parent / runtime["model"]), providers=providers)
data = np.load(here / "reference_io.npz")
names = [i["name"] for i in runtime["inputs"]]
outputs = [o["name"] for o in runtime["outputs"]]
worst, agree, ok = 0.0, 0, True
count = data["input:" + names[0]].shape[0]
# "feeds": each entry is one whole query (state and constant inputs included, in their own shapes)
whole = check.get("layout") == "feeds"
for k in range(count):
    feed = {n: np.asarray(data["input:" + n][k]) if whole else data["input:" + n][k : k + 1] for n in names}
    got = session.run(outputs, feed)
    for name, value in zip(outputs, got):
        want = data["output:" + name][k] if whole else data["output:" + name][k : k + 1]
        diff = np.abs(value.astype(np.float64) - want.astype(np.float64))
        worst = max(worst, float(diff.max()))
        atol = np.full(want.shape, check["atol"])
        for part in check.get("parts", []):  # a concatenated output's small part gets its own tolerance
            if part["output"] == name:
                where = [slice(None)] * want.ndim
                where[part["axis"]] = slice(part["start"], part["stop"])
                atol[tuple(where)] = part["atol"]
        ok &= bool(np.all(diff <= atol + check["rtol"] * np.abs(want)))
    first = data["output:" + outputs[0]][k] if whole else data["output:" + outputs[0]][k : k + 1]
    agree += int(got[0].reshape(-1).argmax() == first.reshape(-1).argmax())
print(f"{'PASS' if ok else 'FAIL'}: {count} reference samples on {session.get_providers()[0]}, "
      f"max abs diff {worst:.3g} (atol {check['atol']:.3g}, rtol {check['rtol']}), argmax agreement {agree}/{count}")
sys.exit(0 if ok else 1)
'''


def _clean_config(path: Path) -> None:
    """The converter's header names temporary paths; keep the file the same on every build."""
    lines = path.read_text(encoding="utf-8").splitlines()
    kept = [line for line in lines if not line.startswith("# - ")]
    path.write_text("\n".join(re.sub(r"/\S*/", "", line) for line in kept) + "\n", encoding="utf-8")


def to_ort(onnx_path: Path, dest: Path, style: str) -> tuple[Path, Path, bool]:
    """Convert with onnxruntime's converter; returns (.ort, required_operators.config, reproducible).

    The converter's output depends on the absolute path it works in (measured: same model, two
    folders, two different .ort files), so it always works in the same place: a folder named after
    the model's digest under the system temp dir, serialised by a lock.
    """
    import fcntl

    digest = sha256_file(onnx_path)[:16]
    work = Path(tempfile.gettempdir()) / "edgex-ort" / f"{digest}-{style}"
    work.mkdir(parents=True, exist_ok=True)
    stem = onnx_path.stem
    ort_path, config_path = dest / f"{stem}.ort", dest / f"{stem}.required_operators.config"
    with open(work.parent / f"{work.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            for stale in (work / "model.onnx", work / "out"):
                shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink(missing_ok=True)
            shutil.copyfile(onnx_path, work / "model.onnx")
            # onnxruntime's converter lays out the flatbuffer in an order that follows memory addresses
            # (measured: the same model gives a different .ort on every run). A fresh interpreter with
            # address-space randomisation off, a fixed folder, arguments and environment makes it repeat.
            command = [
                sys.executable,
                "-m",
                "onnxruntime.tools.convert_onnx_models_to_ort",
                "--optimization_style",
                "Runtime" if style == "runtime" else "Fixed",
                "--enable_type_reduction",
                "--output_dir",
                "out",
                "model.onnx",
            ]
            setarch = shutil.which("setarch")
            if setarch:
                command = [setarch, platform.machine(), "-R", *command]
            env = {"PATH": os.environ.get("PATH", ""), "PYTHONHASHSEED": "0", "LANG": "C.UTF-8", "HOME": str(work)}
            proc = subprocess.run(command, cwd=work, capture_output=True, text=True, env=env)
            if proc.returncode != 0:
                tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
                raise RuntimeError(f"ORT-format conversion of {onnx_path.name} failed: {tail}")
            shutil.copyfile(next((work / "out").glob("*.ort")), ort_path)
            shutil.copyfile(next((work / "out").glob("*.config")), config_path)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    _clean_config(config_path)
    return ort_path, config_path, bool(setarch)


def _load_seconds(path: Path, threads: int, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        make_session(path, threads)
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def package_parity(
    onnx_path: Path,
    package_path: Path,
    inputs: dict[str, np.ndarray],
    threads: int,
    settings,
    feeding: Feeding | None = None,
) -> dict:
    """The package against the .onnx it came from: outputs, argmax agreement, load time and latency."""
    from exporter.measure import time_interleaved

    want = run_all(make_session(onnx_path, threads), inputs, feeding=feeding)[0]
    got = run_all(make_session(package_path, threads), inputs, feeding=feeding)[0]
    flat_w, flat_g = want.reshape(len(want), -1), got.reshape(len(got), -1)
    first = {k: v[:1] for k, v in inputs.items()}
    feed = first if feeding is None else feeding.feed(first)
    lat = time_interleaved({"onnx": onnx_path, "package": package_path}, feed, threads, settings)
    return {
        "samples": len(want),
        "max_abs_diff": float(np.abs(flat_w.astype(np.float64) - flat_g).max()),
        "argmax_agreement": float(np.mean(flat_w.argmax(-1) == flat_g.argmax(-1))),
        "load_seconds": {
            "onnx": round(_load_seconds(onnx_path, threads), 4),
            "package": round(_load_seconds(package_path, threads), 4),
        },
        "latency_p50_ms": {"onnx": round(lat["onnx"].p50, 4), "package": round(lat["package"].p50, 4)},
    }


def reference_bundle(
    folder: Path,
    package_path: Path,
    inputs: dict[str, np.ndarray],
    threads: int,
    feeding: Feeding | None = None,
    concat_parts: list[dict] | None = None,
) -> dict:
    """A few evaluation inputs and the package's outputs on this host, plus the device check script.

    With state or constant inputs each entry is a whole query (layout "feeds"): one chunk with the
    state the FP32 model carried into it and the constants, so the check runs chunk by chunk."""
    ref = folder / "reference"
    ref.mkdir()
    subset = {k: v[:REFERENCE_SAMPLES] for k, v in inputs.items()}
    session = make_session(package_path, threads)
    layout = {}
    if feeding is None:
        outputs = run_all(session, subset)
        arrays = {f"input:{k}": v for k, v in subset.items()}
    else:
        count = len(next(iter(subset.values())))
        feeds = [feeding.feed({k: v[i : i + 1] for k, v in subset.items()}) for i in range(count)]
        runs = [session.run(None, feed) for feed in feeds]
        outputs = [np.stack([r[j] for r in runs]) for j in range(len(session.get_outputs()))]
        arrays = {f"input:{k}": np.stack([f[k] for f in feeds]) for k in feeds[0]}
        layout = {"layout": "feeds"}
    arrays.update({f"output:{o.name}": v for o, v in zip(session.get_outputs(), outputs)})
    np.savez(ref / "reference_io.npz", **arrays)
    (ref / "check_reference.py").write_text(CHECK_SCRIPT, encoding="utf-8")
    scale = max(float(np.abs(outputs[0]).max()), 1e-6)
    # Device kernels differ from the host's (fused int8, FP16 accumulation on NPUs): the check is
    # meant to catch a broken deployment, not to demand bit-exact outputs.
    check = {"samples": len(next(iter(subset.values()))), "atol": round(0.02 * scale, 6), "rtol": 0.05, **layout}
    # One tolerance from the largest output would let a YOLO head's 0..1 scores drift by 5 (boxes up to 256)
    by_name = {o.name: v for o, v in zip(session.get_outputs(), outputs)}
    parts = [
        {"output": rec["output"], "axis": rec["output_axis"], "start": i["start"], "stop": i["stop"]}
        for rec in concat_parts or []
        if rec.get("output_axis") is not None and rec["output"] in by_name
        for i in rec["inputs"]
        if i["start"] is not None and i["stop"] is not None
    ]
    for part in parts:
        where = [slice(None)] * by_name[part["output"]].ndim
        where[part["axis"]] = slice(part["start"], part["stop"])
        part["atol"] = round(0.02 * max(float(np.abs(by_name[part["output"]][tuple(where)]).max()), 1e-6), 6)
    return {**check, "parts": parts} if parts else check


def shape_profile_options(session, shapes: dict[str, list[int]]) -> dict[str, str]:
    """TensorRT optimisation-profile bounds for dynamic inputs: 1 up to the benchmarked shape.

    Without them TensorRT would rebuild its engine for every new shape; widen
    trt_profile_max_shapes in runtime.json for larger batches or sequences.
    """
    dynamic = [i for i in session.get_inputs() if any(not isinstance(d, int) for d in i.shape)]
    if not dynamic:
        return {}

    def fmt(pick) -> str:
        return ",".join(
            f"{i.name}:" + "x".join(str(pick(d, full)) for d, full in zip(i.shape, shapes[i.name])) for i in dynamic
        )

    return {
        "trt_profile_min_shapes": fmt(lambda d, full: d if isinstance(d, int) else 1),
        "trt_profile_opt_shapes": fmt(lambda d, full: full),
        "trt_profile_max_shapes": fmt(lambda d, full: full),
    }


def runtime_json(
    profile,
    target: Target,
    model_file: str,
    session,
    notes: dict,
    files: dict,
    check: dict,
    shapes: dict[str, list[int]],
    feeding: Feeding | None = None,
) -> dict:
    """What an app needs to create the session and feed it: for a model with state, which inputs
    are carried from which outputs (and from what initial value); which are constants, with values."""

    def describe(values) -> list[dict]:
        return [
            {"name": v.name, "shape": v.shape, "dtype": v.type.removeprefix("tensor(").removesuffix(")")}
            for v in values
        ]

    return {
        "schema_version": 1,
        "profile": profile.id,
        "target": target.id,
        "model": model_file,
        "format": Path(model_file).suffix.lstrip("."),
        "execution_provider": target.execution_provider,
        "provider_options": dict(
            sorted(
                {
                    **target.provider_options,
                    **(shape_profile_options(session, shapes) if target.shape_profiles else {}),
                }.items()
            )
        ),
        "session_options": {
            "intra_op_num_threads": profile.threads,
            "inter_op_num_threads": 1,
            "execution_mode": "ORT_SEQUENTIAL",
            "graph_optimization_level": "ORT_ENABLE_ALL",
        },
        "inputs": describe(session.get_inputs()),
        # The shapes the build judged this model at (accuracy, latency, memory): a dynamic
        # dimension in `inputs` may take other sizes, but only these were measured.
        "input_shapes": {name: list(dims) for name, dims in sorted(shapes.items())},
        "outputs": describe(session.get_outputs()),
        **fed_by_app(feeding),
        "preprocessing": notes.get("preprocessing", ""),
        **({"preprocess": notes["preprocess"]} if notes.get("preprocess") else {}),
        "postprocessing": notes.get("postprocessing", ""),
        "files": files,
        "reference_check": {"script": "reference/check_reference.py", **check},
    }


def fed_by_app(feeding: Feeding | None) -> dict:
    """runtime.json's `state_inputs` and `constant_inputs`: the inputs the app fills itself."""
    if feeding is None:
        return {"state_inputs": [], "constant_inputs": {}}
    states = [
        {
            "input": s.input,
            "from_output": s.output,
            "initial": s.initial,
            "shape": list(s.shape),
            "dtype": s.dtype,
            "batch_axis": s.batch_axis,
            "reset": "fill with `initial` at the start of every stream; then feed the previous run's output",
        }
        for s in feeding.states
    ]
    constants = {
        name: {"value": value.tolist(), "shape": list(value.shape), "dtype": str(value.dtype)}
        for name, value in sorted(feeding.constants.items())
    }
    return {"state_inputs": states, "constant_inputs": constants}


PACKAGE_BENCH = BenchSection(warmup_runs=3, min_runs=20, min_seconds=0.2, max_seconds=5.0)


def preflight_and_package(
    profile_id: str,
    target: Target,
    paths: dict[str, Path],
    inputs: dict[str, np.ndarray],
    threads: int,
    feeding: Feeding | None = None,
    soc: dict[str, int | None] | None = None,
) -> tuple[dict[str, dict], dict[str, dict]]:
    """Operator coverage of every variant, and its device package (.ort where the target wants it)."""
    from exporter.preflight import preflight

    checks, packages = {}, {}
    for name, path in paths.items():
        checks[name] = preflight(path, target, soc)
        pf = checks[name]
        if pf["cpu_fallback_nodes"]:
            ops = ", ".join(f"{op}x{n}" for op, n in pf["unsupported_ops"].items())
            log.info(
                f"[{profile_id}] preflight {name}: {pf['cpu_fallback_nodes']} of {pf['nodes']} nodes fall back "
                f"to the CPU ({ops}); {pf['partitions']} accelerator partition(s)"
            )
        if target.package_format == "ort":
            log.info(f"[{profile_id}] package {name} as ORT format ({target.ort_optimization_style} optimizations)")
            ort_path, config, reproducible = to_ort(path, path.parent, target.ort_optimization_style)
            parity = package_parity(path, ort_path, inputs, threads, PACKAGE_BENCH, feeding)
            packages[name] = {
                "path": f"{profile_id}/{ort_path.name}",
                "format": "ort",
                "required_operators": f"{profile_id}/{config.name}",
                "parity": parity,
                "reproducible": reproducible,  # False where setarch is missing: the .ort bytes may vary
            }
        else:
            packages[name] = {"path": f"{profile_id}/{path.name}", "format": "onnx"}
    return checks, packages


def ship(
    folder: Path,
    profile,
    target: Target,
    model_file: str,
    inputs: dict[str, np.ndarray],
    threads: int,
    files: dict,
    notes: dict,
    shapes: dict[str, list[int]],
    feeding: Feeding | None = None,
    context_binary: dict | None = None,
    concat_parts: list[dict] | None = None,
) -> dict:
    """runtime.json and the reference bundle for the variant that ships (context_binary: the QNN
    EPContext model compiled for the profile's SoC, which the app loads instead where it can)."""
    check = reference_bundle(folder, folder / model_file, inputs, threads, feeding, concat_parts)
    session = make_session(folder / model_file, threads)
    runtime = runtime_json(profile, target, model_file, session, notes, files, check, shapes, feeding)
    if context_binary is not None:
        runtime["context_binary"] = context_binary
    (folder / "runtime.json").write_text(json.dumps(runtime, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return runtime


def stamp(
    src: Path,
    dest: Path,
    recipe_sha256: str,
    seed: int,
    profile_id: str,
    target: Target,
    variant: str,
    produced_by: dict,
    input_shapes: dict[str, list[int]] | None = None,
) -> None:
    """Provenance inside each shipped model (metadata_props), so a file found on a device says where it came from.

    input_shapes: the shapes the build judged the file at, so `edgex bench`/`inspect` of a shipped
    file with a dynamic batch run at them without `--shape` (declared by the build, not guessed)."""
    import onnx

    from exporter.onnx_io import save_model
    from exporter.versions import source_date_epoch, tool_versions

    versions = tool_versions()
    model = onnx.load(str(src))
    facts = {
        "edgex.version": versions["edgex"],
        "edgex.recipe_sha256": recipe_sha256,
        "edgex.profile": profile_id,
        "edgex.target": target.id,
        "edgex.execution_provider": target.execution_provider,
        "edgex.variant": variant,
        "edgex.seed": str(seed),
        "edgex.onnxruntime": versions["onnxruntime"],
        "edgex.onnx": versions["onnx"],
        "edgex.torch": versions["torch"],
    }
    if "calibration_sha256" in produced_by:
        facts["edgex.calibration_sha256"] = produced_by["calibration_sha256"]
    facts["edgex.opset"] = str(next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0))
    if input_shapes:
        facts[RECORDED_SHAPES] = json.dumps(input_shapes, sort_keys=True, separators=(",", ":"))
    epoch = source_date_epoch()
    if epoch is not None:
        facts["edgex.source_date_epoch"] = epoch
    save_model(model, dest, metadata=facts)
