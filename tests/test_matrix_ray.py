"""The Ray executor on a real local cluster: one task per cell, a board admits one cell at a time.

Skipped only where the `ray` extra is not installed (CI installs it through `.[all]`).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from conftest import run_cli, write_tiny_project

ray = pytest.importorskip("ray")

from exporter.matrix.executors import run_plan  # noqa: E402
from exporter.matrix.plan import make_plan, write_json  # noqa: E402
from exporter.verify import verify  # noqa: E402

FAST_QUANT = {"calibration_samples": 16, "dynamic": False, "speed_guard": False}
BOARD_CELLS = ["ray-a--raspberry-pi-5-cpu", "ray-b--raspberry-pi-5-cpu"]


def test_edgex_run_starts_its_own_cluster_with_the_given_resources(tmp_path):
    """`edgex run --executor ray` (CLI) starts a local cluster with -j CPUs and --resource capacities.

    First in this file, before the module's in-process cluster exists. The cell asks for a board
    the new cluster lacks, so it fails alone with a fix, without building anything.
    """
    write_tiny_project(tmp_path / "a", name="ray-cli", quantize=FAST_QUANT, profiles=["raspberry-pi-5-cpu"])
    (tmp_path / "runners.yaml").write_text(yaml.safe_dump({"default": {"resources": {"board-orin": 1}}}))
    env = {"EDGEX_CACHE_DIR": str(tmp_path / "cache")}
    plan = run_cli("plan", "a/recipe.yaml", "--runners", "runners.yaml", "-o", "plan.json", cwd=tmp_path)
    assert plan.returncode == 0, plan.stderr
    proc = run_cli(
        "run", "--plan", "plan.json", "--executor", "ray", "-j", "1", "--resource", "board-rpi5=1", "--json",
        env=env, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-2000:]
    (cell,) = json.loads(proc.stdout)["cells"]
    assert cell["exit_code"] == 2 and "no resource board-orin" in cell["error"]


@pytest.fixture(scope="module")
def cluster():
    """A real local cluster: 2 CPUs and one fake board (Ray's local mode no longer exists)."""
    ray.init(num_cpus=2, resources={"board": 1}, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_ray_never_runs_two_cells_on_one_board_and_a_failure_hides_nothing(cluster, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("EDGEX_CACHE_DIR", str(tmp_path / "cache"))
    write_tiny_project(tmp_path / "a", name="ray-a", quantize=FAST_QUANT, profiles=["raspberry-pi-5-cpu"])
    write_tiny_project(tmp_path / "b", name="ray-b", quantize=FAST_QUANT, profiles=["raspberry-pi-5-cpu"], seed=3)
    write_tiny_project(
        tmp_path / "c",
        name="ray-broken",
        quantize=FAST_QUANT,
        profiles=["sa8295p-qnn"],
        model={"source": "torch", "factory": "bad.py:build"},
    )
    (tmp_path / "c" / "bad.py").write_text("def build():\n    raise RuntimeError('no such weights')\n")
    runners = tmp_path / "runners.yaml"
    runners.write_text(
        yaml.safe_dump(
            {
                "default": {"labels": ["self-hosted", "board"], "resources": {"board": 1}},
                "profiles": {"sa8295p-qnn": {"labels": ["ubuntu-latest"], "resources": {}}},
            }
        )
    )
    recipes = [Path("a/recipe.yaml"), Path("b/recipe.yaml"), Path("c/recipe.yaml")]
    write_json(Path("plan.json"), make_plan(recipes, runners_file=runners))

    result = run_plan(Path("plan.json"), "ray", Path("out"))
    cells = {c["cell"]: c for c in result["cells"]}
    assert result["dispatched"] == 3 and result["failed"] == 1 and result["exit_code"] == 2
    broken = cells["ray-broken--sa8295p-qnn"]
    assert broken["exit_code"] == 2 and "no such weights" in broken["error"]
    for cell in BOARD_CELLS:
        assert cells[cell]["exit_code"] == 0 and cells[cell]["ok"], cells[cell]
        assert verify(Path("out") / cell)["ok"]
    (first, second) = sorted((cells[c]["started"], cells[c]["ended"]) for c in BOARD_CELLS)
    assert first[1] <= second[0], f"two cells held the board at once: {first} and {second}"

    # The same cells again, in a plan without the broken one: nothing reaches Ray.
    write_json(Path("plan2.json"), make_plan(recipes[:2], runners_file=runners))
    again = run_plan(Path("plan2.json"), "ray", Path("out"))
    assert again["dispatched"] == 0 and again["cached"] == 2 and again["ok"] and again["exit_code"] == 0
    manifest = json.loads((Path("out") / BOARD_CELLS[0] / "manifest.json").read_text())
    assert manifest["cell"]["key"] == json.loads(Path("plan2.json").read_text())["cells"][0]["key"]


def test_a_resource_the_cluster_lacks_fails_that_cell_only(cluster, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("EDGEX_CACHE_DIR", str(tmp_path / "cache"))
    write_tiny_project(tmp_path / "a", name="ray-c", quantize=FAST_QUANT, profiles=["raspberry-pi-5-cpu"])
    runners = tmp_path / "runners.yaml"
    runners.write_text(yaml.safe_dump({"default": {"resources": {"board-orin": 1}}}))
    write_json(Path("plan.json"), make_plan([Path("a/recipe.yaml")], runners_file=runners))
    result = run_plan(Path("plan.json"), "ray", Path("out"))
    (cell,) = result["cells"]
    assert cell["exit_code"] == 2 and "board-orin" in cell["error"] and "ray start --resources" in cell["error"]
