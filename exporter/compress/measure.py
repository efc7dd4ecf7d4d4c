"""Measuring the student in PyTorch: its costs (MACs, parameters) and its quality on the evaluation
set against the teacher, recorded before and after every step; and the input batches the steps
feed it, cut from the calibration set."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from exporter.compress.steps import State


def example(ctx) -> tuple:
    """One sample per input: what a forward pass needs to trace or count a model."""
    import torch

    return tuple(torch.from_numpy(ctx.calibration.inputs[s.name][:1].copy()) for s in ctx.inputs)


def timing_feed(ctx) -> dict[str, np.ndarray]:
    """One query in the recipe's shape from the evaluation data, for timing candidates in onnxruntime."""
    return {s.name: ctx.evaluation.inputs[s.name][: s.shape[0]] for s in ctx.inputs}


def calibration_batch(ctx, n: int = 64) -> tuple[tuple, np.ndarray | None]:
    import torch

    tensors = tuple(torch.from_numpy(ctx.calibration.inputs[s.name][:n].copy()) for s in ctx.inputs)
    labels = None if ctx.calibration.labels is None else ctx.calibration.labels[:n]
    return tensors, labels


def text_batches(ctx, n: int = 128, size: int = 32) -> list[tuple]:
    import torch

    n = min(n, len(ctx.calibration))
    return [
        tuple(torch.from_numpy(ctx.calibration.inputs[s.name][i : i + size].copy()) for s in ctx.inputs)
        for i in range(0, n, size)
    ]


def encoder(state: State):
    """The student's BERT-style encoder (transformers only; None for a PyTorch model)."""
    from exporter.compress.encoder import find_encoder

    return find_encoder(state.student) if state.kind == "hf" else None


def _torch_costs(state: State) -> tuple[int, int]:
    from exporter.compress.channels import costs

    return costs(state.student, example(state.ctx))


def _encoder_costs(state: State) -> tuple[int, int]:
    from exporter.compress.encoder import costs_of

    return costs_of(encoder(state), state.ctx.inputs[0].shape[1])


# per model kind: how its costs are counted, and what the MAC count covers
_COSTS = {"torch": (_torch_costs, "whole model"), "hf": (_encoder_costs, "encoder layers")}


def costs(state: State) -> tuple[int, int]:
    """(MACs, parameters) of the student."""
    return _COSTS[state.kind][0](state)


def quality(state: State) -> dict:
    """Params, MACs and the recipe's metric on the evaluation set against the teacher, in PyTorch."""
    from exporter.export import torch_reference
    from exporter.metrics import accuracy_drop

    ctx = state.ctx
    state.student.eval()
    out = torch_reference(state.student, ctx.evaluation.inputs, ctx.inputs)[0]
    value = float(ctx.metric_fn(out, ctx.evaluation.labels, ctx.reference[0]))
    macs, params = costs(state)
    return {
        "params": params,
        "macs": macs,
        "macs_basis": _COSTS[state.kind][1],
        "metric": round(value, 6),
        "drop": round(accuracy_drop(ctx.baseline_metric, value, ctx.higher_is_better), 6),
    }
