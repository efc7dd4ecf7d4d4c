"""Checks of the recipe's compress steps against the loaded model, before anything is computed: the
model must be one the steps can change, the steps must combine on it, and each step's handler
refuses what it cannot do (its `requires`). The order alone is checked when the recipe loads."""

from __future__ import annotations

from exporter.compress.steps import handler_for
from exporter.errors import UsageError


def check_steps(ctx) -> None:
    """Refuse, before anything is computed, steps that cannot apply to this model."""
    r = ctx.loaded.recipe
    if r.compress and ctx.model.kind == "onnx":
        raise UsageError(
            "compression works on PyTorch or Hugging Face models, not on a given ONNX file",
            path=ctx.loaded.path,
            field="compress",
            fix="point model: at the PyTorch factory or the Hugging Face folder",
        )
    kinds = [item.kind for item in r.compress]
    if ctx.model.kind == "hf" and "lowrank" in kinds and "prune" in kinds[kinds.index("lowrank") :]:
        raise UsageError(
            "a transformer cannot be pruned after it is factorised (head and neuron pruning needs whole projections)",
            path=ctx.loaded.path,
            field="compress",
            fix="put the prune step before the lowrank step",
        )
    for i, item in enumerate(r.compress):
        handler_for(item.settings).requires(ctx, item.settings, f"compress[{i}].{item.kind}")
