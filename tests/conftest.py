"""Shared, session-scoped builds: the expensive work (export, calibration, benchmarking) runs once."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent
FAST_BENCH = {"warmup_runs": 2, "min_runs": 20, "min_seconds": 0.05, "max_seconds": 2.0}


def write_tiny_project(folder: Path, **overrides) -> Path:
    """A recipe for TinyNet with .npz data beside it; overrides replace top-level recipe keys."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(TESTS / "tiny_models.py", folder / "tiny_models.py")
    rng = np.random.default_rng(0)
    np.savez(folder / "calib.npz", image=rng.standard_normal((32, 3, 16, 16)).astype(np.float32))
    ev = rng.standard_normal((40, 3, 16, 16)).astype(np.float32)
    np.savez(folder / "eval.npz", image=ev, labels=rng.integers(0, 5, 40))
    recipe = {
        "version": 1,
        "name": "tiny",
        "model": {"source": "torch", "factory": "tiny_models.py:build_tiny"},
        "inputs": [{"name": "image", "shape": [1, 3, 16, 16], "dtype": "float32", "dynamic_axes": {0: "batch"}}],
        "outputs": ["logits"],
        "data": {"calibration": {"npz": "calib.npz"}, "evaluation": {"npz": "eval.npz"}},
        "metric": "cosine",
        "quantize": {"calibration_samples": 16},
        "bench": dict(FAST_BENCH),
        "profiles": ["raspberry-pi-5-cpu", "sa8295p-qnn"],
        "output": "out",
        "seed": 0,
    }
    recipe.update(overrides)
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def run_cli(*args: str, env: dict | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run the real console entry point in a child process, as users and CI do."""
    import os

    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "exporter.cli", *args],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=cwd or ROOT,
        timeout=600,
    )


class CompressedBuild(NamedTuple):
    manifest: dict
    profile: dict
    variants: dict[str, dict]
    record: dict


def build_compressed(recipe: Path, cache: Path) -> CompressedBuild:
    """A one-profile build with a `compress:` section, through the CLI with its own compression cache.

    Exit 1 is accepted: a budget missed on a busy host says nothing about compression. Parity of the
    student's export is checked here because every compressed build must have it.
    """
    proc = run_cli("build", str(recipe), "--json", env={"EDGEX_CACHE_DIR": str(cache)})
    assert proc.returncode in (0, 1), proc.stderr[-3000:]
    manifest = json.loads(proc.stdout)
    prof = manifest["profiles"][0]
    variants = {v["name"]: v for v in prof["variants"]}
    assert variants["compressed"]["produced_by"]["parity"]["ok"], recipe
    return CompressedBuild(manifest, prof, variants, manifest["compression"][prof["compression"]])


@pytest.fixture(scope="session")
def tiny_build(tmp_path_factory):
    """TinyNet built once for a CPU board and a QNN car chip, through the CLI with --json."""
    folder = tmp_path_factory.mktemp("tiny")
    recipe = write_tiny_project(folder)
    proc = run_cli("build", str(recipe), "--json")
    assert proc.returncode == 0, proc.stderr + proc.stdout
    return {"recipe": recipe, "out": folder / "out", "manifest": json.loads(proc.stdout), "stderr": proc.stderr}


@pytest.fixture(scope="session")
def digits_build(tmp_path_factory):
    """The bundled demo recipe with default bench settings, for its three profiles and three more runtimes."""
    out = tmp_path_factory.mktemp("digits") / "out"
    # The recipe's own phone, car chip and board, plus one profile for each other runtime, in one build.
    ids = [
        "snapdragon-8-gen3-qnn",
        "sa8295p-qnn",
        "raspberry-pi-5-cpu",
        "snapdragon-7s-gen2-nnapi",
        "apple-a17-pro-coreml",
        "jetson-orin-nano-tensorrt",
    ]
    args = [a for i in ids for a in ("--profile", i)]
    proc = run_cli("build", str(ROOT / "examples" / "digits.yaml"), *args, "--out", str(out))
    manifest = out / "manifest.json"
    return {"proc": proc, "out": out, "manifest": json.loads(manifest.read_text()) if manifest.is_file() else None}
