"""Where a student lives between builds: the content-addressed cache key of a compression (its
facts must stay byte-for-byte what they were, or every cached entry is orphaned), and the student
saved into an entry and rebuilt from it. Per model kind, one save and one restore."""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any

from exporter.compress import cache
from exporter.compress.steps import handler_for


def _teacher_digest(ctx) -> str:
    if ctx.model.weights_sha256:
        return ctx.model.weights_sha256
    h = hashlib.sha256()
    for name, tensor in sorted(ctx.model.module.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().contiguous().numpy().tobytes())
    return h.hexdigest()


def _version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def key(ctx, align: int, latency: dict | None) -> str:
    """The compression's cache key: everything its result depends on."""
    from exporter.versions import tool_versions

    versions = tool_versions()
    r = ctx.loaded.recipe
    facts: dict[str, Any] = {
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
    if any(s.prune is not None and isinstance(s.prune.goal.latency, float) for s in r.compress):
        from exporter.versions import host_facts

        # a latency-fraction plan is priced by onnxruntime timings of optimum exports on this host
        facts["latency_priced_on"] = {
            "host": host_facts(),
            "versions": {k: versions.get(k) for k in ("onnxruntime", "optimum", "optimum-onnx")},
        }
    for s in r.compress:  # the handlers' own facts (a user student's code), listed in step order
        for name, value in handler_for(s.settings).key(ctx, s.settings).items():
            facts.setdefault(name, []).append(value)
    return cache.cache_key(facts)


def lowrank_plan(record: dict) -> dict | None:
    return next((s["plan"] for s in record["steps"] if s["step"] == "lowrank"), None)


def _save_torch(ctx, student, entry: Path, record: dict) -> None:
    """Safetensors weights only: the architecture is rebuilt by replaying the steps' records."""
    from safetensors.torch import save_file

    state = {k: v.detach().contiguous() for k, v in student.state_dict().items()}
    save_file(state, str(entry / "student.safetensors"))


def _save_hf(ctx, student, entry: Path, record: dict) -> None:
    """A whole transformers folder. A factorised transformer's folder holds its dense equivalent
    (the factors multiplied back: a config knows no ranks) and the factors themselves beside it."""
    from safetensors.torch import save_file
    from sentence_transformers import SentenceTransformer

    from exporter.compress.encoder import find_encoder

    if lowrank_plan(record) is not None:
        from exporter.compress.lowrank import merge

        tensors = {k: v.detach().contiguous() for k, v in find_encoder(student).state_dict().items()}
        save_file(tensors, str(entry / "lowrank.safetensors"))
        student = copy.deepcopy(student)
        merge(find_encoder(student))
    sizes = ffn_sizes(find_encoder(student))
    if len(set(sizes)) > 1:
        (entry / "ffn_sizes.json").write_text(json.dumps(sizes), encoding="utf-8")
        student = copy.deepcopy(student)
        pad_ffn(find_encoder(student), max(sizes))
    inner = student.model
    target = entry / "model"
    if isinstance(inner, SentenceTransformer):  # modules.json, pooling, normalisation, tokenizer
        inner.save(str(target), create_model_card=False)
    else:
        inner.save_pretrained(str(target), safe_serialization=True)
        ctx.model.hf.tokenizer.save_pretrained(str(target))


def _restore_torch(ctx, entry: Path, record: dict):
    """The teacher's architecture with each step replayed in order, then the saved weights."""
    from safetensors.torch import load_file

    from exporter.digest import sha256_file
    from exporter.loaded_model import LoadedModel

    student = copy.deepcopy(ctx.model.module)
    for i, (item, recorded) in enumerate(zip(ctx.loaded.recipe.compress, record["steps"], strict=True)):
        student = handler_for(item.settings).replay(ctx, student, recorded, i)
    student.load_state_dict(load_file(str(entry / "student.safetensors")), strict=True)
    return LoadedModel(kind="torch", module=student.eval(), weights_sha256=sha256_file(entry / "student.safetensors"))


def _restore_hf(ctx, entry: Path, record: dict):
    """The saved folder through the `hf` source, re-factorised on load when a lowrank step ran."""
    from safetensors.torch import load_file

    from exporter.compress import lowrank
    from exporter.compress.encoder import find_encoder
    from exporter.hf.source import load_hf

    plan = lowrank_plan(record)
    sizes_file = entry / "ffn_sizes.json"
    sizes = json.loads(sizes_file.read_text(encoding="utf-8")) if sizes_file.is_file() else None

    def rebuild(model) -> None:
        bert = find_encoder(model)
        if sizes is not None:
            unpad_ffn(bert, sizes)
        if plan is not None:
            lowrank.replay(bert, plan)
            bert.load_state_dict(load_file(str(entry / "lowrank.safetensors")), strict=True)

    spec = ctx.loaded.recipe.model.model_copy(update={"folder": str(entry / "model"), "folder_from": None})
    return load_hf(spec, ctx.loaded, transform=rebuild if plan is not None or sizes is not None else None)


def ffn_sizes(bert) -> list[int]:
    return [layer.intermediate.dense.out_features for layer in bert.encoder.layer]


def pad_ffn(bert, width: int) -> None:
    """Widen every layer's feed-forward block to `width` with zero neurons, which change no output
    (a zero row and bias give GELU(0) = 0, times a zero column): the saved folder then has the one
    `intermediate_size` config.json can hold, and unpad_ffn cuts it back on load."""
    import torch
    from torch import nn

    for layer in bert.encoder.layer:
        w_in, w_out = layer.intermediate.dense, layer.output.dense
        extra = width - w_in.out_features
        if extra == 0:
            continue
        wide_in = nn.Linear(w_in.in_features, width)
        wide_out = nn.Linear(width, w_out.out_features)
        with torch.no_grad():
            wide_in.weight.copy_(torch.cat([w_in.weight, w_in.weight.new_zeros(extra, w_in.in_features)]))
            wide_in.bias.copy_(torch.cat([w_in.bias, w_in.bias.new_zeros(extra)]))
            wide_out.weight.copy_(torch.cat([w_out.weight, w_out.weight.new_zeros(w_out.out_features, extra)], dim=1))
            wide_out.bias.copy_(w_out.bias)
        layer.intermediate.dense, layer.output.dense = wide_in, wide_out
    bert.config.intermediate_size = width


def unpad_ffn(bert, sizes: list[int]) -> None:
    import torch
    from transformers.pytorch_utils import prune_linear_layer

    for layer, size in zip(bert.encoder.layer, sizes, strict=True):
        index = torch.arange(size)
        layer.intermediate.dense = prune_linear_layer(layer.intermediate.dense, index, dim=0)
        layer.output.dense = prune_linear_layer(layer.output.dense, index, dim=1)


_KINDS = {"torch": (_save_torch, _restore_torch), "hf": (_save_hf, _restore_hf)}


def save(ctx, student, entry: Path, record: dict) -> None:
    """Write the student into the cache entry."""
    _KINDS[ctx.model.kind][0](ctx, student, entry, record)


def restore(ctx, entry: Path, record: dict) -> Any:
    """The student of a cache entry as an exporter.sources.LoadedModel."""
    return _KINDS[ctx.model.kind][1](ctx, entry, record)
