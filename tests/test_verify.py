"""`edgex verify`: a release is exactly the bytes its manifest lists."""

from __future__ import annotations

import json
import shutil

import pytest
from conftest import run_cli


@pytest.fixture()
def release(tiny_build, tmp_path):
    copy = tmp_path / "release"
    shutil.copytree(tiny_build["out"], copy)
    return copy


def test_untouched_release_verifies(release):
    proc = run_cli("verify", str(release), "--json")
    assert proc.returncode == 0, proc.stdout
    result = json.loads(proc.stdout)
    assert result["ok"] and result["files"] >= 10 and result["problems"] == []


# One flipped byte in any file, the manifest included: tests/hostile/test_integrity.py.


def test_missing_and_extra_files_are_caught(release):
    (release / "raspberry-pi-5-cpu" / "int8.onnx").unlink()
    (release / "raspberry-pi-5-cpu" / "planted.onnx").write_bytes(b"not from this build")
    proc = run_cli("verify", str(release))
    assert proc.returncode == 1
    assert "int8.onnx: missing" in proc.stdout and "planted.onnx: not listed in the manifest" in proc.stdout


def test_verify_needs_a_release(tmp_path):
    proc = run_cli("verify", str(tmp_path))
    assert proc.returncode == 2 and "no manifest.json" in proc.stderr
