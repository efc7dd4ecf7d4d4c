"""Release matrices: plan -> build cells (local pool) -> merge, with the content-addressed cell cache.

Two tiny cells are built once per session through the CLI (`edgex run`), then a second run must
do no work; everything else plans, merges or tampers with copies of that one result.
"""

from __future__ import annotations

import json
import shlex
import shutil
import threading
import time
from pathlib import Path

import click
import numpy as np
import pytest
import yaml
from conftest import ROOT, run_cli, write_tiny_project

from exporter import cache as store
from exporter.digest import sha256_file
from exporter.errors import UsageError
from exporter.matrix import inputs as matrix_inputs
from exporter.matrix import plan as matrix_plan
from exporter.matrix.plan import make_plan

FAST_QUANT = {"calibration_samples": 16, "dynamic": False, "speed_guard": False}
BUILT = ["tiny--raspberry-pi-5-cpu", "tiny-b--raspberry-pi-5-cpu"]
SCHEMAS = Path(__file__).resolve().parent / "schemas"


def make_projects(root: Path) -> Path:
    """Recipes a/ (tiny) and b/ (tiny-b) and a team profiles folder with one lab board."""
    write_tiny_project(root / "a", quantize=FAST_QUANT)
    write_tiny_project(root / "b", name="tiny-b", quantize=FAST_QUANT, seed=1)
    lab = root / "lab"
    lab.mkdir()
    text = (ROOT / "device_profiles" / "raspberry-pi-5-cpu.yaml").read_text()
    (lab / "lab-board-cpu.yaml").write_text(text.replace("id: raspberry-pi-5-cpu", "id: lab-board-cpu", 1))
    return root


def snapshot(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): sha256_file(p) for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="session")
def matrix_run(tmp_path_factory):
    """The two CPU cells planned and run with the local pool, then run a second time."""
    root = make_projects(tmp_path_factory.mktemp("matrix"))
    env = {"EDGEX_CACHE_DIR": str(root / "cache")}
    plan = run_cli(
        "plan", "a/recipe.yaml", "b/recipe.yaml", "--profiles", "raspberry-pi-5-cpu", "-o", "plan.json", cwd=root
    )
    assert plan.returncode == 0, plan.stderr
    t0 = time.monotonic()
    first = run_cli("run", "--plan", "plan.json", "-j", "2", "--json", env=env, cwd=root)
    first_seconds = time.monotonic() - t0
    assert first.returncode == 0, first.stderr + first.stdout
    after_first = {c: snapshot(root / "out" / c) for c in BUILT}
    t0 = time.monotonic()
    second = run_cli("run", "--plan", "plan.json", "-j", "2", "--json", env=env, cwd=root)
    second_seconds = time.monotonic() - t0
    assert second.returncode == 0, second.stderr + second.stdout
    return {
        "root": root,
        "env": env,
        "first": json.loads(first.stdout),
        "second": json.loads(second.stdout),
        "after_first": after_first,
        "seconds": (first_seconds, second_seconds),
    }


@pytest.fixture()
def released(matrix_run, tmp_path):
    """A private copy of the built cells, free to tamper with."""
    out = tmp_path / "out"
    shutil.copytree(matrix_run["root"] / "out", out)
    return tmp_path


# --- plan -------------------------------------------------------------------------------------


def test_plan_is_byte_identical_across_runs_and_ci_shaped(tmp_path):
    root = make_projects(tmp_path)
    args = ["plan", "a/recipe.yaml", "b/recipe.yaml", "--profiles", "raspberry-pi-5-cpu,sa8295p-qnn"]
    first = run_cli(*args, "-o", "p1.json", cwd=root)
    second = run_cli(*args, "-o", "p2.json", cwd=root)
    assert first.returncode == second.returncode == 0, first.stderr
    assert (root / "p1.json").read_bytes() == (root / "p2.json").read_bytes()
    plan = json.loads((root / "p1.json").read_text())
    ids = [c["id"] for c in plan["cells"]]
    assert ids == sorted(ids) and len(ids) == 4
    include = plan["matrix"]["include"]
    assert [i["cell"] for i in include] == ids and plan["count"] == 4
    for inc, cell in zip(include, plan["cells"]):
        assert set(inc) == {"cell", "recipe", "profile", "key", "runner"}
        assert inc["runner"] == ["ubuntu-latest"] and len(cell["key"]) == 64 and inc["key"] == cell["key"]
        roles = [i["role"] for i in cell["inputs"]]
        assert roles == [
            "recipe",
            "model.factory",
            "data.calibration.npz",
            "data.evaluation.npz",
            "profile",
            "target",
        ] + (["target.op_table"] if cell["target"] == "qnn" else [])
        assert all(not i["path"].startswith(str(tmp_path)) for i in cell["inputs"]), "paths must be portable"
    assert json.loads(json.dumps(plan["matrix"])) == {"include": include}


def _keys(plan: dict) -> dict[str, str]:
    return {c["id"]: c["key"] for c in plan["cells"]}


def test_changing_one_input_changes_only_the_affected_cells(tmp_path, monkeypatch):
    root = make_projects(tmp_path)
    monkeypatch.chdir(root)
    profiles = ["raspberry-pi-5-cpu", "sa8295p-qnn", "lab-board-cpu"]
    recipes = [Path("a/recipe.yaml"), Path("b/recipe.yaml")]

    def plan(runners: Path | None = None) -> dict[str, str]:
        return _keys(make_plan(recipes, profiles, [root / "lab"], runners))

    base = plan()
    assert len(set(base.values())) == 6

    def changed(new: dict[str, str]) -> set[str]:
        return {c for c in base if base[c] != new[c]}

    rng = np.random.default_rng(5)
    np.savez(root / "b" / "calib.npz", image=rng.standard_normal((32, 3, 16, 16)).astype(np.float32))
    assert changed(plan()) == {f"tiny-b--{p}" for p in profiles}
    base = plan()

    with open(root / "a" / "tiny_models.py", "a") as f:
        f.write("\n# a comment is a change of bytes\n")
    assert changed(plan()) == {f"tiny--{p}" for p in profiles}
    base = plan()

    lab = root / "lab" / "lab-board-cpu.yaml"
    lab.write_text(lab.read_text() + "\n# retuned\n")
    assert changed(plan()) == {"tiny--lab-board-cpu", "tiny-b--lab-board-cpu"}
    base = plan()

    targets = root / "targets"
    shutil.copytree(ROOT / "targets", targets)
    (targets / "qnn.yaml").write_text((targets / "qnn.yaml").read_text() + "\n# new HTP notes\n")
    real = matrix_inputs.shipped_dir
    monkeypatch.setattr(matrix_inputs, "shipped_dir", lambda name: targets if name == "targets" else real(name))
    assert changed(plan()) == {"tiny--sa8295p-qnn", "tiny-b--sa8295p-qnn"}
    monkeypatch.setattr(matrix_inputs, "shipped_dir", real)

    runners = root / "runners.yaml"
    runners.write_text(yaml.safe_dump({"profiles": {"sa8295p-qnn": {"labels": ["self-hosted", "car-lab"]}}}))
    assert changed(plan(runners)) == {"tiny--sa8295p-qnn", "tiny-b--sa8295p-qnn"}

    real_tools = matrix_plan.toolchain
    monkeypatch.setattr(matrix_plan, "toolchain", lambda: {**real_tools(), "onnxruntime": "9.9.9"})
    assert changed(plan()) == set(base)


def test_a_data_callable_is_keyed_by_the_values_it_returns(tmp_path, monkeypatch):
    """A callable reading a file the recipe never names still moves the key when that file changes."""
    data = {"calibration": {"callable": "loader.py:calibration"}, "evaluation": {"npz": "eval.npz"}}
    folder = tmp_path / "d"
    write_tiny_project(folder, name="tiny-d", data=data)
    (folder / "loader.py").write_text(
        "from pathlib import Path\n\nimport numpy as np\n\n\ndef calibration():\n"
        "    return dict(np.load(Path(__file__).parent / 'elsewhere.npz'))\n"
    )
    np.savez(folder / "elsewhere.npz", image=np.zeros((8, 3, 16, 16), np.float32))
    monkeypatch.chdir(tmp_path)
    first = make_plan([Path("d/recipe.yaml")], ["raspberry-pi-5-cpu"])
    roles = [i["role"] for i in first["cells"][0]["inputs"]]
    assert "data.calibration.callable" in roles and "data.calibration.values" in roles
    np.savez(folder / "elsewhere.npz", image=np.ones((8, 3, 16, 16), np.float32))
    second = make_plan([Path("d/recipe.yaml")], ["raspberry-pi-5-cpu"])
    assert _keys(first) != _keys(second)


def test_shards_partition_the_matrix_and_limits_are_enforced(tmp_path, monkeypatch):
    root = make_projects(tmp_path)
    monkeypatch.chdir(root)
    recipes = [Path("a/recipe.yaml"), Path("b/recipe.yaml")]
    profiles = ["raspberry-pi-5-cpu", "sa8295p-qnn", "lab-board-cpu"]
    whole = make_plan(recipes, profiles, [root / "lab"])
    parts = [make_plan(recipes, profiles, [root / "lab"], shard=(k, 4)) for k in range(1, 5)]
    cells = [i["cell"] for p in parts for i in p["matrix"]["include"]]
    assert sorted(cells) == [c["id"] for c in whole["cells"]] and len(set(cells)) == len(cells)
    assert {p["matrix_id"] for p in parts} == {whole["matrix_id"]}
    assert all(1 <= p["count"] <= 2 for p in parts)
    with pytest.raises(UsageError, match=r"--shard.*k/3"):
        make_plan(recipes, profiles, [root / "lab"], max_cells=2)
    with pytest.raises(UsageError, match="not a shard"):
        matrix_plan.parse_shard("3/2")


def test_runner_overrides_inherit_what_they_do_not_say():
    runners = matrix_plan.Runners.model_validate(
        {
            "default": {"labels": ["x"], "resources": {"board": 1}},
            "profiles": {"p": {"labels": ["y"]}, "q": {"resources": {}}},
        }
    )
    assert matrix_plan.runner_for(runners, "p") == {"labels": ["y"], "resources": {"board": 1}}
    assert matrix_plan.runner_for(runners, "q") == {"labels": ["x"], "resources": {}}
    assert matrix_plan.runner_for(runners, "other") == {"labels": ["x"], "resources": {"board": 1}}


def test_unusable_plans_are_refused_in_one_line(tmp_path):
    root = make_projects(tmp_path)
    shutil.copytree(root / "a", root / "a2")
    cases = [
        (("plan", "a/recipe.yaml", "--profiles", "raspbery-pi-5-cpu", "-o", "p.json"), "raspberry-pi-5-cpu"),
        (("plan", "a/recipe.yaml", "a2/recipe.yaml", "-o", "p.json"), "distinct `name`"),
        (("plan", "-o", "p.json"), "no recipes"),
        (("plan", "a/recipe.yaml", "--shard", "0/2", "-o", "p.json"), "not a shard"),
    ]
    (root / "runners.yaml").write_text("version: 1\ndefault: {lables: [x]}\n")
    cases.append((("plan", "a/recipe.yaml", "--runners", "runners.yaml", "-o", "p.json"), "did you mean 'labels'"))
    (root / "r2.yaml").write_text("default: {resources: {CPU: 1}}\n")
    cases.append((("plan", "a/recipe.yaml", "--runners", "r2.yaml", "-o", "p.json"), "Ray's own resource"))
    for args, needle in cases:
        proc = run_cli(*args, "--json", cwd=root)
        assert proc.returncode == 2, (args, proc.stdout, proc.stderr)
        assert needle in json.loads(proc.stdout)["error"]["message"], args
        assert "Traceback" not in proc.stderr
    assert not (root / "p.json").exists()


# --- build and run ----------------------------------------------------------------------------


def test_first_run_builds_every_cell_and_a_second_run_does_no_work(matrix_run):
    first, second = matrix_run["first"], matrix_run["second"]
    assert [c["cell"] for c in first["cells"]] == BUILT
    assert first["built"] == 2 and first["cached"] == 0 and first["dispatched"] == 2 and first["ok"]
    assert all(c["exit_code"] == 0 and not c["cached"] for c in first["cells"])
    assert second["dispatched"] == 0 and second["built"] == 0 and second["cached"] == 2 and second["ok"]
    for cell in BUILT:
        assert snapshot(matrix_run["root"] / "out" / cell) == matrix_run["after_first"][cell]
        manifest = json.loads((matrix_run["root"] / "out" / cell / "manifest.json").read_text())
        assert manifest["cell"]["id"] == cell and sorted(manifest["cell"]["matrix"]["cells"]) == BUILT
        assert [p["id"] for p in manifest["profiles"]] == ["raspberry-pi-5-cpu"]
    entries = sorted(p.name for p in (matrix_run["root"] / "cache" / "cells").iterdir())
    assert entries == sorted(c["key"] for c in json.loads((matrix_run["root"] / "plan.json").read_text())["cells"])
    first_s, second_s = matrix_run["seconds"]
    assert second_s < first_s / 2, matrix_run["seconds"]


def test_a_single_cell_from_the_cache_is_the_same_bytes(matrix_run, tmp_path):
    root, cell = matrix_run["root"], BUILT[0]
    proc = run_cli(
        "build", "--plan", "plan.json", "--cell", cell, "--out", str(tmp_path / "one"), "--json",
        env=matrix_run["env"], cwd=root,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["cached"] is True
    assert snapshot(tmp_path / "one") == snapshot(root / "out" / cell)
    assert run_cli("verify", str(tmp_path / "one")).returncode == 0


def test_cell_whose_inputs_changed_after_planning_is_refused(tmp_path):
    root = make_projects(tmp_path)
    assert (
        run_cli("plan", "a/recipe.yaml", "--profiles", "raspberry-pi-5-cpu", "-o", "plan.json", cwd=root).returncode
        == 0
    )
    rng = np.random.default_rng(9)
    np.savez(
        root / "a" / "eval.npz", image=rng.standard_normal((40, 3, 16, 16)).astype(np.float32), labels=np.zeros(40)
    )
    proc = run_cli(
        "build", "--plan", "plan.json", "--cell", "tiny--raspberry-pi-5-cpu", "--json",
        env={"EDGEX_CACHE_DIR": str(root / "cache")}, cwd=root,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    message = json.loads(proc.stdout)["error"]["message"]
    assert "inputs changed since the plan was made" in message and "data.evaluation.npz a/eval.npz" in message
    assert "re-run `edgex plan`" in message
    assert not (root / "out").exists() and not (root / "cache").exists()
    for args, needle in [
        (("build", "--plan", "plan.json"), "--plan and --cell go together"),
        (("build", "--plan", "plan.json", "--cell", "tiny--raspberry-pi-5-cpuu"), "did you mean 'tiny--raspberry"),
        (("build", "a/recipe.yaml", "--plan", "plan.json", "--cell", "x"), "drop RECIPE"),
        (("build", "--plan", "a/recipe.yaml", "--cell", "x"), "not a JSON file"),
    ]:
        proc = run_cli(*args, "--json", cwd=root)
        assert proc.returncode == 2 and needle in json.loads(proc.stdout)["error"]["message"], (args, proc.stdout)


def test_a_failing_cell_never_hides_the_others(matrix_run):
    root = matrix_run["root"]
    broken = root / "c"
    write_tiny_project(broken, name="broken", quantize=FAST_QUANT, model={"source": "torch", "factory": "bad.py:build"})
    (broken / "bad.py").write_text("def build():\n    raise RuntimeError('weights server unreachable')\n")
    plan = run_cli(
        "plan", "a/recipe.yaml", "c/recipe.yaml", "--profiles", "raspberry-pi-5-cpu", "-o", "plan-broken.json", cwd=root
    )
    assert plan.returncode == 0, plan.stderr
    proc = run_cli(
        "run", "--plan", "plan-broken.json", "--out-root", "out-broken", "--json", env=matrix_run["env"], cwd=root
    )
    assert proc.returncode == 2, proc.stderr
    result = json.loads(proc.stdout)
    cells = {c["cell"]: c for c in result["cells"]}
    assert cells["tiny--raspberry-pi-5-cpu"]["exit_code"] == 0 and cells["tiny--raspberry-pi-5-cpu"]["cached"]
    bad = cells["broken--raspberry-pi-5-cpu"]
    assert bad["exit_code"] == 2 and "weights server unreachable" in bad["error"]
    assert result["failed"] == 1 and not result["ok"]
    assert (root / "out-broken" / "tiny--raspberry-pi-5-cpu" / "manifest.json").is_file()
    assert not (root / "out-broken" / "broken--raspberry-pi-5-cpu").exists()


def test_only_changed_leaves_cached_cells_out_of_the_matrix(matrix_run, monkeypatch):
    root = matrix_run["root"]
    monkeypatch.chdir(root)
    monkeypatch.setenv("EDGEX_CACHE_DIR", matrix_run["env"]["EDGEX_CACHE_DIR"])
    recipes = [Path("a/recipe.yaml"), Path("b/recipe.yaml")]
    same = make_plan(recipes, ["raspberry-pi-5-cpu"], only_changed=True)
    assert same["count"] == 0 and same["cells_total"] == 2 and same["shard"]["cells"] == BUILT
    wider = make_plan(recipes, ["raspberry-pi-5-cpu", "sa8295p-qnn"], only_changed=True)
    assert [i["cell"] for i in wider["matrix"]["include"]] == ["tiny--sa8295p-qnn", "tiny-b--sa8295p-qnn"]


# --- merge and verify -------------------------------------------------------------------------


def test_merged_release_verifies_like_a_single_build(released):
    manifests = sorted(str(p) for p in (released / "out").glob("*/manifest.json"))
    proc = run_cli("merge", *manifests, "-o", str(released / "release.json"), "--json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    release = json.loads((released / "release.json").read_text())
    assert [c["id"] for c in release["cells"]] == BUILT and release["ok"] and release["problems"] == []
    per_cell = sum(len(json.loads(Path(m).read_text())["files"]) for m in manifests)
    assert len(release["files"]) == per_cell
    assert release["files"][0]["path"].startswith("out/tiny--raspberry-pi-5-cpu/")
    ok = run_cli("verify", str(released / "release.json"), "--json")
    assert ok.returncode == 0 and json.loads(ok.stdout)["ok"], ok.stdout
    onnx = released / "out" / BUILT[1] / "raspberry-pi-5-cpu" / "baseline.onnx"
    data = bytearray(onnx.read_bytes())
    data[len(data) // 2] ^= 1
    onnx.write_bytes(bytes(data))
    bad = run_cli("verify", str(released / "release.json"), "--json")
    assert bad.returncode == 1
    assert json.loads(bad.stdout)["problems"][0]["path"] == f"out/{BUILT[1]}/raspberry-pi-5-cpu/baseline.onnx"


def _merge(folder: Path, *manifests: Path) -> tuple[int, list[str]]:
    proc = run_cli("merge", *map(str, manifests), "-o", str(folder / "release.json"), "--json")
    assert not (folder / "release.json").exists() or proc.returncode == 0
    return proc.returncode, [f"{p['cell']}: {p['problem']}" for p in json.loads(proc.stdout).get("problems", [])]


def test_merge_rejects_missing_duplicate_and_tampered_cells(released):
    out = released / "out"
    a, b = (out / c / "manifest.json" for c in BUILT)
    code, problems = _merge(released, a)
    assert code == 1 and problems == [f"{BUILT[1]}: missing: no manifest for this cell"]

    shutil.copytree(out / BUILT[0], released / "copy")
    code, problems = _merge(released, a, b, released / "copy" / "manifest.json")
    assert code == 1 and any("duplicate" in p for p in problems)

    model = out / BUILT[0] / "raspberry-pi-5-cpu" / "int8.onnx"
    original = model.read_bytes()
    model.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
    code, problems = _merge(released, a, b)
    assert code == 1 and problems == [f"{BUILT[0]}: raspberry-pi-5-cpu/int8.onnx: content differs from the manifest"]
    model.write_bytes(original)

    manifest = json.loads(b.read_text())
    manifest["cell"]["key"] = "0" * 64
    b.write_text(json.dumps(manifest))
    code, problems = _merge(released, a, b)
    assert code == 1 and any("a key was changed" in p for p in problems)

    plain = json.loads(a.read_text())
    del plain["cell"]
    (released / "plain.json").write_text(json.dumps(plain))
    proc = run_cli("merge", str(released / "plain.json"), "-o", str(released / "release.json"), "--json")
    assert proc.returncode == 2 and "no `cell` record" in json.loads(proc.stdout)["error"]["message"]


# --- the cache --------------------------------------------------------------------------------


def test_parallel_writers_of_one_key_leave_one_complete_entry(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEX_CACHE_DIR", str(tmp_path / "cache"))
    key = store.cache_key({"what": "race"}, 1)
    barrier = threading.Barrier(8)

    def writer(i: int) -> None:
        with store.storing("test", key) as tmp:
            (tmp / "payload").write_text(str(i) * 1000)
            barrier.wait()
            (tmp / "done").write_text("")

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    entry = store.lookup("test", key, "done")
    assert entry is not None and len(set((entry / "payload").read_text())) == 1
    assert sorted(p.name for p in (tmp_path / "cache" / "test").iterdir()) == [key]

    other = store.cache_key({"what": "crash"}, 1)
    with pytest.raises(RuntimeError), store.storing("test", other) as tmp:
        (tmp / "payload").write_text("half")
        raise RuntimeError("killed")
    assert store.lookup("test", other, "done") is None
    assert sorted(p.name for p in (tmp_path / "cache" / "test").iterdir()) == [key]
    assert store.cache_key({"a": 1, "b": 2}, 1) == store.cache_key({"b": 2, "a": 1}, 1) != store.cache_key({"a": 1}, 1)


def test_a_damaged_cache_entry_is_rebuilt_not_shipped(matrix_run, tmp_path, monkeypatch):
    from exporter.matrix.cell import cached_entry

    cache = tmp_path / "cache"
    shutil.copytree(matrix_run["root"] / "cache", cache)
    monkeypatch.setenv("EDGEX_CACHE_DIR", str(cache))
    key = json.loads((matrix_run["root"] / "plan.json").read_text())["cells"][0]["key"]
    assert cached_entry(key) is not None
    onnx = cache / "cells" / key / "release" / "raspberry-pi-5-cpu" / "baseline.onnx"
    onnx.write_bytes(onnx.read_bytes() + b"\0")
    assert cached_entry(key) is None and not (cache / "cells" / key).exists()


# --- CI examples ------------------------------------------------------------------------------


class _Yaml12Loader(yaml.SafeLoader):
    """YAML 1.2 booleans, as GitHub reads workflows: `on:` is a key, not True."""


_Yaml12Loader.yaml_implicit_resolvers = {
    k: [(tag, rx) for tag, rx in v if tag != "tag:yaml.org,2002:bool"]
    for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def _load(path: Path) -> dict:
    return yaml.load(path.read_text(), Loader=_Yaml12Loader)  # noqa: S506 - a SafeLoader subclass


def _validator(name: str):
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads((SCHEMAS / f"{name}.json").read_text())
    return jsonschema.validators.validator_for(schema)(schema)


def _edgex_commands(doc: object, in_script: bool = False) -> list[list[str]]:
    """Every `edgex ...` command in a workflow's `run:` / `script:` steps, continuation lines joined."""
    found: list[list[str]] = []
    if isinstance(doc, dict):
        for k, v in doc.items():
            found += _edgex_commands(v, k in ("run", "script"))
    elif isinstance(doc, list):
        for v in doc:
            found += _edgex_commands(v, in_script)
    elif isinstance(doc, str) and in_script:
        for line in doc.replace("\\\n", " ").splitlines():
            line = line.strip()
            if line.startswith("edgex "):
                found.append(shlex.split(line)[1:])
    return found


def _parses(args: list[str]) -> None:
    """The command and its options exist in this edgex (click parses them without running)."""
    from exporter.cli import cli

    command = cli.get_command(None, args[0])  # type: ignore[arg-type]
    assert command is not None, f"unknown command {args[0]}"
    command.make_context(args[0], list(args[1:]))


def test_example_ci_workflows_validate_against_their_schemas(tmp_path, monkeypatch):
    github, gitlab = _validator("github-workflows"), _validator("gitlab-ci")
    ci = ROOT / "examples" / "ci"
    workflow = _load(ci / "github-release-matrix.yml")
    assert list(github.iter_errors(workflow)) == []
    assert "fromJson(needs.plan.outputs.matrix-1)" in workflow["jobs"]["build-1"]["strategy"]["matrix"]
    broken = json.loads(json.dumps(workflow))
    broken["jobs"]["merge"]["runs_on"] = broken["jobs"]["merge"].pop("runs-on")
    assert list(github.iter_errors(broken)), "the schema must catch a misspelt key"
    for name in ("gitlab-ci.yml", "gitlab-edgex-cell.yml"):
        assert list(gitlab.iter_errors(_load(ci / name))) == [], name
    runners = matrix_plan.load_runners(ci / "runners.yaml")
    assert runners.profiles["raspberry-pi-5-cpu"].resources == {"board-rpi5": 1}

    commands = _edgex_commands(workflow) + _edgex_commands(_load(ci / "gitlab-ci.yml"))
    assert {c[0] for c in commands} >= {"plan", "build", "merge", "verify"}
    for args in commands:
        _parses(args)
    with pytest.raises(click.exceptions.NoSuchOption):
        _parses(["merge", "out/a/manifest.json", "--output", "release.json"])

    root = make_projects(tmp_path)
    proc = run_cli(
        "plan", "a/recipe.yaml", "b/recipe.yaml", "--runners", str(ci / "runners.yaml"),
        "-o", "plan.json", "--gitlab", "child.yml", cwd=root,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    child = _load(root / "child.yml")
    assert list(gitlab.iter_errors(child)) == []
    jobs = {k: v for k, v in child.items() if k.startswith("cell ")}
    assert sorted(jobs) == [
        "cell tiny--raspberry-pi-5-cpu",
        "cell tiny--sa8295p-qnn",
        "cell tiny-b--raspberry-pi-5-cpu",
        "cell tiny-b--sa8295p-qnn",
    ]
    assert jobs["cell tiny--raspberry-pi-5-cpu"]["tags"] == ["self-hosted", "rpi5"]
    assert jobs["cell tiny--sa8295p-qnn"]["tags"] == ["ubuntu-latest"]
    for job in jobs.values():
        for line in job["script"]:
            _parses(shlex.split(line)[1:])
