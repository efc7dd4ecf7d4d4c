"""The `lowrank` step: layers replaced by two thinner ones from a (whitened) truncated SVD where that
is cheaper (the factorisation itself is lowrank.py). What differs by model kind is only the scope:
which module is factorised, which layers are eligible by default, and the data the whitening sees."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from exporter import log
from exporter.compress.measure import calibration_batch, costs, encoder, example, text_batches
from exporter.compress.steps import State, StepHandler, StepResult, register_step
from exporter.errors import UsageError
from exporter.recipe_steps import LowrankStep


@dataclass
class _Scope:
    root: object  # the module whose named layers are factorised
    name: str  # "model" or "encoder", recorded in the plan
    never: set[str]  # layers never factorised whatever the recipe says
    default_layers: list[str]  # the eligible patterns when the recipe names none
    batches: Callable[[], tuple[list[tuple], int | None]]  # whitening data and the mask's input index


def _torch_scope(state: State) -> _Scope:
    """The whole model, except the last layer (its output width is what the user's code reads)."""
    from exporter.compress.channels import last_layer

    last = last_layer(state.student, example(state.ctx))
    return _Scope(
        state.student, "model", {last} if last else set(), [], lambda: ([calibration_batch(state.ctx, 256)[0]], None)
    )


def _encoder_scope(state: State) -> _Scope:
    """The encoder's layers, whitened on real tokens only (padding masked out)."""
    ctx = state.ctx

    def batches() -> tuple[list[tuple], int | None]:
        return text_batches(ctx), [s.name for s in ctx.inputs].index("attention_mask")

    return _Scope(encoder(state), "encoder", set(), ["encoder.layer.*"], batches)


_SCOPES = {"torch": _torch_scope, "hf": _encoder_scope}


@register_step(LowrankStep)
class Lowrank(StepHandler):
    kind = "lowrank"

    def run(self, state: State, step: LowrankStep, where: str) -> StepResult:
        from exporter.compress import lowrank

        ctx = state.ctx
        scope = _SCOPES[state.kind](state)
        root = scope.root
        align = step.align or state.align
        layers = lowrank.eligible(root, step.layers or scope.default_layers, step.protect, scope.never, step.conv)
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
            batches, mask_index = scope.batches()
            log.info(f"  lowrank: input statistics of {len(layers)} layers on the calibration data")
            grams = lowrank._gram_inputs(root, layers, kinds, batches, state.student, mask_index)
        positions = lowrank.output_positions(root, layers, state.student, example(ctx))
        cands = lowrank.candidates(root, layers, step.conv, positions, grams)
        base_macs, _ = costs(state)
        ranks, energy = lowrank.choose_ranks(cands, align, step.goal.energy, step.goal.macs, base_macs)
        plan = {
            "layers": {
                n: {
                    "kind": cands[n].kind,
                    "rank": r,
                    "shape": [cands[n].m, cands[n].n],
                    "bound": round(cands[n].bound, 1),
                }
                for n, r in sorted(ranks.items())
            },
            "energy": round(energy, 6),
            "align": align,
            "root": scope.name,
        }
        lowrank.apply(root, plan, grams)
        kept = sorted(n for n in layers if n not in ranks)
        log.info(f"  lowrank: {len(ranks)} of {len(layers)} layers factorised at energy {energy:.4f}")
        return StepResult(
            {
                "criterion": step.criterion,
                "whitened": sorted(n for n in ranks if grams is not None and n in grams),
                "plan": plan,
                "kept_dense": kept,  # not cheaper at the rank their energy needs: left as they were
                "goal": step.goal.model_dump(exclude_none=True),
            }
        )

    def replay(self, ctx, student, recorded: dict, index: int):
        from exporter.compress import lowrank

        lowrank.replay(student, recorded["plan"])
        return student
