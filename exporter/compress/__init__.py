"""Compression stage: the recipe's ordered `compress:` steps turn the loaded model (the teacher)
into a smaller dense model (the student) that then goes through export, quantization and
benchmarking like any other; the teacher stays the build's `baseline` and its outputs the truth.

A registry of step functions (student, prune, lowrank, distill) over a shared state; each records what it did
(settings, costs and quality before and after, the pruning plan as data), and the whole result
is cached by a hash of its inputs.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from exporter import log
from exporter.compress import cache
from exporter.errors import UsageError
from exporter.recipe import DataSource, DistillStep, LowrankStep, PruneStep, StudentStep


@dataclass
class Compressed:
    """The student as a loaded model, and the record of how it was made (manifest `compression`)."""

    model: Any  # exporter.sources.LoadedModel
    record: dict


@dataclass
class _State:
    ctx: Any  # exporter.pipeline.Context (duck-typed: no import cycle)
    student: Any  # torch.nn.Module
    align: int
    latency: dict | None
    records: list[dict] = field(default_factory=list)
    kept_layers: list[int] | None = None  # teacher encoder layers the student still has (None: all)


def per_profile(recipe) -> bool:
    """A latency-budget prune depends on each profile's budget and threads; other steps do not."""
    return any(s.prune is not None and s.prune.goal.latency for s in recipe.compress)


def check_steps(ctx) -> None:
    """Refuse, before anything is computed, steps that cannot apply to this model."""
    r = ctx.loaded.recipe
    hf = ctx.model.kind == "hf"
    if r.compress and ctx.model.kind == "onnx":
        raise UsageError(
            "compression works on PyTorch or Hugging Face models, not on a given ONNX file",
            path=ctx.loaded.path,
            field="compress",
            fix="point model: at the PyTorch factory or the Hugging Face folder",
        )
    kinds = [item.kind for item in r.compress]
    if hf and "lowrank" in kinds and "prune" in kinds[kinds.index("lowrank") :]:
        raise UsageError(
            "a transformer cannot be pruned after it is factorised (head and neuron pruning needs whole projections)",
            path=ctx.loaded.path,
            field="compress",
            fix="put the prune step before the lowrank step",
        )
    for i, item in enumerate(r.compress):
        if item.student is not None:
            _check_student(ctx, item.student, f"compress[{i}].student", hf)
        step, where = item.prune, f"compress[{i}].prune"
        if step is None:
            continue
        allowed = ("l1", "l2", "activation") if hf else ("l1", "l2", "bn_scale", "taylor")
        if step.criterion is not None and step.criterion not in allowed:
            raise UsageError(
                f"criterion {step.criterion} does not apply to {'transformers' if hf else 'CNN channels'}",
                path=ctx.loaded.path,
                field=f"{where}.criterion",
                fix=f"use one of {', '.join(allowed)}",
            )
        if hf and step.goal.latency:
            raise UsageError(
                "a latency goal is available for PyTorch models; transformers prune to a MAC or parameter goal",
                path=ctx.loaded.path,
                field=f"{where}.goal",
                fix="use goal: {macs: 0.6} (the build still judges latency against every profile's budget)",
            )
        if not hf:
            names = dict(ctx.model.module.named_modules())
            unknown = [n for n in step.protect if n not in names]
            if unknown:
                raise UsageError(
                    f"protect names modules {unknown} that the model does not have",
                    path=ctx.loaded.path,
                    field=f"{where}.protect",
                    fix=f"use names from model.named_modules(), e.g. {', '.join(list(names)[1:4])}",
                )


def _check_student(ctx, step: StudentStep, where: str, hf: bool) -> None:
    if hf and step.factory is not None:
        raise UsageError(
            "a transformer student is made from the teacher's layers",
            path=ctx.loaded.path,
            field=f"{where}.factory",
            fix="use layers: [0, 2, 4] or depth: 3",
        )
    if not hf and step.factory is None:
        raise UsageError(
            "a PyTorch student needs its architecture",
            path=ctx.loaded.path,
            field=where,
            fix="give factory: module.py:build_student (a smaller nn.Module with the same inputs and outputs)",
        )
    if hf:
        from exporter.compress.encoder import find_encoder

        n = len(find_encoder(ctx.model.module).encoder.layer)
        layers = step.layers if step.layers is not None else []
        if any(not 0 <= i < n for i in layers) or len(set(layers)) != len(layers) or (step.depth or 1) > n:
            raise UsageError(
                f"student {step.model_dump(exclude_none=True)} for an encoder of {n} layers",
                path=ctx.loaded.path,
                field=where,
                fix=f"give distinct layer indices in 0..{n - 1}, or a depth of at most {n}",
            )


# --- measuring the student -------------------------------------------------------------------


def _example(ctx) -> tuple:
    import torch

    return tuple(torch.from_numpy(ctx.calibration.inputs[s.name][:1].copy()) for s in ctx.inputs)


def _encoder(state: _State):
    from exporter.compress.encoder import find_encoder

    return find_encoder(state.student) if state.ctx.model.kind == "hf" else None


def _costs(state: _State) -> tuple[int, int]:
    if state.ctx.model.kind == "hf":
        from exporter.compress.encoder import costs_of

        return costs_of(_encoder(state), state.ctx.inputs[0].shape[1])
    from exporter.compress.channels import costs

    return costs(state.student, _example(state.ctx))


def _quality(state: _State) -> dict:
    """Params, MACs and the recipe's metric on the evaluation set against the teacher, in PyTorch."""
    from exporter.export import torch_reference
    from exporter.metrics import accuracy_drop

    ctx = state.ctx
    state.student.eval()
    out = torch_reference(state.student, ctx.evaluation.inputs, ctx.inputs)[0]
    value = float(ctx.metric_fn(out, ctx.evaluation.labels, ctx.reference[0]))
    macs, params = _costs(state)
    return {
        "params": params,
        "macs": macs,
        "macs_basis": "encoder layers" if ctx.model.kind == "hf" else "whole model",
        "metric": round(value, 6),
        "drop": round(accuracy_drop(ctx.baseline_metric, value, ctx.higher_is_better), 6),
    }


# --- prune -----------------------------------------------------------------------------------


def _calibration_batch(ctx, n: int = 64) -> tuple[tuple, np.ndarray | None]:
    import torch

    tensors = tuple(torch.from_numpy(ctx.calibration.inputs[s.name][:n].copy()) for s in ctx.inputs)
    labels = None if ctx.calibration.labels is None else ctx.calibration.labels[:n]
    return tensors, labels


def _latency_check(state: _State, where: str) -> Callable:
    """done(module, entry) for a latency goal: export the candidate, time it in onnxruntime with
    the profile's threads, stop once the budget percentile is within 90% of the budget (headroom
    for the noise between this loop and the final interleaved benchmark)."""
    import tempfile

    from exporter.export import _export_torch
    from exporter.measure import time_interleaved
    from exporter.recipe import BenchSection

    ctx, target = state.ctx, state.latency
    settings = BenchSection(warmup_runs=5, min_runs=60, min_seconds=0.3, max_seconds=3.0)
    feed = {s.name: ctx.evaluation.inputs[s.name][: s.shape[0]] for s in ctx.inputs}

    def done(module, entry: dict) -> bool:
        with tempfile.TemporaryDirectory(prefix="edgex-prune-") as tmp:
            path = Path(tmp) / "candidate.onnx"
            module.eval()
            _export_torch(module, ctx.inputs, ctx.loaded.recipe.outputs, 18, False, path)
            stats = time_interleaved({"candidate": path}, feed, target["threads"], settings)["candidate"]
        entry["latency_ms"] = round(stats.percentile(target["percentile"]), 4)
        return entry["latency_ms"] <= 0.9 * target["budget_ms"]

    return done


def _prune_torch(state: _State, step: PruneStep, where: str) -> dict:
    import torch
    import torch.nn.functional as F

    from exporter.compress.channels import prune_channels

    ctx = state.ctx
    criterion = step.criterion or "l2"
    step = step.model_copy(update={"criterion": criterion})
    example = _example(ctx)
    base_macs, base_params = _costs(state)
    goal = step.goal
    if goal.latency:
        done = _latency_check(state, where)
    elif goal.macs is not None:
        done = lambda _m, e: e["macs"] <= goal.macs * base_macs  # noqa: E731
    else:
        done = lambda _m, e: e["params"] <= goal.params * base_params  # noqa: E731
    batch, labels = _calibration_batch(ctx)
    teacher = ctx.model.module

    def loss_fn(module):
        with torch.no_grad():
            target = torch.as_tensor(labels) if labels is not None else teacher(*batch).argmax(-1)
        return F.cross_entropy(module(*batch), target.long())

    drop_fn = None
    if step.accuracy_floor is not None:
        from exporter.metrics import accuracy_drop

        with torch.no_grad():
            ref = teacher(*batch).numpy()
        base = float(ctx.metric_fn(ref, labels, ref))

        def drop_fn(module):
            module.eval()
            with torch.no_grad():
                out = module(*batch).numpy()
            return accuracy_drop(base, float(ctx.metric_fn(out, labels, ref)), ctx.higher_is_better)

    result = prune_channels(
        state.student,
        example,
        step,
        state.align,
        done,
        loss_fn=loss_fn,
        drop_fn=drop_fn,
        field_name=where,
        where=str(ctx.loaded.path),
    )
    state.student = result.module
    return {
        "engine": "torch-pruning (dependency graph)",
        "criterion": criterion,
        "history": result.history,
        "trace": result.trace,
        "protected": result.protected,
        "reached": result.reached,
        "stopped_by": result.stopped_by,
    }


def _prune_encoder(state: _State, step: PruneStep, where: str) -> dict:
    from exporter.compress.encoder import activation_scores, apply_plan, fraction_for_macs, plan_pruning

    ctx = state.ctx
    bert = _encoder(state)
    if bert is None:
        raise UsageError(
            "structured pruning of this transformer is not supported (no BERT-style encoder.layer found)",
            path=ctx.loaded.path,
            field=where,
            fix="use a BERT-style encoder (BERT, MiniLM, RoBERTa...) or remove the prune step",
        )
    criterion = step.criterion or "activation"
    step = step.model_copy(update={"criterion": criterion})
    scores = None
    if criterion == "activation":
        scores = activation_scores(state.student, bert, _text_batches(ctx))
    seq = ctx.inputs[0].shape[1]
    if step.goal.macs is not None:
        fraction = fraction_for_macs(bert, step, step.goal.macs, state.align, seq, scores)
    else:  # parameters: the embedding table does not shrink, so solve on the encoder's own share
        fraction = _fraction_for_params(bert, step, step.goal.params, state.align, scores)
    plan = plan_pruning(bert, step, fraction, state.align, scores)
    apply_plan(bert, plan)
    info = {"engine": "transformers prune_heads / prune_linear_layer", "criterion": criterion, "plan": plan}
    if step.reconstruct:
        from exporter.compress.encoder import find_encoder, reconstruct

        teacher = ctx.model.module
        mask_index = [s.name for s in ctx.inputs].index("attention_mask")
        info["reconstruction_error"] = reconstruct(
            state.student, bert, teacher, find_encoder(teacher), plan, _text_batches(ctx), mask_index
        )
    return info


def _text_batches(ctx, n: int = 128, size: int = 32) -> list[tuple]:
    import torch

    n = min(n, len(ctx.calibration))
    return [
        tuple(torch.from_numpy(ctx.calibration.inputs[s.name][i : i + size].copy()) for s in ctx.inputs)
        for i in range(0, n, size)
    ]


def _fraction_for_params(bert, step: PruneStep, keep: float, align: int, scores) -> float:
    from exporter.compress.encoder import apply_plan, plan_pruning

    base = sum(p.numel() for p in bert.parameters())
    lo, hi = 0.0, step.max_layer_ratio
    for _ in range(14):
        mid = (lo + hi) / 2
        trial = copy.deepcopy(bert)
        apply_plan(trial, plan_pruning(trial, step, mid, align, scores))
        if sum(p.numel() for p in trial.parameters()) <= keep * base:
            hi = mid
        else:
            lo = mid
    return hi


def run_prune(state: _State, step: PruneStep, where: str) -> dict:
    info = _prune_encoder(state, step, where) if state.ctx.model.kind == "hf" else _prune_torch(state, step, where)
    info["align"] = state.align
    info["goal"] = step.goal.model_dump(exclude_none=True)
    macs, params = _costs(state)
    info["reached_goal"] = info.get("reached", True)
    if step.goal.macs is not None:
        info["reached_goal"] = macs <= step.goal.macs * state.records[0]["macs"] * 1.0001
    if step.goal.params is not None:
        info["reached_goal"] = params <= step.goal.params * state.records[0]["params"] * 1.0001
    if not info["reached_goal"]:
        log.info(f"  prune goal {info['goal']} not reached (stopped by {info.get('stopped_by', 'max_layer_ratio')})")
    return info


# --- distill ---------------------------------------------------------------------------------


def _distill_data(state: _State, step: DistillStep, where: str):
    from exporter.data import load_dataset

    ctx = state.ctx
    source = step.data
    if source is None and ctx.model.kind == "hf":
        source = DataSource(corpus="pydoc-topics", split="train")
    if source is None:
        return ctx.calibration, "data.calibration"
    tokenizer = ctx.model.hf.tokenizer if ctx.model.hf is not None else None
    return load_dataset(source, ctx.inputs, ctx.loaded, f"{where}.data", tokenizer), source.model_dump(
        exclude_none=True
    )


def run_distill(state: _State, step: DistillStep, where: str) -> dict:
    from exporter.compress.distill import distill, loss_kind_for

    ctx = state.ctx
    data, described = _distill_data(state, step, where)
    if ctx.evaluation.digest == data.digest:
        raise UsageError(
            "the distillation data is the evaluation set",
            path=ctx.loaded.path,
            field=f"{where}.data",
            fix="train on other data (the calibration set, a train split) so the evaluation stays held out",
        )
    loss = loss_kind_for(step.loss, ctx.metric_name)
    pairs = []
    if step.hidden_states > 0 and ctx.model.kind == "hf":
        from exporter.compress.encoder import find_encoder

        teacher_layers = list(find_encoder(ctx.model.module).encoder.layer)
        kept = state.kept_layers if state.kept_layers is not None else list(range(len(teacher_layers)))
        pairs = list(zip(_encoder(state).encoder.layer, [teacher_layers[i] for i in kept], strict=True))
    labels = data.labels if loss == "kd" else None
    result = distill(
        state.student, ctx.model.module, data.inputs, labels, ctx.inputs, step, loss, ctx.loaded.recipe.seed, pairs
    )
    return {
        "loss": loss,
        "data": described,
        "data_sha256": data.digest,
        "labels": "given" if labels is not None else "teacher",
        **dataclasses.asdict(result),
    }


# --- student -------------------------------------------------------------------------------


def student_layers(step: StudentStep, n: int) -> list[int]:
    """The teacher layers a shallower student keeps: as given, or `depth` evenly spaced from the
    first to the last (the last layer's output is what the embedding pools)."""
    if step.layers is not None:
        return sorted(step.layers)
    if step.depth == 1:
        return [n - 1]
    return sorted({round(i * (n - 1) / (step.depth - 1)) for i in range(step.depth)})


def _build_student(ctx, step: StudentStep, where: str):
    from exporter.callables import call_user

    return call_user(
        step.factory,
        ctx.loaded.path.parent,
        ctx.loaded.path,
        f"{where}.factory",
        "student factory",
        "fix the function so it returns an nn.Module",
    )


def run_student(state: _State, step: StudentStep, where: str) -> dict:
    ctx = state.ctx
    if ctx.model.kind == "hf":
        from exporter.compress.encoder import apply_plan

        bert = _encoder(state)
        n = len(bert.encoder.layer)
        keep = student_layers(step, n)
        drop = [i for i in range(n) if i not in keep]
        apply_plan(bert, {"drop_layers": drop, "prune_heads": {}, "keep_ffn": {}})
        return {"kept_layers": keep, "dropped_layers": drop, "init": "teacher layers"}
    import torch
    from torch import nn

    student = _build_student(ctx, step, where)
    if not isinstance(student, nn.Module):
        raise UsageError(
            f"the student factory returned {type(student).__name__}, not an nn.Module",
            path=ctx.loaded.path,
            field=f"{where}.factory",
            fix="return a torch.nn.Module",
        )
    example = _example(ctx)
    with torch.no_grad():
        want, got = ctx.model.module.eval()(*example), student.eval()(*example)
    if tuple(got.shape) != tuple(want.shape):
        raise UsageError(
            f"the student's output shape {tuple(got.shape)} differs from the teacher's {tuple(want.shape)}",
            path=ctx.loaded.path,
            field=f"{where}.factory",
            fix="build the student with the teacher's inputs and outputs",
        )
    state.student = student
    return {"init": "factory", "factory": step.factory}


# --- lowrank -------------------------------------------------------------------------------


def run_lowrank(state: _State, step: LowrankStep, where: str) -> dict:
    from exporter.compress import lowrank

    ctx = state.ctx
    hf = ctx.model.kind == "hf"
    root = _encoder(state) if hf else state.student
    align = step.align or state.align
    never: set[str] = set()
    if not hf:
        from exporter.compress.channels import last_layer

        last = last_layer(state.student, _example(ctx))
        never = {last} if last else set()
    include = step.layers or (["encoder.layer.*"] if hf else [])
    layers = lowrank.eligible(root, include, step.protect, never, step.conv)
    if not layers:
        raise UsageError(
            "no layer can be factorised (no Linear or ungrouped Conv2d matches)",
            path=ctx.loaded.path,
            field=f"{where}.layers",
            fix="check the module-name patterns against model.named_modules()",
        )
    kinds = {n: lowrank._kind(m, step.conv) for n, m in layers.items()}
    grams = None
    if step.criterion == "activation":
        if hf:
            batches = _text_batches(ctx)
            mask_index = [s.name for s in ctx.inputs].index("attention_mask")
        else:
            batches, mask_index = [_calibration_batch(ctx, 256)[0]], None
        log.info(f"  lowrank: input statistics of {len(layers)} layers on the calibration data")
        grams = lowrank._gram_inputs(root, layers, kinds, batches, state.student, mask_index)
    positions = lowrank.output_positions(root, layers, state.student, _example(ctx))
    cands = lowrank.candidates(root, layers, step.conv, positions, grams)
    base_macs, _ = _costs(state)
    ranks, energy = lowrank.choose_ranks(cands, align, step.goal.energy, step.goal.macs, base_macs)
    plan = {
        "layers": {
            n: {"kind": cands[n].kind, "rank": r, "shape": [cands[n].m, cands[n].n], "bound": round(cands[n].bound, 1)}
            for n, r in sorted(ranks.items())
        },
        "energy": round(energy, 6),
        "align": align,
        "root": "encoder" if hf else "model",
    }
    lowrank.apply(root, plan, grams)
    kept = sorted(n for n in layers if n not in ranks)
    log.info(f"  lowrank: {len(ranks)} of {len(layers)} layers factorised at energy {energy:.4f}")
    return {
        "criterion": step.criterion,
        "whitened": sorted(n for n in ranks if grams is not None and n in grams),
        "plan": plan,
        "kept_dense": kept,  # not cheaper at the rank their energy needs: left as they were
        "goal": step.goal.model_dump(exclude_none=True),
    }


STEPS: dict[str, Callable[[_State, Any, str], dict]] = {
    "student": run_student,
    "prune": run_prune,
    "lowrank": run_lowrank,
    "distill": run_distill,
}


# --- the stage -------------------------------------------------------------------------------


def _teacher_digest(ctx) -> str:
    if ctx.model.weights_sha256:
        return ctx.model.weights_sha256
    h = hashlib.sha256()
    for name, tensor in sorted(ctx.model.module.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().contiguous().numpy().tobytes())
    return h.hexdigest()


def _key(ctx, align: int, latency: dict | None) -> str:
    from exporter.versions import tool_versions

    versions = tool_versions()
    r = ctx.loaded.recipe
    facts = {
        "teacher": _teacher_digest(ctx),
        "model": r.model.model_dump(),
        "inputs": [i.model_dump() for i in ctx.inputs],
        "steps": [{s.kind: s.settings.model_dump()} for s in r.compress],
        "calibration": ctx.calibration.digest,
        "evaluation": ctx.evaluation.digest,
        "metric": ctx.metric_name,
        "seed": r.seed,
        "align": align,
        "latency": latency,
        "versions": {k: versions.get(k) for k in ("edgex", "torch", "transformers", "sentence-transformers")},
        "torch_pruning": _version("torch-pruning"),
    }
    code = [_code_digest(ctx, s.student.factory) for s in r.compress if s.student and s.student.factory]
    if code:  # only when a student is user code, so keys of other recipes stay as they were
        facts["student_code"] = code
    return cache.cache_key(facts)


def _code_digest(ctx, spec: str) -> str:
    """A user-supplied student's source file bytes: an edited architecture must not hit an old entry."""
    from exporter.digest import sha256_file

    module = spec.rsplit(":", 1)[0]
    path = ctx.loaded.resolve(module)
    return sha256_file(path) if module.endswith(".py") and path.is_file() else module


def _version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def compress(ctx, align: int, latency: dict | None = None) -> Compressed:
    """Run (or fetch from the cache) the recipe's compression steps on ctx.model."""
    r = ctx.loaded.recipe
    key = _key(ctx, align, latency)
    hit = cache.lookup(key)
    if hit is not None:
        log.info(f"[{r.name}] compression: cached result {key[:12]} (no retraining)")
        record = json.loads((hit / "record.json").read_text(encoding="utf-8"))
        record["cache"] = {"key": key, "hit": True}
        return Compressed(model=_restore(ctx, hit, record), record=record)
    log.info(f"[{r.name}] compression: {' -> '.join(s.kind for s in r.compress)} (alignment {align})")
    state = _State(ctx=ctx, student=copy.deepcopy(ctx.model.module), align=align, latency=latency)
    before = _quality(state)
    state.records.append(before)
    steps = []
    for i, item in enumerate(r.compress):
        where = f"compress[{i}].{item.kind}"
        log.info(f"[{r.name}] {where}")
        info = STEPS[item.kind](state, item.settings, where)
        dropped = info.get("dropped_layers") or info.get("plan", {}).get("drop_layers") or []
        if dropped and ctx.model.kind == "hf":
            current = state.kept_layers or list(range(len(dropped) + len(_encoder(state).encoder.layer)))
            state.kept_layers = [t for i, t in enumerate(current) if i not in set(dropped)]
        after = _quality(state)
        state.records.append(after)
        log.info(
            f"[{r.name}] {where}: {ctx.metric_name} {after['metric']:.4f} (drop {after['drop']:.4f}), "
            f"{100 * after['macs'] / before['macs']:.1f}% MACs, {100 * after['params'] / before['params']:.1f}% params"
        )
        steps.append({"step": item.kind, "settings": item.settings.model_dump(mode="json"), **info, "after": after})
    record = {"teacher": before, "student": state.records[-1], "steps": steps, "align": align, "latency": latency}
    with cache.storing(key) as entry:
        _save(ctx, state.student, entry, record)
        (entry / "record.json").write_text(json.dumps(record, indent=1, sort_keys=True), encoding="utf-8")
    record["cache"] = {"key": key, "hit": False}
    # Always reload from the entry, so a fresh and a cached build ship the very same model.
    return Compressed(model=_restore(ctx, cache.lookup(key), record), record=record)


def _lowrank_plan(record: dict) -> dict | None:
    return next((s["plan"] for s in record["steps"] if s["step"] == "lowrank"), None)


def _save(ctx, student, entry: Path, record: dict) -> None:
    """Write the student into the cache entry: safetensors weights (+ the pruning history and
    factorisation plan in the record, replayed to rebuild the architecture), or a whole
    transformers folder. A factorised transformer's folder holds its dense equivalent (the
    factors multiplied back: a config knows no ranks) and the factors themselves beside it."""
    from safetensors.torch import save_file

    if ctx.model.kind == "hf":
        from sentence_transformers import SentenceTransformer

        from exporter.compress.encoder import find_encoder

        if _lowrank_plan(record) is not None:
            from exporter.compress.lowrank import merge

            tensors = {k: v.detach().contiguous() for k, v in find_encoder(student).state_dict().items()}
            save_file(tensors, str(entry / "lowrank.safetensors"))
            student = copy.deepcopy(student)
            merge(find_encoder(student))
        inner = student.model
        target = entry / "model"
        if isinstance(inner, SentenceTransformer):  # modules.json, pooling, normalisation, tokenizer
            inner.save(str(target), create_model_card=False)
        else:
            inner.save_pretrained(str(target), safe_serialization=True)
            ctx.model.hf.tokenizer.save_pretrained(str(target))
        return
    state = {k: v.detach().contiguous() for k, v in student.state_dict().items()}
    save_file(state, str(entry / "student.safetensors"))


def _restore(ctx, entry: Path, record: dict):
    from safetensors.torch import load_file

    from exporter.compress import lowrank
    from exporter.digest import sha256_file
    from exporter.sources import LoadedModel

    plan = _lowrank_plan(record)
    if ctx.model.kind == "hf":
        from exporter.compress.encoder import find_encoder
        from exporter.hf.source import load_hf

        def refactor(model) -> None:
            bert = find_encoder(model)
            lowrank.replay(bert, plan)
            bert.load_state_dict(load_file(str(entry / "lowrank.safetensors")), strict=True)

        spec = ctx.loaded.recipe.model.model_copy(update={"folder": str(entry / "model"), "folder_from": None})
        return load_hf(spec, ctx.loaded, transform=refactor if plan is not None else None)
    from exporter.compress.channels import replay

    student = copy.deepcopy(ctx.model.module)
    for i, step in enumerate(record["steps"]):
        if step["step"] == "student":
            student = _build_student(ctx, ctx.loaded.recipe.compress[i].student, f"compress[{i}].student")
        elif step["step"] == "prune":
            replay(student, _example(ctx), step["history"])
        elif step["step"] == "lowrank":
            lowrank.replay(student, step["plan"])
    student.load_state_dict(load_file(str(entry / "student.safetensors")), strict=True)
    return LoadedModel(kind="torch", module=student.eval(), weights_sha256=sha256_file(entry / "student.safetensors"))
