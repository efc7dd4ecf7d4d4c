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

from .conftest import assert_one_line_error, edgex, write_onnx_project

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
    recipe = write_onnx_project(tmp_path / "proj", quantize={"enabled": False})
    out = recipe.parent / "out"
    start = time.monotonic()
    assert _start(recipe).wait() == 0
    duration = time.monotonic() - start
    assert verify(out)["ok"]
    rng = random.Random(1234)
    completed = 0
    for _ in range(KILLS):
        proc = _start(recipe)
        time.sleep(rng.uniform(0.2, duration * 1.05))
        os.killpg(proc.pid, signal.SIGKILL)  # the build and every child it started
        code = proc.wait()
        completed += code == 0
        # Under the final name there is always a complete, verifiable release.
        result = verify(out)
        assert result["ok"], result
    proc = _start(recipe)
    assert proc.wait() == 0, "a rerun after the interruptions failed"
    assert verify(out)["ok"]
    assert sorted(p.name for p in out.parent.glob(".out.edgex-*")) == [], "stale staging folders were not cleaned"
    assert completed < KILLS  # most kills landed mid-build


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


def test_a_second_build_into_the_same_folder_is_refused_while_the_first_runs(tmp_path):
    recipe = write_onnx_project(tmp_path / "proj", quantize={"enabled": False})
    first = _start(recipe)
    try:
        deadline = time.monotonic() + 60
        while not list(recipe.parent.glob(".out.edgex-tmp-*")) and time.monotonic() < deadline:
            time.sleep(0.05)
        proc = edgex("build", str(recipe))
        if first.poll() is None:
            assert_one_line_error(proc, 2, "another edgex build")
    finally:
        first.wait()
