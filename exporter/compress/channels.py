"""Channel pruning for convolutional (and any Conv/Linear/BatchNorm) PyTorch models.

Torch-Pruning's dependency graph does the hard part: channels coupled through residual adds,
depthwise and grouped convolutions, concatenation, BatchNorm and squeeze-excitation are removed
together, so the result is a smaller *dense* model that still runs and exports. This module only
chooses how far to go (a MAC or parameter goal, a measured latency, an accuracy floor), rounds
channel counts to the target's preferred multiple, and keeps the pruning history as data so the
same pruning can be replayed on the same architecture.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field

from exporter import log
from exporter.compress.hooks import forward_hooks
from exporter.errors import UsageError
from exporter.recipe_steps import PruneStep


def _importance(criterion: str):
    import torch_pruning as tp

    registry = {
        "l1": lambda: tp.importance.GroupMagnitudeImportance(p=1),
        "l2": lambda: tp.importance.GroupMagnitudeImportance(p=2),
        "bn_scale": lambda: tp.importance.BNScaleImportance(),
        "taylor": lambda: tp.importance.GroupTaylorImportance(),
    }
    return registry[criterion]()


def costs(module, example: tuple) -> tuple[int, int]:
    """(MACs, parameters) of one forward pass at the example's shape, counted by Torch-Pruning."""
    import torch
    import torch_pruning as tp

    with torch.no_grad():
        macs, params = tp.utils.count_ops_and_params(module, example)
    return int(macs), int(params)


def last_layer(module, example: tuple) -> str | None:
    """The last Conv/Linear to run: it produces the outputs, whose width the user's code depends on."""
    from torch import nn

    order: list[str] = []
    layers = [
        (name, m) for name, m in module.named_modules() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear))
    ]
    with forward_hooks((m, lambda _m, _i, _o, n=name: order.append(n)) for name, m in layers):
        module(*example)
    return order[-1] if order else None


@dataclass
class ChannelPruning:
    module: object
    history: list = field(default_factory=list)  # Torch-Pruning's (module name, out-channels?, indices)
    trace: list[dict] = field(default_factory=list)  # per step: ratio, macs, params (+ latency/drop when measured)
    protected: list[str] = field(default_factory=list)
    reached: bool = False
    stopped_by: str = ""


def prune_channels(
    module,
    example: tuple,
    settings: PruneStep,
    align: int,
    done: Callable[[object, dict], bool],
    loss_fn: Callable[[object], object] | None = None,
    drop_fn: Callable[[object], float] | None = None,
    field_name: str = "compress",
    where: str = "recipe",
) -> ChannelPruning:
    """Prune `module` in place step by step until `done(module, costs)` says the goal is met.

    Each step raises every prunable layer's removed fraction by max_layer_ratio / steps (Torch-
    Pruning's iterative schedule, importance re-ranked each step). `loss_fn` gives the loss whose
    gradients the taylor criterion needs; `drop_fn` the accuracy drop checked against the floor, in
    which case a step that crosses the floor is undone.
    """
    import torch_pruning as tp

    settings = settings.model_copy(update={"criterion": settings.criterion or "l2"})
    named = dict(module.named_modules())
    unknown = [n for n in settings.protect if n not in named]
    if unknown:
        raise UsageError(
            f"protect names modules {unknown} that the model does not have",
            path=where,
            field=f"{field_name}.protect",
            fix=f"use names from model.named_modules(), e.g. {', '.join(list(named)[1:4])}",
        )
    if settings.criterion == "taylor" and loss_fn is None:
        raise UsageError(
            "the taylor criterion needs calibration data to compute gradients",
            path=where,
            field=f"{field_name}.criterion",
            fix="give data.calibration, or use l1/l2",
        )
    last = last_layer(module, example)
    protected = list(dict.fromkeys([*settings.protect, *([last] if last else [])]))
    pruner = tp.pruner.MetaPruner(
        module,
        example,
        importance=_importance(settings.criterion),
        global_pruning=settings.scope == "global",
        pruning_ratio=settings.max_layer_ratio,
        max_pruning_ratio=settings.max_layer_ratio,
        iterative_steps=settings.steps,
        ignored_layers=[named[n] for n in protected],
        round_to=align if align > 1 else None,
    )
    base_macs, base_params = costs(module, example)
    result = ChannelPruning(module=module, protected=protected)
    result.trace.append({"step": 0, "ratio": 0.0, "macs": base_macs, "params": base_params})
    widths = {n: m.out_channels if hasattr(m, "out_channels") else m.out_features for n, m in _prunable(module)}
    for step in range(1, settings.steps + 1):
        snapshot = copy.deepcopy(module)
        before = len(pruner.DG.pruning_history())
        if settings.criterion == "taylor":
            module.zero_grad()
            loss_fn(module).backward()
        pruner.step()
        if settings.criterion == "taylor":
            module.zero_grad()
        macs, params = costs(module, example)
        entry = {
            "step": step,
            "ratio": round(settings.max_layer_ratio * step / settings.steps, 4),
            "macs": macs,
            "params": params,
        }
        if drop_fn is not None:
            entry["drop"] = round(float(drop_fn(module)), 6)
            if entry["drop"] > (settings.accuracy_floor or 0.0):
                log.info(
                    f"  prune step {step}: drop {entry['drop']:.4f} crosses the accuracy floor; step undone, stopping"
                )
                result.module = snapshot
                result.history = list(pruner.DG.pruning_history()[:before])
                result.stopped_by = "accuracy_floor"
                return result
        finished = done(module, entry)  # may add what it measured (latency_ms) to the entry
        if finished:
            # Every layer moved by one aligned notch at once, which can overshoot the goal by far:
            # go back one step and approach it one group and `align` channels at a time.
            log.info(f"  prune step {step}: goal passed; refining from step {step - 1} one channel group at a time")
            history = [list(h) for h in pruner.DG.pruning_history()[:before]]
            fine = _refine(snapshot, example, settings, align, done, loss_fn, protected, widths, result, step)
            result.module, result.history = fine[0], history + fine[1]
            result.reached, result.stopped_by = fine[2], "goal" if fine[2] else "max_layer_ratio"
            return result
        result.trace.append(entry)
        log.info(
            f"  prune step {step}/{settings.steps}: {100 * macs / base_macs:.1f}% MACs, "
            f"{100 * params / base_params:.1f}% params"
            + (f", {entry['latency_ms']:.3f} ms" if "latency_ms" in entry else "")
            + (f", drop {entry['drop']:.4f}" if "drop" in entry else "")
        )
        if finished:
            result.reached = True
            result.stopped_by = "goal"
            break
    else:
        result.stopped_by = "max_layer_ratio"
    result.history = [list(h) for h in pruner.DG.pruning_history()]
    module.zero_grad(set_to_none=True)
    return result


def _prunable(module):
    from torch import nn

    return [(n, m) for n, m in module.named_modules() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear))]


def _refine(module, example, settings, align, done, loss_fn, protected, widths, result, step) -> tuple:
    """Greedy fine pruning: remove the `align` least important channels of the group whose
    weakest channels matter least (relative to the group's mean), until the goal is met.
    Returns (module, history, reached)."""
    import torch
    import torch_pruning as tp

    named = dict(module.named_modules())
    names = {m: n for n, m in named.items()}
    graph = tp.DependencyGraph().build_dependency(module, example_inputs=example)
    importance = _importance(settings.criterion)
    ignored = [named[n] for n in protected]
    floor = {n: max(1, int(round(w * (1 - settings.max_layer_ratio)))) for n, w in widths.items()}
    while True:
        if settings.criterion == "taylor":
            module.zero_grad()
            loss_fn(module).backward()
        best = None
        for group in graph.get_all_groups(ignored_layers=ignored):
            root = group[0].dep.target.module
            name = names.get(root)
            width = len(group[0].idxs)
            if name is None or width - align < floor.get(name, align):
                continue
            with torch.no_grad():
                imp = importance(group)
            if imp is None or len(imp) != width:
                continue
            weakest = torch.argsort(imp)[:align]
            score = float(imp[weakest].mean() / imp.mean().clamp(min=1e-12))
            if best is None or score < best[0]:
                best = (score, root, group[0].dep.handler, sorted(int(i) for i in weakest))
        if best is None:
            return module, [list(h) for h in graph.pruning_history()], False
        _score, root, handler, idxs = best
        graph.get_pruning_group(root, handler, idxs).prune()
        macs, params = costs(module, example)
        entry = {"step": step, "refine": names[root], "macs": macs, "params": params}
        finished = done(module, entry)
        result.trace.append(entry)
        log.debug(f"  refine: -{align} channels at {names[root]}: {macs:,} MACs")
        if finished:
            module.zero_grad(set_to_none=True)
            log.info(
                f"  refined: {macs:,} MACs, {params:,} params"
                + (f", {entry['latency_ms']:.3f} ms" if "latency_ms" in entry else "")
            )
            return module, [list(h) for h in graph.pruning_history()], True


def replay(module, example: tuple, history: list) -> object:
    """Apply a recorded pruning history to a fresh model of the same architecture (in place)."""
    import torch_pruning as tp

    graph = tp.DependencyGraph().build_dependency(module, example_inputs=example)
    graph.load_pruning_history([tuple(h) for h in history])
    return module
