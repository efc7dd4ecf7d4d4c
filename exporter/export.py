"""Export stage: source model -> FP32 ONNX at the target's opset and shape policy, then parity.

Parity is a gate, not a warning: an export whose outputs differ from PyTorch fails the build
(optimum only warns, and users ship broken models because of it).
"""

from __future__ import annotations

import logging
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from exporter.errors import GateFailure, UsageError
from exporter.loaded_model import LoadedModel
from exporter.onnx_io import save_model
from exporter.recipe import InputSpec
from exporter.runtime import make_session, run_all


@dataclass(frozen=True)
class ExportResult:
    path: Path
    opset: int
    static_shapes: bool
    parity_max_abs_diff: float
    parity_samples: int


def output_names(model_outputs: list[str] | None, count: int) -> list[str]:
    return list(model_outputs) if model_outputs else [f"output_{i}" for i in range(count)]


def torch_reference(module, inputs: dict[str, np.ndarray], specs: list[InputSpec], batch: int = 64) -> list[np.ndarray]:
    """Outputs of the PyTorch model on every sample: the FP32 reference all variants are judged against."""
    import torch

    n = len(next(iter(inputs.values())))
    chunks = []
    with torch.no_grad():
        for start in range(0, n, batch):
            args = [torch.from_numpy(inputs[s.name][start : start + batch]) for s in specs]
            out = module(*args)
            outs = out if isinstance(out, (tuple, list)) else [out]
            chunks.append([o.detach().cpu().numpy() for o in outs])
    return [np.concatenate([c[i] for c in chunks]) for i in range(len(chunks[0]))]


def _export_torch(
    module, specs: list[InputSpec], outputs: list[str] | None, opset: int, static: bool, path: Path
) -> None:
    import torch

    args = tuple(torch.zeros(s.shape, dtype=getattr(torch, s.dtype)) for s in specs)
    with torch.no_grad():
        probe = module(*args)
    count = len(probe) if isinstance(probe, (tuple, list)) else 1
    dynamic = None
    if not static and any(s.dynamic_axes for s in specs):
        dynamic = tuple(
            {axis: torch.export.Dim(name, min=1, max=4096) for axis, name in s.dynamic_axes.items()} or None
            for s in specs
        )
    quiet = logging.getLogger("torch.onnx")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # "torchvision is not installed" notices are noise for every user
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                module,
                args,
                None,
                input_names=[s.name for s in specs],
                output_names=output_names(outputs, count),
                opset_version=opset,
                dynamo=True,
                dynamic_shapes=dynamic,
                optimize=True,
                verbose=False,
            )
    except Exception as exc:
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise UsageError(
            f"torch.onnx.export failed: {first}",
            path="model",
            field="model.factory",
            fix="make the model exportable with torch.export (no data-dependent control flow)",
        ) from None
    finally:
        quiet.setLevel(level)
    model = program.model_proto
    save_model(model, path)


def _export_onnx(source: Path, specs: list[InputSpec], opset_range: tuple[int, int], static: bool, path: Path) -> int:
    model = onnx.load(str(source))
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    lo, hi = opset_range
    if not lo <= opset <= hi:  # ingest (at load) converts into the range of every target of the build
        from exporter.errors import InternalError

        raise InternalError(f"export: the ingested graph has opset {opset}, outside the target's range [{lo}, {hi}]")
    if static:
        _fix_input_shapes(model, specs)
    save_model(model, path)
    if not static and model == onnx.load(str(source)):
        shutil.copyfile(source, path)
    return opset


def _fix_input_shapes(model: onnx.ModelProto, specs: list[InputSpec]) -> None:
    """Every declared input at its declared shape, then shapes re-inferred. Set axis by axis, not by
    renaming symbols (onnxruntime's make_input_shape_fixed): exporters reuse one symbol for
    different axes (paddle2onnx writes '?' for both height and width) and write -1 for unknown."""
    for spec in specs:
        value = next((i for i in model.graph.input if i.name == spec.name), None)
        if value is None:
            continue
        shape = value.type.tensor_type.shape
        shape.ClearField("dim")
        for size in spec.shape:
            shape.dim.add().dim_value = int(size)
    del model.graph.value_info[:]  # symbolic shapes of the dynamic graph; inferred again below
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    model.CopyFrom(inferred)


def export_model(
    model: LoadedModel,
    specs: list[InputSpec],
    outputs: list[str] | None,
    opset: int,
    opset_range: tuple[int, int],
    static: bool,
    path: Path,
    fuse: bool = False,
    for_int8: bool = False,
) -> dict:
    """Write the FP32 ONNX baseline for one (opset, shapes, fusion) policy; returns what was done."""
    if model.kind == "torch":
        _export_torch(model.module, specs, outputs, opset, static, path)
        return {"opset": opset, "exporter": "torch.onnx (dynamo)"}
    if model.kind == "hf":
        from exporter.hf.optimize import export_for_target

        info = export_for_target(model.hf.canonical_onnx, model.hf.folder, specs, static, fuse, path, for_int8)
        return {"opset": 18, "exporter": "optimum", **info}
    assert model.onnx_path is not None
    info = {"opset": _export_onnx(model.onnx_path, specs, opset_range, static, path), "exporter": "given ONNX"}
    return {**info, "ingest": model.ingest} if model.ingest is not None else info


def check_parity(
    path: Path,
    inputs: dict[str, np.ndarray],
    reference: list[np.ndarray],
    samples: int = 64,
    rtol: float = 1e-3,
    atol: float = 1e-4,
    feeding=None,
) -> tuple[float, int]:
    """Compare ONNX Runtime outputs with the reference; any element out of tolerance fails the build."""
    n = min(samples, len(next(iter(inputs.values()))))
    subset = {k: v[:n] for k, v in inputs.items()}
    got = run_all(make_session(path), subset, feeding=feeding)  # feeding: exporter.feeding.Feeding (state, constants)
    worst = 0.0
    for i, (g, r) in enumerate(zip(got, reference)):
        r = r[:n]
        if g.shape != r.shape:
            raise GateFailure(f"parity: output {i} has shape {g.shape} in ONNX, {r.shape} in the source model")
        diff = np.abs(g.astype(np.float64) - r.astype(np.float64))
        worst = max(worst, float(diff.max()) if diff.size else 0.0)
        bad = diff > atol + rtol * np.abs(r)
        if bad.any():
            raise GateFailure(
                f"parity: {int(bad.sum())} of {bad.size} values of output {i} differ from the source model "
                f"(max abs diff {float(diff.max()):.3g} > atol {atol} + rtol {rtol})"
            )
    return worst, n
