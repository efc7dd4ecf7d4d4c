"""The `distill` step: the compressed student learns the teacher's outputs (and, for transformers,
optionally the hidden states of the teacher layers it kept) on data other than the evaluation set;
the losses and the trainer are distill.py."""

from __future__ import annotations

import dataclasses

from exporter.compress.measure import encoder
from exporter.compress.steps import State, StepHandler, StepResult, register_step
from exporter.errors import UsageError
from exporter.recipe_parts import DataSource
from exporter.recipe_steps import DistillStep

# where a step without `data:` trains, per model kind (None: the calibration set)
_DEFAULT_DATA = {"torch": None, "hf": DataSource(corpus="pydoc-topics", split="train")}


def _distill_data(state: State, step: DistillStep, where: str):
    from exporter.data import load_dataset

    ctx = state.ctx
    source = step.data if step.data is not None else _DEFAULT_DATA[state.kind]
    if source is None:
        return ctx.calibration, "data.calibration"
    tokenizer = ctx.model.hf.tokenizer if ctx.model.hf is not None else None
    return load_dataset(source, ctx.inputs, ctx.loaded, f"{where}.data", tokenizer), source.model_dump(
        exclude_none=True
    )


def _hidden_pairs(state: State) -> list[tuple]:
    """(student layer, teacher layer) pairs for the hidden-state loss: each kept layer with its origin."""
    from exporter.compress.encoder import find_encoder

    teacher_layers = list(find_encoder(state.ctx.model.module).encoder.layer)
    kept = state.kept_layers if state.kept_layers is not None else list(range(len(teacher_layers)))
    return list(zip(encoder(state).encoder.layer, [teacher_layers[i] for i in kept], strict=True))


@register_step(DistillStep)
class Distill(StepHandler):
    kind = "distill"

    def run(self, state: State, step: DistillStep, where: str) -> StepResult:
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
        pairs = _hidden_pairs(state) if step.hidden_states > 0 and state.kind == "hf" else []
        labels = data.labels if loss == "kd" else None
        result = distill(
            state.student, ctx.model.module, data.inputs, labels, ctx.inputs, step, loss, ctx.loaded.recipe.seed, pairs
        )
        return StepResult(
            {
                "loss": loss,
                "data": described,
                "data_sha256": data.digest,
                "labels": "given" if labels is not None else "teacher",
                **dataclasses.asdict(result),
            }
        )
