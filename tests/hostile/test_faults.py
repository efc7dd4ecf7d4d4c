"""Class 4, faults: a build killed at seeded random moments never leaves a partial release under
its name, the next build repairs what was left and succeeds; write errors name the path."""

from __future__ import annotations

import errno
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT

from exporter.errors import UsageError
from exporter.staging import staged_output
from exporter.verify import verify

from .conftest import assert_one_line_error, write_onnx_project

KILLS = 20


def _start(recipe: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "exporter.cli", "-q", "build", str(recipe)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def test_killed_builds_leave_the_previous_release_or_the_new_one(tmp_path):
    """KILLS SIGKILLs of the build's whole process group at seeded random moments, two lanes at a time
    (two projects building side by side): after every kill the final
    name holds a complete release that `verify` accepts, and a rerun succeeds and cleans up."""
    lanes = [write_onnx_project(tmp_path / f"lane{i}", quantize={"enabled": False}) for i in range(2)]
    start = time.monotonic()
    first = [_start(recipe) for recipe in lanes]
    assert [p.wait() for p in first] == [0, 0]
    duration = time.monotonic() - start
    for recipe in lanes:
        assert verify(recipe.parent / "out")["ok"]
    rng = random.Random(1234)
    completed = kills = 0
    while kills < KILLS:
        delays = sorted((rng.uniform(0.2, duration * 1.05), i) for i in range(len(lanes)))
        procs = {i: _start(lanes[i]) for _, i in delays}
        begun = time.monotonic()
        for delay, i in delays:
            time.sleep(max(0.0, begun + delay - time.monotonic()))
            os.killpg(procs[i].pid, signal.SIGKILL)  # the build and every child it started
        for i, proc in procs.items():
            completed += proc.wait() == 0
            kills += 1
            # Under the final name there is always a complete, verifiable release.
            result = verify(lanes[i].parent / "out")
            assert result["ok"], result
    for recipe in lanes:
        assert _start(recipe).wait() == 0, "a rerun after the interruptions failed"
        out = recipe.parent / "out"
        assert verify(out)["ok"]
        assert sorted(p.name for p in out.parent.glob(".out.edgex-*")) == [], "stale staging folders left"
    assert kills >= 20 and completed < kills  # most kills landed mid-build


def test_a_kill_between_the_two_renames_is_repaired(tmp_path, release):
    """Where the filesystem cannot swap atomically, the previous release waits in `.out.edgex-old-*/previous`;
    the next build under the lock moves it back before doing anything else."""
    import shutil

    out = tmp_path / "out"
    parked = tmp_path / ".out.edgex-old-abc123"
    parked.mkdir()
    shutil.copytree(release["out"], parked / "previous")
    (tmp_path / ".out.edgex-tmp-dead").mkdir()
    (tmp_path / ".out.edgex-tmp-dead" / "half.onnx").write_bytes(b"half")
    with staged_output(out) as stage:
        assert out.is_dir() and verify(out)["ok"]  # restored before the new build writes anything
        (stage / "manifest.json").write_text('{"schema_version": 1, "files": []}')
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EACCES])
def test_write_errors_name_the_path_and_leave_nothing(tmp_path, code):
    out = tmp_path / "out"
    with pytest.raises(UsageError) as err:
        with staged_output(out) as stage:
            (stage / "pi").mkdir()
            raise OSError(code, os.strerror(code), str(stage / "pi" / "baseline.onnx"))
    assert str(out / "pi" / "baseline.onnx") in str(err.value) and err.value.exit_code == 2
    assert list(tmp_path.iterdir()) == []


def test_file_too_large_during_a_real_build(tmp_path):
    """RLIMIT_FSIZE makes every write past 4 KB fail (EFBIG) inside the real CLI: exit 2, nothing left."""
    recipe = write_onnx_project(tmp_path / "proj", quantize={"enabled": False})
    script = (
        "import resource, sys; resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096)); "
        "from exporter.cli import main; sys.argv[0] = 'edgex'; main(sys.argv[1:])"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script, "build", str(recipe)], capture_output=True, text=True, cwd=ROOT, timeout=300
    )
    assert_one_line_error(proc, 2, "cannot write", "free space")
    assert not (recipe.parent / "out").exists()
    assert sorted(p.name for p in recipe.parent.glob(".out.edgex-*")) == []
