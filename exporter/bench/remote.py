"""Where `edgex bench` runs the model: a registry of runners, keyed by the `--runner` URL's scheme.

  local                    this machine, edgex's own timing loop (exporter.measure.time_interleaved)
  ssh://[user@]host[:port] a board with Python, numpy and onnxruntime: the model, board_script.py and
                           power.py go over one ssh connection (a tar stream on stdin, unpacked into a
                           temporary folder that is removed afterwards), the script runs there with the
                           profile's threads, warm-up, runs and seconds and the input shapes resolved
                           here, and its raw samples come back

Each runner returns a `RawRun`; exporter.bench_file turns it into the same result either way.
The ssh runner uses the system's OpenSSH client, so the user's ~/.ssh/config, agent and
ProxyJump apply. It always runs in BatchMode (never waits for a password) and never turns host-key
checking off: an unknown board is refused until its key is pinned (known_hosts, `--known-hosts`),
or the user says `--accept-new-host-key` (trust on first use, stated in the result).
An adb runner would be one more function in RUNNERS.
"""

from __future__ import annotations

import io
import json
import shlex
import subprocess
import tarfile
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np

from exporter.errors import UsageError
from exporter.recipe import BenchSection

HERE = Path(__file__).resolve().parent
# Unpack the tar on stdin into a fresh folder, run the board script there, always clean up.
BOOTSTRAP = (
    "import sys,tarfile,tempfile,shutil\n"
    "d=tempfile.mkdtemp(prefix='edgex-bench-')\n"
    "try:\n"
    " t=tarfile.open(fileobj=sys.stdin.buffer,mode='r|')\n"
    " kw={'filter':'data'} if hasattr(tarfile,'data_filter') else {}\n"
    " t.extractall(d,**kw)\n"
    " sys.path.insert(0,d)\n"
    " import board_script\n"
    " rc=board_script.main(d)\n"
    "finally:\n"
    " shutil.rmtree(d,ignore_errors=True)\n"
    "sys.exit(rc)\n"
)


@dataclass(frozen=True)
class RunnerOptions:
    """How to reach a board; every field maps to one ssh option, nothing hidden."""

    remote_python: str = "python3"
    ssh_config: Path | None = None
    identity: Path | None = None
    known_hosts: Path | None = None
    accept_new_host_key: bool = False
    connect_timeout: int = 10


@dataclass(frozen=True)
class BenchJob:
    """What to time, whichever runner times it."""

    path: Path
    threads: int
    settings: BenchSection
    power: dict | tuple | None  # ssh: what the board should measure; local: (meter, unmeasured, rate)
    affinity: list[int] | None = None
    shapes: dict[str, list[int]] = field(default_factory=dict)  # every input's sizes (exporter.shapes)
    values: dict[str, int | float] = field(default_factory=dict)  # inputs fed as given (`--value`)


@dataclass(frozen=True)
class RawRun:
    samples_ms: np.ndarray
    seconds: float
    threads: int
    memory: dict
    power: dict | None
    runner: dict = field(default_factory=dict)
    affinity: dict = field(default_factory=dict)  # exporter.bench.affinity.plan on the machine that timed


def parse_runner(url: str) -> tuple[str, dict]:
    """'local' or 'ssh://[user@]host[:port]' -> (scheme, parts); anything else is a usage error."""
    if url == "local":
        return "local", {}
    parts = urlsplit(url)
    fix = "use --runner local or --runner ssh://user@host[:port]"
    if parts.scheme not in RUNNERS or parts.scheme == "local":
        raise UsageError(f"unknown runner '{url}' (known: local, ssh://)", field="--runner", fix=fix)
    try:
        port = parts.port
    except ValueError:
        raise UsageError(f"bad port in '{url}'", field="--runner", fix=fix) from None
    if not parts.hostname or parts.path not in ("", "/") or parts.password:
        raise UsageError(f"cannot read '{url}' as ssh://[user@]host[:port]", field="--runner", fix=fix)
    return parts.scheme, {"user": parts.username, "host": parts.hostname, "port": port}


def ssh_command(parts: dict, options: RunnerOptions, remote: str) -> list[str]:
    cmd = ["ssh", "-o", "BatchMode=yes", "-o", f"ConnectTimeout={options.connect_timeout}"]
    if options.ssh_config is not None:
        cmd += ["-F", str(options.ssh_config)]
    if options.identity is not None:
        cmd += ["-i", str(options.identity), "-o", "IdentitiesOnly=yes"]
    if options.known_hosts is not None:
        cmd += ["-o", f"UserKnownHostsFile={options.known_hosts}"]
    # ssh keeps the first value it is given for an option: say it once.
    if options.accept_new_host_key:
        cmd += ["-o", "StrictHostKeyChecking=accept-new"]
    elif options.known_hosts is not None:
        cmd += ["-o", "StrictHostKeyChecking=yes"]
    if parts["port"] is not None:
        cmd += ["-p", str(parts["port"])]
    dest = f"{parts['user']}@{parts['host']}" if parts["user"] else parts["host"]
    return [*cmd, dest, "--", remote]


def _bundle(model: Path, settings: dict, out) -> None:
    """model.onnx, board_script.py, power.py, affinity.py and settings.json as a tar, written to `out` (a file)."""
    with tarfile.open(fileobj=out, mode="w") as tar:
        tar.add(model, arcname="model.onnx")
        tar.add(HERE / "board_script.py", arcname="board_script.py")
        tar.add(HERE / "power.py", arcname="power.py")
        tar.add(HERE / "affinity.py", arcname="affinity.py")
        data = json.dumps(settings).encode()
        info = tarfile.TarInfo("settings.json")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))


def _ssh_failure(stderr: str, where: str) -> UsageError:
    """ssh's own failures (exit 255) as one line with the fix; its last stderr line is the reason."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    last = lines[-1] if lines else "ssh failed without a message"
    text = stderr.lower()
    if "host key verification failed" in text or "remote host identification has changed" in text:
        fix = (
            "pin the board's host key in known_hosts after checking its fingerprint "
            "(ssh-keyscan -p PORT HOST >> ~/.ssh/known_hosts), pass --known-hosts FILE, "
            "or accept a first-seen key explicitly with --accept-new-host-key"
        )
        return UsageError(f"host key of {where} not trusted: {last}", field="--runner", fix=fix)
    if "permission denied" in text or "too many authentication failures" in text:
        return UsageError(
            f"authentication to {where} failed: {last}",
            field="--runner",
            fix="give a key the board accepts (--identity KEY, your ssh agent or --ssh-config FILE)",
        )
    return UsageError(
        f"cannot reach {where}: {last}", field="--runner", fix="check the address and port, and that sshd runs there"
    )


def run_ssh(job: BenchJob, parts: dict, options: RunnerOptions) -> RawRun:
    where = (
        (f"{parts['user']}@" if parts["user"] else "") + parts["host"] + (f":{parts['port']}" if parts["port"] else "")
    )
    settings, power = job.settings, job.power
    payload = {
        "threads": job.threads,
        "cpu_affinity": job.affinity,
        "warmup_runs": settings.warmup_runs,
        "min_runs": settings.min_runs,
        "min_seconds": settings.min_seconds,
        "max_seconds": settings.max_seconds,
        "seed": 0,
        "shapes": job.shapes,
        "values": job.values,
        "power": power,
    }
    remote = f"{options.remote_python} -c {shlex.quote(BOOTSTRAP)}"
    cmd = ssh_command(parts, options, remote)
    budget = settings.warmup_runs * 5 + settings.max_seconds * 2 + (power or {}).get("idle_seconds", 0) + 120
    with tempfile.TemporaryFile() as stdin:
        _bundle(job.path, payload, stdin)
        stdin.seek(0)
        try:
            proc = subprocess.run(cmd, stdin=stdin, capture_output=True, timeout=budget)
        except FileNotFoundError:
            raise UsageError(
                "no ssh client on this machine", field="--runner", fix="install OpenSSH's client (ssh)"
            ) from None
        except subprocess.TimeoutExpired:
            raise UsageError(
                f"{where} did not finish within {budget:.0f} s", field="--runner", fix="lower --runs/--seconds"
            ) from None
    stdout = proc.stdout.decode(errors="replace").strip().splitlines()
    stderr = proc.stderr.decode(errors="replace")
    if proc.returncode == 255:
        raise _ssh_failure(stderr, where)
    if proc.returncode == 127:
        raise UsageError(
            f"`{options.remote_python}` not found on {where}",
            field="--remote-python",
            fix="give the board's Python 3 (e.g. --remote-python /usr/bin/python3)",
        )
    try:
        result = json.loads(stdout[-1])
    except (IndexError, json.JSONDecodeError):
        tail = (stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"the board script on {where} exited {proc.returncode}: {tail}") from None
    if not result.get("ok"):
        err = result["error"]
        if err["kind"] == "missing-module":
            raise UsageError(
                f"{err['message']} on {where}",
                field="--runner",
                fix="pip install numpy onnxruntime on the board, or point --remote-python at a Python that has them",
            )
        if err["kind"] == "power-sensor":
            raise UsageError(
                f"{err['message']} on {where}",
                field="--power-sensor",
                fix="name a sensor the board has, or leave it out",
            )
        raise RuntimeError(f"the board script failed on {where}: {err['message']}")
    board = result["board"]
    runner = {
        "kind": "ssh",
        "target": where,
        "python": options.remote_python,
        "host_key": "accepted if new (--accept-new-host-key)" if options.accept_new_host_key else "checked",
        **board,
    }
    return RawRun(
        np.asarray(result["samples_ms"], dtype=np.float64),
        float(result["seconds"]),
        int(result["threads"]),
        result["memory"],
        result["power"],
        runner,
        result.get("affinity", {}),
    )


def run_local(job: BenchJob, parts: dict, options: RunnerOptions) -> RawRun:
    """This machine: the same loop a build uses; `job.power` is (meter, unmeasured, rate) from profile_meter."""
    from exporter.bench.affinity import plan
    from exporter.bench.board_script import synthetic_feed
    from exporter.bench.memory import peak_memory
    from exporter.measure import time_interleaved
    from exporter.runtime import host_threads

    threads = host_threads(job.threads)
    feed = synthetic_feed(job.path, shapes=job.shapes, values=job.values)
    meter, unmeasured, rate = job.power if job.power is not None else (None, None, None)
    pinning = plan(job.affinity)
    timed = time_interleaved({"model": job.path}, feed, threads, job.settings, meter=meter, affinity=pinning)
    stats = timed["model"]
    measured = meter.result("model", rate) if meter is not None else unmeasured
    memory = peak_memory(job.path, threads, feed)
    return RawRun(stats.samples, stats.seconds, threads, memory, measured, {"kind": "local"}, pinning)


RUNNERS: dict[str, Callable[[BenchJob, dict, RunnerOptions], RawRun]] = {"local": run_local, "ssh": run_ssh}
