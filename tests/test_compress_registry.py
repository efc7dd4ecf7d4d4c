"""The compress step registry: every step the recipe can name has exactly one handler, the checks
still refuse bad combinations in one line, and the cache key's facts stay what they were (a
changed key orphans every cached student)."""

from __future__ import annotations

import types
import typing
from pathlib import Path

import pytest
from conftest import run_cli, write_tiny_project

import exporter.compress  # noqa: F401  (registers the handlers)
from exporter.compress import cache, check_steps, store
from exporter.compress.steps import HANDLERS, StepHandler, handler_for, register_step
from exporter.errors import UsageError
from exporter.recipe import LoadedRecipe, Recipe
from exporter.recipe_steps import STEP_KINDS, CompressStep, PruneStep


def _config_classes() -> dict[str, type]:
    """Field name -> config class of every kind a `compress:` item can be."""
    hints = typing.get_type_hints(CompressStep)
    return {name: next(a for a in typing.get_args(hints[name]) if a is not type(None)) for name in STEP_KINDS}


def test_every_step_kind_has_exactly_one_handler():
    configs = _config_classes()
    assert set(HANDLERS) == set(configs.values())  # one per config class, none for anything else
    for name, config in configs.items():
        handler = HANDLERS[config]
        assert handler.kind == name
        assert sum(isinstance(h, type(handler)) for h in HANDLERS.values()) == 1


def test_a_second_handler_for_a_step_is_refused():
    with pytest.raises(ValueError, match="PruneStep already has a handler"):

        @register_step(PruneStep)
        class Again(StepHandler):
            kind = "prune"


def _recipe(tmp_path: Path, compress: list[dict], source: str = "torch") -> LoadedRecipe:
    model = {"source": "torch", "factory": "net.py:build"}
    extra: dict = {"inputs": [{"name": "image", "shape": [1, 3, 8, 8]}]}
    if source == "hf":
        model, extra = {"source": "hf", "folder": "model"}, {}
    recipe = Recipe.model_validate(
        {
            "version": 1,
            "name": "r",
            "model": model,
            "data": {"calibration": {"npz": "c.npz"}, "evaluation": {"npz": "e.npz"}},
            "compress": compress,
            "profiles": ["raspberry-pi-5-cpu"],
            **extra,
        }
    )
    return LoadedRecipe(recipe=recipe, path=tmp_path / "recipe.yaml", sha256="0" * 64)


def test_a_transformer_pruned_after_factorising_is_one_line(tmp_path):
    loaded = _recipe(tmp_path, [{"lowrank": {"goal": {"macs": 0.5}}}, {"prune": {"goal": {"macs": 0.5}}}], "hf")
    ctx = types.SimpleNamespace(loaded=loaded, model=types.SimpleNamespace(kind="hf"))
    with pytest.raises(UsageError) as err:
        check_steps(ctx)
    assert err.value.field == "compress" and "\n" not in err.value.one_line()
    assert "cannot be pruned after it is factorised" in str(err.value)


def test_a_latency_goal_on_a_transformer_is_refused_by_the_prune_handler(tmp_path):
    loaded = _recipe(tmp_path, [{"prune": {"goal": {"latency": "budget"}}}], "hf")
    ctx = types.SimpleNamespace(loaded=loaded, model=types.SimpleNamespace(kind="hf"))
    with pytest.raises(UsageError) as err:
        handler_for(loaded.recipe.compress[0].settings).requires(
            ctx, loaded.recipe.compress[0].prune, "compress[0].prune"
        )
    assert err.value.field == "compress[0].prune.goal.latency"


@pytest.mark.parametrize(
    "kind,step,fix",
    [
        ("hf", {"goal": {"latency": 0.6}, "criterion": "activation"}, "criterion: fisher"),
        ("torch", {"goal": {"latency": 0.6}}, "latency: budget"),
    ],
)
def test_a_latency_fraction_needs_the_fisher_allocation(tmp_path, kind, step, fix):
    """A latency fraction is spent through the head/neuron latency table: anything else is refused
    with the field and the fix."""
    loaded = _recipe(tmp_path, [{"prune": step}], kind)
    ctx = types.SimpleNamespace(loaded=loaded, model=types.SimpleNamespace(kind=kind))
    with pytest.raises(UsageError) as err:
        handler_for(loaded.recipe.compress[0].settings).requires(
            ctx, loaded.recipe.compress[0].prune, "compress[0].prune"
        )
    assert err.value.field == "compress[0].prune.goal.latency" and fix in err.value.fix


def test_a_bad_step_combination_exits_2_with_one_line(tmp_path):
    """A PyTorch model given a transformer-only student and a transformer-only criterion."""
    compress = [{"student": {"depth": 2}}, {"prune": {"goal": {"macs": 0.5}, "criterion": "activation"}}]
    recipe = write_tiny_project(tmp_path, compress=compress, profiles=["raspberry-pi-5-cpu"])
    proc = run_cli("build", str(recipe), env={"EDGEX_CACHE_DIR": str(tmp_path / "cache")})
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("edgex: error:")]
    assert len(errors) == 1 and "compress[0].student" in errors[0] and "needs its architecture" in errors[0]
    assert "Traceback" not in proc.stderr and not (tmp_path / "out").exists()


def test_the_cache_key_facts_are_unchanged(tmp_path, monkeypatch):
    """The facts as the key has always been built: a layout change would orphan every cache entry."""
    import exporter.versions

    monkeypatch.setattr(exporter.versions, "tool_versions", lambda: {"edgex": "1", "torch": "2", "other": "3"})
    monkeypatch.setattr(store, "_version", lambda dist: "tp")
    (tmp_path / "small.py").write_text("def build():\n    return None\n")
    steps = [{"student": {"factory": "small.py:build"}}, {"prune": {"goal": {"macs": 0.5}}}, {"distill": {}}]
    loaded = _recipe(tmp_path, steps)
    r = loaded.recipe
    ctx = types.SimpleNamespace(
        loaded=loaded,
        model=types.SimpleNamespace(kind="torch", weights_sha256="ab" * 32),
        inputs=r.inputs,
        calibration=types.SimpleNamespace(digest="cal"),
        evaluation=types.SimpleNamespace(digest="ev"),
        metric_name="top1",
    )
    from exporter.digest import sha256_file

    facts = {
        "teacher": "ab" * 32,
        "model": r.model.model_dump(),
        "inputs": [i.model_dump() for i in r.inputs],
        "steps": [{s.kind: s.settings.model_dump()} for s in r.compress],
        "calibration": "cal",
        "evaluation": "ev",
        "metric": "top1",
        "seed": 0,
        "align": 8,
        "latency": None,
        "versions": {"edgex": "1", "torch": "2", "transformers": None, "sentence-transformers": None},
        "torch_pruning": "tp",
        "student_code": [sha256_file(tmp_path / "small.py")],
    }
    assert store.key(ctx, 8, None) == cache.cache_key(facts)
    # without user code the key has no student_code at all (keys of older recipes stay as they were)
    plain = _recipe(tmp_path, steps[1:])
    ctx.loaded, ctx.inputs = plain, plain.recipe.inputs
    del facts["student_code"]
    facts["steps"] = facts["steps"][1:]
    assert store.key(ctx, 8, None) == cache.cache_key(facts)
