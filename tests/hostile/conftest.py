"""Shared pieces of the hostile-input suite: canaries, tiny ONNX projects, one release built once.

This folder is a package (``__init__.py``) so pytest puts ``tests/`` on sys.path and the parent
``tests/conftest.py`` (``run_cli``, ``write_tiny_project``, session fixtures) stays importable as
``conftest`` without a name clash with this file.
"""

from __future__ import annotations

import json
import os
import secrets
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli, write_tiny_project
from test_bad_inputs import tiny_onnx_bytes

SDE = "1700000000"
QUICK_BENCH = {"warmup_runs": 1, "min_runs": 5, "min_seconds": 0.01, "max_seconds": 0.5}


@dataclass
class Canary:
    """A file outside every allowed folder, holding a secret that must never show up anywhere."""

    path: Path
    secret: bytes

    def assert_absent(self, proc_or_text, *folders: Path) -> None:
        texts = [proc_or_text] if isinstance(proc_or_text, str) else [proc_or_text.stdout, proc_or_text.stderr]
        for text in texts:
            assert self.secret.decode() not in text, "canary content leaked into the output"
        for folder in folders:
            if not folder.exists():
                continue
            for f in folder.rglob("*"):
                if f.is_file() and not f.is_symlink() and not f.samefile(self.path):  # the planted link itself
                    assert self.secret not in f.read_bytes(), f"canary content leaked into {f}"


@pytest.fixture()
def canary(tmp_path_factory) -> Canary:
    folder = tmp_path_factory.mktemp("outside")
    secret = ("CANARY-" + secrets.token_hex(16)).encode()
    path = folder / "secret.bin"
    path.write_bytes(secret * 64)  # 64 x 39 bytes: big enough to back a 16x16 float tensor
    return Canary(path, secret)


def assert_one_line_error(proc, code: int, *says: str) -> str:
    """Exit code, exactly one `edgex: error:` line (the last), no traceback, JSON error when asked."""
    report = f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert proc.returncode == code, report
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout, report
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("edgex: error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], report
    message = errors[0][len("edgex: error: ") :]
    for text in says:
        assert text in message, f"{text!r} not in {message!r}"
    if proc.stdout.strip().startswith("{"):
        assert json.loads(proc.stdout)["error"]["exit_code"] == code
    return message


def assert_no_output(out: Path) -> None:
    assert not out.exists(), f"{out} was created"
    assert sorted(p.name for p in out.parent.glob(f".{out.name}.edgex-*")) == [], "staging leftovers"


def write_onnx_project(folder: Path, model: bytes | None = None, **overrides) -> Path:
    """A recipe for the 16x16 MatMul ONNX model with .npz data; no torch export, so builds are quick."""
    folder.mkdir(parents=True, exist_ok=True)
    settings = {
        "profiles": ["raspberry-pi-5-cpu"],
        "model": {"source": "onnx", "path": "model/model.onnx"},
        "inputs": [{"name": "x", "shape": [1, 16], "dtype": "float32"}],
        "outputs": ["y"],
        "quantize": {"calibration_samples": 8},
        "bench": dict(QUICK_BENCH),
    }
    settings.update(overrides)
    recipe = write_tiny_project(folder, **settings)
    (folder / "model").mkdir(exist_ok=True)
    (folder / "model" / "model.onnx").write_bytes(tiny_onnx_bytes() if model is None else model)
    rng = np.random.default_rng(0)
    np.savez(folder / "calib.npz", x=rng.standard_normal((16, 16)).astype(np.float32))
    np.savez(folder / "eval.npz", x=rng.standard_normal((16, 16)).astype(np.float32))
    return recipe


def edgex(*args: str, env: dict | None = None):
    """The real CLI in a child process (tracebacks, exit codes and stdout exactly as users see them)."""
    return run_cli(*args, env=env)


@pytest.fixture(scope="session")
def release(tmp_path_factory):
    """The MatMul project built once (static INT8 + dynamic INT8, speed guard on) with SOURCE_DATE_EPOCH."""
    folder = tmp_path_factory.mktemp("release")
    recipe = write_onnx_project(folder)
    proc = edgex("build", str(recipe), "--json", env={"SOURCE_DATE_EPOCH": SDE})
    assert proc.returncode in (0, 1), proc.stderr + proc.stdout
    return {"recipe": recipe, "out": folder / "out", "manifest": json.loads(proc.stdout)}


def python() -> str:
    return sys.executable


def env_with(**values: str) -> dict:
    env = dict(os.environ)
    env.update(values)
    return env
