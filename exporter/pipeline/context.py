"""What a build loads once and every profile shares: the recipe, profiles, data, model, FP32 truth.

`prepare` checks everything before any file is written (`edgex validate` stops there);
`for_profile` gives the same context in a profile's own input shape (hf `per_profile`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from exporter import log
from exporter.data import Dataset, load_dataset
from exporter.errors import GateFailure, UsageError
from exporter.export import torch_reference
from exporter.loaded_model import LoadedModel
from exporter.metrics import accuracy_drop, needs_labels, resolve_metric
from exporter.profiles import DeviceProfile, get_profiles, refuse_repeated
from exporter.quant.precisions import refuse_unrunnable
from exporter.recipe import InputSpec, LoadedRecipe, load_recipe
from exporter.runtime import make_session, run_all
from exporter.sources import load_model
from exporter.targets import get_target


@dataclass
class Context:
    """Everything loaded once per build and shared by every profile."""

    loaded: LoadedRecipe
    profiles: list[DeviceProfile]
    calibration: Dataset
    evaluation: Dataset
    model: LoadedModel
    inputs: list[InputSpec]
    reference: list[np.ndarray]
    metric_name: str
    metric_fn: object
    higher_is_better: bool
    baseline_metric: float
    shapes: dict = field(default_factory=dict, repr=False)  # (batch, seq) -> Context, per-profile shapes
    compressed: dict = field(default_factory=dict, repr=False)  # (align, latency) -> compress.Compressed
    replay: object = None  # replay.Replay: timing-based decisions taken from an earlier manifest


def reference_outputs(ctx: Context) -> Context:
    """Outputs of the source model on the evaluation set: the FP32 truth every variant is judged against."""
    r = ctx.loaded.recipe
    log.info(f"[{r.name}] reference outputs of the source model on {len(ctx.evaluation)} evaluation samples")
    if ctx.model.kind == "onnx":
        ctx.reference = run_all(make_session(ctx.model.onnx_path), ctx.evaluation.inputs)
    else:
        ctx.reference = torch_reference(ctx.model.module, ctx.evaluation.inputs, ctx.inputs)
    for i, out in enumerate(ctx.reference):
        if np.issubdtype(out.dtype, np.floating) and not np.isfinite(out).all():
            raise GateFailure(f"the source model's output {i} contains NaN/Inf on the evaluation set")
    ctx.baseline_metric = float(ctx.metric_fn(ctx.reference[0], ctx.evaluation.labels, ctx.reference[0]))
    return ctx


def load_data(loaded: LoadedRecipe, model: LoadedModel, inputs: list[InputSpec]) -> tuple[Dataset, Dataset]:
    """Calibration and evaluation sets in the given input shapes (tokenized for hf sources)."""
    r = loaded.recipe
    tokenizer = model.hf.tokenizer if model.hf is not None else None
    calibration = load_dataset(r.data.calibration, inputs, loaded, "data.calibration", tokenizer)
    evaluation = load_dataset(r.data.evaluation, inputs, loaded, "data.evaluation", tokenizer)
    batch = inputs[0].shape[0]
    if r.quantize.enabled and len(calibration) < batch:
        raise UsageError(
            f"{len(calibration)} calibration samples for a batch of {batch}",
            path=loaded.path,
            field="data.calibration",
            fix=f"give at least {batch} samples",
        )
    return calibration, evaluation


def for_profile(ctx: Context, profile: DeviceProfile) -> Context:
    """The context in this profile's input shape: the recipe's, or an hf `per_profile` override
    (data re-tokenized at that length and a reference computed for it, once per shape)."""
    spec = ctx.loaded.recipe.model
    override = getattr(spec, "per_profile", {}).get(profile.id)
    if override is None:
        return ctx
    batch = override.batch or spec.batch
    seq = override.sequence_length or spec.sequence_length
    key = (batch, seq)
    if key == (spec.batch, spec.sequence_length):
        return ctx
    if key not in ctx.shapes:
        inputs = [i.model_copy(update={"shape": [batch, seq]}) for i in ctx.inputs]
        calibration, evaluation = load_data(ctx.loaded, ctx.model, inputs)
        shaped = dataclasses.replace(ctx, inputs=inputs, calibration=calibration, evaluation=evaluation, shapes={})
        ctx.shapes[key] = reference_outputs(shaped)
    return ctx.shapes[key]


def prepare(
    recipe_path: str | Path,
    profiles: list[str] | None = None,
    profiles_dirs: tuple[Path, ...] | list[Path] = (),
    with_reference: bool = True,
) -> Context:
    """Load and validate everything a build needs, before any file is written.

    `edgex validate` stops here with with_reference=False: everything checked, nothing computed.
    """
    loaded = load_recipe(recipe_path)
    r = loaded.recipe
    ids = list(profiles) if profiles else r.profiles
    where = "--profile" if profiles else loaded.path
    refuse_repeated(ids, where)
    chosen = get_profiles(ids, profiles_dirs, where=where)
    for profile in chosen:
        refuse_unrunnable(r.quantize, get_target(profile.target), loaded.path, profile.id)
    if r.model.source == "hf":
        log.info(f"[{r.name}] load the Hugging Face folder and export it with optimum")
        unknown = sorted(set(r.model.per_profile) - set(r.profiles) - set(ids))
        if unknown:
            raise UsageError(
                f"per_profile names {unknown}, not profiles of this recipe",
                path=loaded.path,
                field="model.per_profile",
                fix="use ids from `profiles:`",
            )
    model = load_model(loaded)
    inputs = r.inputs if r.inputs is not None else model.hf.inputs
    calibration, evaluation = load_data(loaded, model, inputs)
    metric_name, metric_fn, higher = resolve_metric(r.metric, loaded.path)
    needs_labels(metric_name, evaluation.labels, loaded.path)
    ctx = Context(loaded, chosen, calibration, evaluation, model, inputs, [], metric_name, metric_fn, higher, 0.0)
    if r.compress:
        from exporter.compress import check_steps

        check_steps(ctx)
    return reference_outputs(ctx) if with_reference else ctx


def query_feed(ctx: Context) -> dict[str, np.ndarray]:
    """One query in the recipe's shape, taken from real evaluation data."""
    return {s.name: ctx.evaluation.inputs[s.name][: s.shape[0]] for s in ctx.inputs}


def evaluator(ctx: Context, mode: str, threads: int, samples: int | None = None):
    """path -> accuracy drop on the evaluation set (or a seeded subset of it), computed as the
    target's runtime computes it; the subset's FP32 metric is the baseline of its drops."""
    from exporter.measure import evaluate_outputs

    n = len(ctx.evaluation)
    idx = (
        np.arange(n) if samples is None or samples >= n else np.sort(np.random.default_rng(0).choice(n, samples, False))
    )
    inputs = {k: v[idx] for k, v in ctx.evaluation.inputs.items()}
    labels = None if ctx.evaluation.labels is None else ctx.evaluation.labels[idx]
    reference = ctx.reference[0][idx]
    baseline = float(ctx.metric_fn(reference, labels, reference))

    def evaluate(path: Path) -> float:
        out = evaluate_outputs(path, inputs, threads, path.stem, mode)
        value = float(ctx.metric_fn(out[0], labels, reference))
        return accuracy_drop(baseline, value, ctx.higher_is_better)

    return evaluate
