"""The `student` step: a shallower model to distill into. Transformers keep some of the teacher's
encoder layers (their initialisation); PyTorch students are the user's architecture, built by
their factory, whose source bytes enter the cache key."""

from __future__ import annotations

from typing import Any

from exporter.compress.measure import encoder, example
from exporter.compress.steps import State, StepHandler, StepResult, register_step
from exporter.errors import UsageError
from exporter.recipe_steps import StudentStep


def student_layers(step: StudentStep, n: int) -> list[int]:
    """The teacher layers a shallower student keeps: as given, or `depth` evenly spaced from the
    first to the last (the last layer's output is what the embedding pools)."""
    if step.layers is not None:
        return sorted(step.layers)
    if step.depth == 1:
        return [n - 1]
    return sorted({round(i * (n - 1) / (step.depth - 1)) for i in range(step.depth)})


def build_student(ctx, step: StudentStep, where: str):
    from exporter.callables import call_user

    return call_user(
        step.factory,
        ctx.loaded.path.parent,
        ctx.loaded.path,
        f"{where}.factory",
        "student factory",
        "fix the function so it returns an nn.Module",
    )


def _code_digest(ctx, spec: str) -> str:
    """A user-supplied student's source file bytes: an edited architecture must not hit an old entry."""
    from exporter.digest import sha256_file

    module = spec.rsplit(":", 1)[0]
    path = ctx.loaded.resolve(module)
    return sha256_file(path) if module.endswith(".py") and path.is_file() else module


@register_step(StudentStep)
class Student(StepHandler):
    kind = "student"

    def requires(self, ctx, step: StudentStep, where: str) -> None:
        hf = ctx.model.kind == "hf"
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

    def key(self, ctx, step: StudentStep) -> dict[str, Any]:
        return {"student_code": _code_digest(ctx, step.factory)} if step.factory else {}

    def run_hf(self, state: State, step: StudentStep, where: str) -> StepResult:
        from exporter.compress.encoder import apply_plan

        bert = encoder(state)
        n = len(bert.encoder.layer)
        keep = student_layers(step, n)
        drop = [i for i in range(n) if i not in keep]
        apply_plan(bert, {"drop_layers": drop, "prune_heads": {}, "keep_ffn": {}})
        return StepResult({"kept_layers": keep, "dropped_layers": drop, "init": "teacher layers"}, drop)

    def run_torch(self, state: State, step: StudentStep, where: str) -> StepResult:
        import torch
        from torch import nn

        ctx = state.ctx
        student = build_student(ctx, step, where)
        if not isinstance(student, nn.Module):
            raise UsageError(
                f"the student factory returned {type(student).__name__}, not an nn.Module",
                path=ctx.loaded.path,
                field=f"{where}.factory",
                fix="return a torch.nn.Module",
            )
        inputs = example(ctx)
        with torch.no_grad():
            want, got = ctx.model.module.eval()(*inputs), student.eval()(*inputs)
        if tuple(got.shape) != tuple(want.shape):
            raise UsageError(
                f"the student's output shape {tuple(got.shape)} differs from the teacher's {tuple(want.shape)}",
                path=ctx.loaded.path,
                field=f"{where}.factory",
                fix="build the student with the teacher's inputs and outputs",
            )
        state.student = student
        return StepResult({"init": "factory", "factory": step.factory})

    def replay(self, ctx, student, recorded: dict, index: int):
        return build_student(ctx, ctx.loaded.recipe.compress[index].student, f"compress[{index}].student")
