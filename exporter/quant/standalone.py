"""`edgex quantize`: the quantize stage for users who already have an ONNX model.

Same code path as a build (calibration checks, target preset, accuracy search, speed guard), with
fidelity measured against the FP32 model's own outputs: mean cosine of the first output, so no
labels are needed. Without --evaluation the calibration samples are reused and the result says
it is an in-sample figure. The output file is written beside its destination and renamed into place.
Calibration, evaluation and the speed guard run at the input shapes resolved from the file and
`--shape` (every dynamic dimension, batch included, needs one); the result lists them.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from exporter.data import _read_npz, make_dataset, validate_arrays
from exporter.errors import UsageError
from exporter.ingest import ingest_file
from exporter.measure import evaluate_outputs
from exporter.metrics import cosine
from exporter.onnx_io import check_onnx_file
from exporter.profiles import DeviceProfile
from exporter.quant.calibration import specs_from_model
from exporter.quant.precisions import Request, RunInputs, evaluation_mode, handler_for
from exporter.recipe import QuantizeSection
from exporter.runtime import host_threads, make_session, run_all
from exporter.shapes import resolve_shapes
from exporter.staging import atomic_file
from exporter.targets import get_target


def quantize_file(
    model_path: Path,
    profile: DeviceProfile,
    calibration: Path,
    out: Path,
    precision: str = "int8",
    method: str = "minmax",
    samples: int = 128,
    evaluation: Path | None = None,
    max_drop: float | None = None,
    seed: int = 0,
    shapes: dict[str, list[int]] | None = None,
) -> dict:
    """shapes: sizes from `--shape` for the file's dynamic dimensions (exit 2 when one is missing)."""
    model = check_onnx_file(model_path)
    used = resolve_shapes(model, shapes, model_path)
    target = get_target(profile.target)
    handler = handler_for(precision)  # the same handler a build resolves (exporter.quant.precisions)
    handler.check(target, model_path, profile.id)
    specs = specs_from_model(model, used)
    given = model_path
    # The same ingest as a build: the file as exporters wrote it made workable, parity-checked.
    with tempfile.TemporaryDirectory(prefix="edgex-ingest-") as scratch:
        model_path, ingested = ingest_file(given, target, used, Path(scratch), field_name="MODEL")
        calib = make_dataset(
            validate_arrays(_read_npz(calibration, calibration, "--calibration"), specs, calibration, "--calibration"),
            None,
        )
        if evaluation is not None:
            evald = make_dataset(
                validate_arrays(_read_npz(evaluation, evaluation, "--evaluation"), specs, evaluation, "--evaluation"),
                None,
            )
        else:
            evald = calib
        budget = max_drop if max_drop is not None else profile.budgets.max_accuracy_drop
        mode = evaluation_mode(target)
        threads = host_threads(2)
        reference = run_all(make_session(model_path, threads), evald.inputs)

        def drop_of(path: Path) -> float:
            got = evaluate_outputs(path, evald.inputs, threads, path.name, mode)
            return 1.0 - cosine(got[0], None, reference[0])

        if out.exists() and out.is_dir():
            raise UsageError(f"'{out}' is a folder", path=out, field="--out", fix="give a file name ending in .onnx")
        out.parent.mkdir(parents=True, exist_ok=True)
        batch = specs[0].shape[0]
        summary: dict = {
            "model": str(model_path),
            "profile": profile.id,
            "target": target.id,
            "precision": precision,
            "shapes": used,
        }
        if ingested.changed:  # an old opset converted, Constant weights promoted: said, with its parity
            summary["ingest"] = ingested.as_dict()
        settings = QuantizeSection(calibration_method=method, calibration_samples=samples) if handler.searched else None
        settings = settings or QuantizeSection()  # --method and --samples steer the INT8 search only
        request = Request(model_path, target, settings, budget)
        run = RunInputs(
            calib,
            batch,
            seed,
            evaluate=drop_of,
            speed_feed={k: v[:batch] for k, v in evald.inputs.items()},
            label=profile.id,
        )
        with atomic_file(out) as staged:
            produced = handler.run(request, run, staged)
            summary.update(produced.summary)
            handler.ensures(staged, handler.variant)
            drop = drop_of(staged)
        summary.update(
            out=str(out),
            cosine=round(1.0 - drop, 6),
            drop=round(drop, 6),
            budget=budget,
            evaluated_on="evaluation file" if evaluation is not None else "calibration samples (in-sample)",
            size_ratio=round(out.stat().st_size / given.stat().st_size, 4),
            ok=bool(drop <= budget and np.isfinite(drop)),
        )
        return summary
