"""What a build loads once and every profile shares: the recipe, profiles, data, model, FP32 truth.

`prepare` checks everything before any file is written (`edgex validate` stops there);
`for_profile` gives the same context in a profile's own input shape (hf `per_profile`, or an
input's `per_profile`). For a model with state, the FP32 truth is computed as the app runs it:
each evaluation sequence chunk by chunk, the state carried from the previous chunk; the states
the FP32 model was fed become the state samples of calibration (realistic values, not zeros).
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
from exporter.recipe_inputs import inputs_problem
from exporter.runtime import make_session, run_all, run_sequences
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
    metric_extras: object = None  # a task metric's further values (fn(output, labels, reference) -> dict)


def reference_outputs(ctx: Context) -> Context:
    """Outputs of the source model on the evaluation set: the FP32 truth every variant is judged against."""
    r = ctx.loaded.recipe
    log.info(f"[{r.name}] reference outputs of the source model on {len(ctx.evaluation)} evaluation samples")
    feeding = ctx.evaluation.feeding
    if feeding is not None and feeding.carried:
        session = make_session(ctx.model.onnx_path)
        steps = feeding.steps, ctx.calibration.feeding.steps
        log.info(
            f"[{r.name}] state carried through sequences of {steps[0]} (evaluation), {steps[1]} (calibration) chunks"
        )
        ctx.reference, fed = run_sequences(session, ctx.evaluation.inputs, feeding)
        ctx.evaluation = ctx.evaluation.with_states(fed)
        ctx.calibration = ctx.calibration.with_states(run_sequences(session, ctx.calibration.inputs, feeding)[1])
    elif ctx.model.kind == "onnx":
        ctx.reference = run_all(make_session(ctx.model.onnx_path), ctx.evaluation.inputs, feeding=feeding)
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
    batch = data_batch(inputs)
    if r.quantize.enabled and len(calibration) < batch:
        raise UsageError(
            f"{len(calibration)} calibration samples for a batch of {batch}",
            path=loaded.path,
            field="data.calibration",
            fix=f"give at least {batch} samples",
        )
    return calibration, evaluation


def data_batch(inputs: list[InputSpec]) -> int:
    """The batch of a query: the first dimension of the data inputs (a state's may be elsewhere)."""
    return next(s.shape[0] for s in inputs if s.kind == "data")


def profile_shapes(ctx: Context, profile_id: str) -> list[InputSpec]:
    """The inputs in this profile's shapes: an hf `model.per_profile` entry, or each input's `per_profile`."""
    spec = ctx.loaded.recipe.model
    override = getattr(spec, "per_profile", {}).get(profile_id)
    if override is not None:
        shape = [override.batch or spec.batch, override.sequence_length or spec.sequence_length]
        return [i.model_copy(update={"shape": shape}) for i in ctx.inputs]
    return [
        i.model_copy(update={"shape": i.per_profile[profile_id]}) if profile_id in i.per_profile else i
        for i in ctx.inputs
    ]


def for_profile(ctx: Context, profile: DeviceProfile) -> Context:
    """The context in this profile's input shapes: the recipe's, or its per-profile ones (data
    reloaded (re-tokenized) in those shapes and a reference computed for them, once per shape)."""
    inputs = profile_shapes(ctx, profile.id)
    key = tuple(tuple(i.shape) for i in inputs)
    if key == tuple(tuple(i.shape) for i in ctx.inputs):
        return ctx
    if key not in ctx.shapes:
        log.info(f"[{profile.id}] input shapes {', '.join(f'{i.name} {list(i.shape)}' for i in inputs)}")
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
    model = load_model(loaded, [get_target(p.target) for p in chosen])
    inputs = r.inputs if r.inputs is not None else model.hf.inputs
    check_inputs(loaded, model, inputs, ids)
    # Data inputs first: the batch and the query label are read from the first input.
    inputs = sorted(inputs, key=lambda s: s.kind != "data")
    calibration, evaluation = load_data(loaded, model, inputs)
    metric_name, metric_fn, higher, extras = resolve_metric(r.metric, loaded.path, model.onnx_path)
    needs_labels(metric_name, evaluation.labels, loaded.path)
    ctx = Context(loaded, chosen, calibration, evaluation, model, inputs, [], metric_name, metric_fn, higher, 0.0)
    ctx.metric_extras = extras
    if r.compress:
        from exporter.compress import check_steps

        check_steps(ctx)
    return reference_outputs(ctx) if with_reference else ctx


def check_inputs(loaded: LoadedRecipe, model: LoadedModel, inputs: list[InputSpec], profile_ids: list[str]) -> None:
    """The inputs against the model (a state's output must exist) and the profiles (per_profile ids)."""
    where = loaded.path
    kinds = {s.kind for s in inputs}
    if kinds - {"data"} and model.kind != "onnx":
        raise UsageError(
            "state and value inputs need an onnx source",
            path=where,
            field="inputs",
            fix="export the model to ONNX and use `model: {source: onnx}`",
        )
    outputs = None
    if model.kind == "onnx":
        import onnx

        graph = onnx.load(str(model.onnx_path), load_external_data=False).graph
        outputs = [o.name for o in graph.output]
        _shapes_fit(graph, inputs, where)
    for i, spec in enumerate(inputs):
        unknown = sorted(set(spec.per_profile) - set(loaded.recipe.profiles) - set(profile_ids))
        if unknown:
            raise UsageError(
                f"per_profile names {unknown}, not profiles of this recipe",
                path=where,
                field=f"inputs[{i}].per_profile",
                fix="use ids from `profiles:`",
            )
    problem = inputs_problem(inputs, outputs)
    for pid in profile_ids:
        if problem is None:
            shapes = {s.name: s.per_profile[pid] for s in inputs if pid in s.per_profile}
            problem = inputs_problem(inputs, outputs, shapes) if shapes else None
    if problem is not None:
        field, message, fix = problem
        raise UsageError(message, path=where, field=field, fix=fix or None)


def _shapes_fit(graph, inputs: list[InputSpec], where: Path) -> None:
    """Every declared shape has the model input's rank and its fixed sizes; the dynamic ones
    take the recipe's value (said in the message when missing, never a silent 1)."""
    declared = {s.name: (i, s) for i, s in enumerate(inputs)}
    named: dict[str, tuple[str, int]] = {}  # a symbolic dimension -> (input, size) where first given
    for value in graph.input:
        if value.name not in declared or not value.type.tensor_type.HasField("shape"):
            continue
        i, spec = declared[value.name]
        dims = [
            d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in value.type.tensor_type.shape.dim
        ]
        model_shape = "[" + ", ".join(map(str, dims)) + "]"
        shapes = [("shape", spec.shape)] + [(f"per_profile.{p}", s) for p, s in spec.per_profile.items()]
        for name, shape in shapes:
            if len(shape) != len(dims):
                dynamic = [a for a, d in enumerate(dims) if not isinstance(d, int)]
                raise UsageError(
                    f"'{spec.name}' is {shape} in the recipe but {model_shape} in the model"
                    + (f" (axes {dynamic} are dynamic)" if dynamic else ""),
                    path=where,
                    field=f"inputs[{i}].{name}",
                    fix=f"give all {len(dims)} dimensions, a value for each dynamic axis",
                )
            for axis, (want, got) in enumerate(zip(dims, shape, strict=True)):
                if isinstance(want, str) and want != "?" and name == "shape":
                    first, size = named.setdefault(want, (spec.name, got))
                    if size != got:
                        raise UsageError(
                            f"axis {axis} of '{spec.name}' is {got} but '{first}' gives the model's "
                            f"dimension '{want}' the size {size}",
                            path=where,
                            field=f"inputs[{i}].shape",
                            fix=f"set axis {axis} to {size}",
                        )
                if isinstance(want, int) and want > 0 and want != got:
                    raise UsageError(
                        f"axis {axis} of '{spec.name}' is {got} in the recipe but fixed at {want} in the model {model_shape}",
                        path=where,
                        field=f"inputs[{i}].{name}",
                        fix=f"set axis {axis} to {want}",
                    )


def query_feed(ctx: Context) -> dict[str, np.ndarray]:
    """One query in the recipe's shape, taken from real evaluation data. For a model with state:
    a chunk that is not a sequence's first, with the state the FP32 model carried into it."""
    batch = data_batch(ctx.inputs)
    feeding = ctx.evaluation.feeding
    start = 0
    if feeding is not None and feeding.carried:
        batch = min(batch, feeding.max_batch() or batch)
        start = max(0, min(feeding.steps - 1, len(ctx.evaluation) - batch))
    return ctx.evaluation.feed(start, start + batch)


def subset_indices(ctx: Context, samples: int | None) -> np.ndarray:
    """A seeded subset of the evaluation samples (all when samples is None); whole sequences
    when a state is carried, so every chunk is judged with the state it would have in the app."""
    feeding = ctx.evaluation.feeding
    steps = feeding.steps if feeding is not None and feeding.carried else 1
    n = len(ctx.evaluation) // steps
    if samples is not None and steps > 1:
        samples = max(1, samples // steps)
    idx = (
        np.arange(n) if samples is None or samples >= n else np.sort(np.random.default_rng(0).choice(n, samples, False))
    )
    return (idx[:, None] * steps + np.arange(steps)).reshape(-1)


def evaluator(ctx: Context, mode: str, threads: int, samples: int | None = None):
    """path -> accuracy drop on the evaluation set (or a seeded subset of it), computed as the
    target's runtime computes it; the subset's FP32 metric is the baseline of its drops."""
    from exporter.measure import evaluate_outputs

    feeding = ctx.evaluation.feeding
    idx = subset_indices(ctx, samples)
    inputs = {k: v[idx] for k, v in ctx.evaluation.inputs.items()}
    labels = None if ctx.evaluation.labels is None else ctx.evaluation.labels[idx]
    reference = ctx.reference[0][idx]
    baseline = float(ctx.metric_fn(reference, labels, reference))

    def evaluate(path: Path) -> float:
        out = evaluate_outputs(path, inputs, threads, path.stem, mode, feeding)
        value = float(ctx.metric_fn(out[0], labels, reference))
        return accuracy_drop(baseline, value, ctx.higher_is_better)

    return evaluate
