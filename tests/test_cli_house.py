"""The CLI package and the sandbox after the rebuild: `python -m exporter.cli` still answers, every
command family joins the group, and the sandbox child runs only jobs edgex marked, by reference."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import onnx
import pytest

from exporter import isolate
from exporter.sandbox_jobs import inspect_job

ALL_COMMANDS = {
    "bench",
    "build",
    "compare",
    "diagnose",
    "gguf",
    "inspect",
    "merge",
    "plan",
    "profiles",
    "quantize",
    "run",
    "schema",
    "sign",
    "targets",
    "validate",
    "verify",
}


def _child(job: str, payload: dict | None = None) -> subprocess.CompletedProcess:
    """The sandbox child exactly as the parent starts it, asked for JOB."""
    return subprocess.run(
        [sys.executable, "-I", "-m", "exporter.isolate", job],
        input=json.dumps(payload or {}),
        capture_output=True,
        text=True,
        timeout=120,
    )


def _tiny(path: Path) -> Path:
    from tiny_models import matmul_onnx

    onnx.save(matmul_onnx(4), str(path))
    return path


def test_python_m_exporter_cli_is_the_console_script():
    proc = subprocess.run([sys.executable, "-m", "exporter.cli", "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("Usage: edgex [OPTIONS] COMMAND [ARGS]...")
    listed = {line.split()[0] for line in proc.stdout.split("Commands:")[1].splitlines() if line.strip()}
    assert listed == ALL_COMMANDS


def test_every_family_registers_its_commands_once():
    from exporter.cli import build, catalog, cli, llm, model, release

    families = [c.name for f in (build, catalog, model, release, llm) for c in f.COMMANDS]
    assert sorted(families) == sorted(ALL_COMMANDS) and len(families) == len(set(families))
    assert set(cli.commands) == ALL_COMMANDS


@pytest.mark.parametrize(
    "job, says",
    [
        ("this:x", "not a function of the exporter package"),  # outside edgex: not even imported
        ("os:system", "not a function of the exporter package"),
        ("exporter.onnx_io:check_onnx_file", "not a sandbox job"),  # edgex's, but not marked
        ("exporter.sandbox_jobs:inspect_job.__globals__", "not a function of the exporter package"),
        ("exporter.sandbox_jobs", "not a function of the exporter package"),
    ],
)
def test_the_child_refuses_a_job_edgex_did_not_mark(job, says):
    proc = _child(job, {"path": "/nonexistent"})
    assert proc.returncode == 1
    error = json.loads(proc.stdout.strip().splitlines()[-1])["error"]
    assert error["kind"] == "internal" and says in error["message"]
    assert "Beautiful is better than ugly" not in proc.stderr  # `import this` never ran


def test_the_parent_refuses_an_unmarked_job_before_any_child_starts(tmp_path):
    def not_a_job(payload: dict) -> dict:
        return payload

    with pytest.raises(ValueError, match="not marked"):
        isolate.run_isolated(not_a_job, {}, tmp_path / "m.onnx")
    with pytest.raises(ValueError, match="exporter package"):
        isolate.run_isolated("subprocess:run", {}, tmp_path / "m.onnx")
    assert isolate.job_reference(inspect_job) == "exporter.sandbox_jobs:inspect_job"


def test_a_marked_job_runs_in_the_child_and_answers_in_json(tmp_path):
    info = isolate.run_on_model(inspect_job, _tiny(tmp_path / "tiny.onnx"), {})
    assert info["parameters"] == 16 and info["op_histogram"] == {"MatMul": 1}  # a 4x4 weight


def test_the_guard_imports_no_job():
    """The sandbox is a foundation: it imports nothing above foundations, so no job module."""
    import ast

    source = Path(isolate.__file__).read_text()
    imported = {n.module for n in ast.walk(ast.parse(source)) if isinstance(n, ast.ImportFrom) and n.module} | {
        a.name for n in ast.walk(ast.parse(source)) if isinstance(n, ast.Import) for a in n.names
    }
    edgex = {m for m in imported if m.startswith("exporter")}
    assert edgex <= {"exporter", "exporter.errors", "exporter.limits", "exporter.log", "exporter.onnx_io"}
