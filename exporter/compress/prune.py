"""The `prune` step: structured pruning that keeps the model dense. CNN channels go through
Torch-Pruning's dependency graph (channels.py) towards a MAC, parameter or latency goal;
BERT-style encoders lose heads, FFN neurons and layers (encoder.py) to a MAC or parameter goal,
or with the Fisher allocation (fisher.py) to a latency fraction (latency_table.py)."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path

from exporter import log
from exporter.compress.measure import calibration_batch, costs, encoder, example, text_batches, timing_feed
from exporter.compress.steps import State, StepHandler, StepResult, register_step
from exporter.errors import UsageError
from exporter.recipe_steps import PruneStep

CRITERIA = {"hf": ("l1", "l2", "activation", "fisher"), "torch": ("l1", "l2", "bn_scale", "taylor")}


def _latency_check(state: State, where: str) -> Callable:
    """done(module, entry) for a latency goal: export the candidate, time it in onnxruntime with
    the profile's threads, stop once the budget percentile is within 90% of the budget (headroom
    for the noise between this loop and the final interleaved benchmark)."""
    import tempfile

    from exporter.export import _export_torch
    from exporter.measure import time_interleaved
    from exporter.recipe import BenchSection

    ctx, target = state.ctx, state.latency
    settings = BenchSection(warmup_runs=5, min_runs=60, min_seconds=0.3, max_seconds=3.0)
    feed = timing_feed(ctx)

    def done(module, entry: dict) -> bool:
        with tempfile.TemporaryDirectory(prefix="edgex-prune-") as tmp:
            path = Path(tmp) / "candidate.onnx"
            module.eval()
            _export_torch(module, ctx.inputs, ctx.loaded.recipe.outputs, 18, False, path)
            stats = time_interleaved({"candidate": path}, feed, target["threads"], settings)["candidate"]
        entry["latency_ms"] = round(stats.percentile(target["percentile"]), 4)
        return entry["latency_ms"] <= 0.9 * target["budget_ms"]

    return done


def _fraction_for_params(bert, keep: float, most: float, plan_at: Callable) -> float:
    """The smallest pruning fraction (up to `most`) whose plan keeps at most `keep` of the encoder's
    parameters: the embedding table does not shrink, so the search is on the encoder's own share
    (bisection over trial plans; `plan_at(trial, fraction)` makes one, ValueError: infeasible there)."""
    from exporter.compress.encoder import apply_plan

    base = sum(p.numel() for p in bert.parameters())
    lo, hi = 0.0, most
    for _ in range(14):
        mid = (lo + hi) / 2
        trial = copy.deepcopy(bert)
        try:
            apply_plan(trial, plan_at(trial, mid))
        except ValueError:  # below what one head and one block per layer cost: prune less
            lo = mid
            continue
        if sum(p.numel() for p in trial.parameters()) <= keep * base:
            hi = mid
        else:
            lo = mid
    return hi


def _fisher_plan(state: State, bert, step: PruneStep, seq: int) -> dict:
    """Kwon et al.'s global allocation: heads and neurons scored by the Fisher information of their
    masks, chosen together under the MAC goal (a parameter goal: the MAC fraction whose plan keeps
    that share of the encoder's parameters)."""
    from exporter.compress.encoder import find_encoder
    from exporter.compress.fisher import fisher_scores, global_plan

    probe = copy.deepcopy(state.student)
    scores = fisher_scores(probe, find_encoder(probe), text_batches(state.ctx), seed=state.ctx.loaded.recipe.seed)

    def plan_at(model, removed: float, table: dict | None = None) -> dict:
        return global_plan(
            model, scores, 1 - removed, state.align, seq, heads_too=step.heads, ffn_too=step.ffn, table=table
        )

    if step.goal.macs is not None:
        return plan_at(bert, 1 - step.goal.macs)
    if step.goal.latency is not None:
        from exporter.compress.latency_table import latency_table, predict

        table = latency_table(state.ctx, state.student)
        plan = plan_at(bert, 1 - step.goal.latency, table)
        heads = sum(len(s) for s in scores[0]) - sum(len(v) for v in plan["prune_heads"].values())
        neurons = sum(len(v) for v in plan["keep_ffn"].values())
        whole = predict(table, sum(len(s) for s in scores[0]), sum(len(s) for s in scores[1]))
        table["predicted_fraction"] = round(predict(table, heads, neurons) / whole, 4)
        plan["latency_table"] = table
        return plan
    return plan_at(bert, _fraction_for_params(bert, step.goal.params, 0.95, plan_at))


def _calibration_agreement(student, teacher, batches: list[tuple]) -> float:
    """Mean cosine between the student's and the teacher's outputs on the calibration batches."""
    import torch

    from exporter.metrics import cosine

    with torch.no_grad():
        ours = torch.cat([student(*b) for b in batches]).numpy()
        theirs = torch.cat([teacher(*b) for b in batches]).numpy()
    return cosine(ours, None, theirs)


@register_step(PruneStep)
class Prune(StepHandler):
    kind = "prune"

    def requires(self, ctx, step: PruneStep, where: str) -> None:
        hf = ctx.model.kind == "hf"
        allowed = CRITERIA[ctx.model.kind]
        if step.criterion is not None and step.criterion not in allowed:
            raise UsageError(
                f"criterion {step.criterion} does not apply to {'transformers' if hf else 'CNN channels'}",
                path=ctx.loaded.path,
                field=f"{where}.criterion",
                fix=f"use one of {', '.join(allowed)}",
            )
        if hf and step.criterion == "fisher" and step.drop_layers:
            raise UsageError(
                "the fisher criterion allocates heads and neurons across all layers; it does not drop layers",
                path=ctx.loaded.path,
                field=f"{where}.drop_layers",
                fix="remove drop_layers, or use criterion: activation",
            )
        if hf and step.goal.latency == "budget":
            raise UsageError(
                "latency: budget is available for PyTorch models; transformers prune to a MAC, parameter or "
                "latency fraction",
                path=ctx.loaded.path,
                field=f"{where}.goal.latency",
                fix="use goal: {latency: 0.64} with criterion: fisher, or goal: {macs: 0.6}",
            )
        if isinstance(step.goal.latency, float) and not (hf and step.criterion == "fisher"):
            raise UsageError(
                "a latency fraction is spent through the Fisher allocation's head/neuron latency table "
                "(transformers only)",
                path=ctx.loaded.path,
                field=f"{where}.goal.latency",
                fix="add criterion: fisher" if hf else "use latency: budget (the profile's budget) or macs: 0.6",
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

    def run_torch(self, state: State, step: PruneStep, where: str) -> StepResult:
        import torch
        import torch.nn.functional as F

        from exporter.compress.channels import prune_channels

        ctx = state.ctx
        criterion = step.criterion or "l2"
        step = step.model_copy(update={"criterion": criterion})
        base_macs, base_params = costs(state)
        goal = step.goal
        if goal.latency:
            done = _latency_check(state, where)
        elif goal.macs is not None:
            done = lambda _m, e: e["macs"] <= goal.macs * base_macs  # noqa: E731
        else:
            done = lambda _m, e: e["params"] <= goal.params * base_params  # noqa: E731
        batch, labels = calibration_batch(ctx)
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
            example(ctx),
            step,
            state.align,
            done,
            loss_fn=loss_fn,
            drop_fn=drop_fn,
            field_name=where,
            where=str(ctx.loaded.path),
        )
        state.student = result.module
        return StepResult(
            {
                "engine": "torch-pruning (dependency graph)",
                "criterion": criterion,
                "history": result.history,
                "trace": result.trace,
                "protected": result.protected,
                "reached": result.reached,
                "stopped_by": result.stopped_by,
            }
        )

    def run_hf(self, state: State, step: PruneStep, where: str) -> StepResult:
        from exporter.compress.encoder import activation_scores, apply_plan, fraction_for_macs, plan_pruning

        ctx = state.ctx
        bert = encoder(state)
        if bert is None:
            raise UsageError(
                "structured pruning of this transformer is not supported (no BERT-style encoder.layer found)",
                path=ctx.loaded.path,
                field=where,
                fix="use a BERT-style encoder (BERT, MiniLM, RoBERTa...) or remove the prune step",
            )
        criterion = step.criterion or "activation"
        step = step.model_copy(update={"criterion": criterion})
        seq = ctx.inputs[0].shape[1]
        if criterion == "fisher":
            try:
                plan = _fisher_plan(state, bert, step, seq)
            except ValueError as exc:
                raise UsageError(
                    str(exc),
                    path=ctx.loaded.path,
                    field=f"{where}.goal",
                    fix="raise the fraction, or prune to a MAC goal (goal: {macs: 0.65})",
                ) from None
        else:
            scores = activation_scores(state.student, bert, text_batches(ctx)) if criterion == "activation" else None
            if step.goal.macs is not None:
                fraction = fraction_for_macs(bert, step, step.goal.macs, state.align, seq, scores)
            else:
                fraction = _fraction_for_params(
                    bert,
                    step.goal.params,
                    step.max_layer_ratio,
                    lambda model, x: plan_pruning(model, step, x, state.align, scores),
                )
            plan = plan_pruning(bert, step, fraction, state.align, scores)
        apply_plan(bert, plan)
        info = {"engine": "transformers prune_heads / prune_linear_layer", "criterion": criterion, "plan": plan}
        if step.reconstruct:
            from exporter.compress.encoder import find_encoder, reconstruct

            teacher = ctx.model.module
            mask_index = [s.name for s in ctx.inputs].index("attention_mask")
            batches = text_batches(ctx)
            # fitted on three quarters of the calibration text, judged on the rest: with few tokens
            # and wide layers the fit can interpolate its own data (MiniLM, Fisher plan, 3,120
            # tokens: cosine 0.82 -> 0.999 on the fitted text, 0.81 -> 0.70 on held-out text)
            cut = max(1, len(batches) * 3 // 4)
            fit, held = batches[:cut], batches[cut:] or batches
            before = copy.deepcopy(state.student.state_dict())
            agree = _calibration_agreement(state.student, teacher, held)
            errors = reconstruct(state.student, bert, teacher, find_encoder(teacher), plan, fit, mask_index)
            refit = _calibration_agreement(state.student, teacher, held)
            kept = refit >= agree
            if not kept:
                state.student.load_state_dict(before)
            info["reconstruction_error"] = errors
            info["reconstruction"] = {
                "kept": kept,
                "held_out_cosine_before": round(agree, 6),
                "held_out_cosine_after": round(refit, 6),
                "fitted_on": sum(len(b[0]) for b in fit),
                "judged_on": sum(len(b[0]) for b in held),
            }
            log.info(
                f"  least-squares refit {'kept' if kept else 'reverted'}: held-out cosine {agree:.4f} -> {refit:.4f}"
            )
        return StepResult(info, plan.get("drop_layers") or [])

    def ensures(self, state: State, step: PruneStep, result: StepResult) -> StepResult:
        """Whether the goal was reached, judged on the student's costs against the teacher's."""
        info = result.info
        info["align"] = state.align
        info["goal"] = step.goal.model_dump(exclude_none=True)
        macs, params = costs(state)
        info["reached_goal"] = info.get("reached", True)
        if step.goal.macs is not None:
            info["reached_goal"] = macs <= step.goal.macs * state.records[0]["macs"] * 1.0001
        if step.goal.params is not None:
            info["reached_goal"] = params <= step.goal.params * state.records[0]["params"] * 1.0001
        if isinstance(step.goal.latency, float):
            predicted = info["plan"]["latency_table"]["predicted_fraction"]
            info["reached_goal"] = predicted <= step.goal.latency * 1.0001
        if not info["reached_goal"]:
            log.info(
                f"  prune goal {info['goal']} not reached (stopped by {info.get('stopped_by', 'max_layer_ratio')})"
            )
        return result

    def replay(self, ctx, student, recorded: dict, index: int):
        from exporter.compress.channels import replay

        replay(student, example(ctx), recorded["history"])
        return student
