"""`edgex bench --runner ssh://...` against a real SSH server on 127.0.0.1 (asyncssh, in this process),
driven by the system's OpenSSH client. The server runs each command with a shell on this machine,
so the test's own Python plays the board's python."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
import threading
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, run_cli
from test_power import _hwmon_tree, _tiny_onnx, power_profile, run_inprocess

from exporter.bench import power
from exporter.bench.remote import parse_runner
from exporter.errors import UsageError

asyncssh = pytest.importorskip("asyncssh", reason="the test extra installs asyncssh")


async def _handle(process) -> None:
    """Run the exec request's command in a shell, piping stdin/stdout/stderr both ways."""
    proc = await asyncio.create_subprocess_shell(
        process.command,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )

    async def pump_in() -> None:
        while chunk := await process.stdin.read(1 << 16):
            proc.stdin.write(chunk)
            await proc.stdin.drain()
        proc.stdin.close()

    async def pump_out(src, dst) -> None:
        while chunk := await src.read(1 << 16):
            dst.write(chunk)

    await asyncio.gather(pump_in(), pump_out(proc.stdout, process.stdout), pump_out(proc.stderr, process.stderr))
    process.exit(await proc.wait())


class _Server(asyncssh.SSHServer):
    def begin_auth(self, username: str) -> bool:
        return True  # public-key authentication is required for every user

    def password_auth_supported(self) -> bool:
        return False


@pytest.fixture(scope="module")
def ssh_board(tmp_path_factory):
    """Server host key pinned in a known_hosts file, one authorized client key, one refused key."""
    folder = tmp_path_factory.mktemp("ssh")
    host_key = asyncssh.generate_private_key("ssh-ed25519")
    client_key = asyncssh.generate_private_key("ssh-ed25519")
    stranger = asyncssh.generate_private_key("ssh-ed25519")
    for name, key in (("id_board", client_key), ("id_stranger", stranger)):
        (folder / name).write_bytes(key.export_private_key())
        os.chmod(folder / name, 0o600)
    loop = asyncio.new_event_loop()
    started = threading.Event()
    box: dict = {}

    async def start() -> None:
        box["server"] = await asyncssh.create_server(
            _Server,
            "127.0.0.1",
            0,
            server_host_keys=[host_key],
            authorized_client_keys=asyncssh.import_authorized_keys(client_key.export_public_key().decode()),
            process_factory=_handle,
            encoding=None,
        )
        started.set()

    thread = threading.Thread(target=lambda: (loop.run_until_complete(start()), loop.run_forever()), daemon=True)
    thread.start()
    assert started.wait(10)
    port = box["server"].sockets[0].getsockname()[1]
    pub = host_key.export_public_key().decode().split()[:2]
    (folder / "known_hosts").write_text(f"[127.0.0.1]:{port} {' '.join(pub)}\n")
    other = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode().split()[:2]
    (folder / "wrong_known_hosts").write_text(f"[127.0.0.1]:{port} {' '.join(other)}\n")
    model = _tiny_onnx(folder / "tiny.onnx")
    yield {"port": port, "folder": folder, "model": model}
    loop.call_soon_threadsafe(box["server"].close)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)


def _bench(
    board: dict,
    *extra: str,
    identity: str = "id_board",
    known: str = "known_hosts",
    port=None,
    capsys=None,
    profile: str = "raspberry-pi-5-cpu",
    profiles_dir: Path | None = None,
):
    """The CLI with the ssh runner; in this process when `capsys` is given (returns code, stdout, stderr)."""
    f = board["folder"]
    args = [
        *(["--profiles-dir", str(profiles_dir)] if profiles_dir else []),
        "bench",
        str(board["model"]),
        "--profile",
        profile,
        "--runner",
        f"ssh://tester@127.0.0.1:{port or board['port']}",
        "--ssh-config",
        os.devnull,  # the user's own ~/.ssh/config stays out of the test
        "--identity",
        str(f / identity),
        "--known-hosts",
        str(f / known),
        "--remote-python",
        sys.executable,
        "--runs",
        "40",
        "--seconds",
        "0.2",
        *extra,
    ]
    if capsys is not None:
        return run_inprocess(capsys, *args)
    return run_cli(*args)


def test_ssh_runner_returns_what_a_local_bench_returns(ssh_board, capsys):
    remote = _bench(ssh_board, "--json")  # once through a fresh interpreter, as users run it
    assert remote.returncode == 0, remote.stderr + remote.stdout
    args = ["bench", str(ssh_board["model"]), "--profile", "raspberry-pi-5-cpu", "--runs", "40", "--seconds", "0.2"]
    code, out, err = run_inprocess(capsys, *args, "--json")
    assert code == 0, err
    r, lo = json.loads(remote.stdout), json.loads(out)
    assert set(r) == set(lo) and set(r["latency_ms"]) == set(lo["latency_ms"])
    assert [v["budget"] for v in r["verdicts"]] == [v["budget"] for v in lo["verdicts"]]
    assert r["runner"]["kind"] == "ssh" and r["runner"]["target"] == f"tester@127.0.0.1:{ssh_board['port']}"
    assert r["runner"]["python"] == sys.executable and r["runner"]["host_key"] == "checked"
    import onnxruntime

    assert r["runner"]["onnxruntime"] == onnxruntime.__version__
    assert (r["threads"]["profile"], r["threads"]["host"]) == (4, min(4, os.cpu_count()))
    assert r["threads"]["affinity"]["requested"] is None and r["threads"] == lo["threads"]
    assert r["latency_ms"]["runs"] >= 40 and r["latency_ms"]["seconds"] >= 0.2
    assert r["latency_ms"]["basis"].startswith("device measurement") and "ssh" in r["latency_ms"]["basis"]
    assert r["latency_ms"]["interval95"][0] <= r["latency_ms"]["p90"] <= r["latency_ms"]["interval95"][1]
    assert r["memory"]["peak_rss_mb"] > r["memory"]["baseline_rss_mb"] > 0
    # On the board the measured latency replaces the roofline-over-host-efficiency latency.
    est = r["device_estimate"]
    assert est["available"] and est["device_latency_ms"] == pytest.approx(r["latency_ms"]["p50"], abs=1e-4)
    assert "measured on the device" in est["method"]
    # The same model and query on the same machine: the two medians are of one order.
    assert 0.2 < r["latency_ms"]["p50"] / lo["latency_ms"]["p50"] < 5


def test_ssh_runner_measures_power_on_the_board(ssh_board, tmp_path, monkeypatch, capsys):
    sysfs = tmp_path / "sys"
    _hwmon_tree(sysfs)
    monkeypatch.setenv(power.ENV_ROOT, str(sysfs))  # the server's shell (the "board") inherits it
    profiles = power_profile(tmp_path / "profiles", "pi-board", "hwmon")
    code, out, err = _bench(ssh_board, "--json", capsys=capsys, profile="pi-board", profiles_dir=profiles)
    assert code == 0, err
    r = json.loads(out)
    assert r["measured_power"]["available"] and r["measured_power"]["busy_w"] == pytest.approx(8.5, rel=0.05)
    assert r["power_judged_on"] == "measured"
    energy = next(v for v in r["verdicts"] if v["budget"] == "energy_mj")
    assert "measured by hwmon on 127.0.0.1" in energy["basis"]
    # The profile's own sensor settings travel to the board: 200 Hz sampling, 0.2 s of idle.
    assert r["measured_power"]["sampling_hz"] == 200 and r["measured_power"]["idle_seconds"] == 0.2


def _one_line_exit_2(result: tuple[int, str, str], *words: str) -> None:
    code, out, err = result
    assert code == 2, err + out
    err = err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for w in words:
        assert w in err, err


def test_an_unpinned_host_key_is_refused_not_ignored(ssh_board, capsys):
    _one_line_exit_2(_bench(ssh_board, known="wrong_known_hosts", capsys=capsys), "host key", "--accept-new-host-key")


def test_a_first_seen_host_key_is_accepted_only_when_asked(ssh_board, capsys):
    (ssh_board["folder"] / "empty_known_hosts").write_text("")
    _one_line_exit_2(_bench(ssh_board, known="empty_known_hosts", capsys=capsys), "host key")
    code, out, err = _bench(ssh_board, "--accept-new-host-key", "--json", known="empty_known_hosts", capsys=capsys)
    assert code == 0, err
    assert json.loads(out)["runner"]["host_key"] == "accepted if new (--accept-new-host-key)"
    pinned = (ssh_board["folder"] / "empty_known_hosts").read_text()
    assert f"[127.0.0.1]:{ssh_board['port']}" in pinned  # ssh pinned it: later runs check it


def test_a_key_the_board_does_not_accept_is_exit_2(ssh_board, capsys):
    _one_line_exit_2(_bench(ssh_board, identity="id_stranger", capsys=capsys), "authentication", "--identity")


def test_an_unreachable_board_is_exit_2(ssh_board, capsys):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    _one_line_exit_2(_bench(ssh_board, port=port, capsys=capsys), "cannot reach")


def test_a_board_without_onnxruntime_is_exit_2(ssh_board, tmp_path, capsys):
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "onnxruntime.py").write_text("raise ImportError(\"No module named 'onnxruntime'\")\n")
    proc = _bench(ssh_board, "--remote-python", f"env PYTHONPATH={shim} {sys.executable}", capsys=capsys)
    _one_line_exit_2(proc, "lacks onnxruntime", "pip install")


@pytest.mark.parametrize(
    "url,words",
    [("adb://device", "unknown runner"), ("ssh://", "ssh://[user@]host"), ("ssh://h:port", "bad port")],
)
def test_runner_urls_are_checked(url, words):
    with pytest.raises(UsageError, match=words.replace("[", r"\[").replace("]", r"\]")):
        parse_runner(url)
    assert parse_runner("ssh://me@board:2222") == ("ssh", {"user": "me", "host": "board", "port": 2222})
    assert parse_runner("local") == ("local", {})


def test_board_script_needs_nothing_of_edgex():
    """What goes to the board imports only the standard library, numpy and onnxruntime, and parses as
    Python 3.8 (JetPack 5's)."""
    import ast

    here = Path(power.__file__).parent
    allowed = set(sys.stdlib_module_names) | {"numpy", "onnxruntime", "power", "affinity", "__future__"}
    for name in ("board_script.py", "power.py", "affinity.py"):
        tree = ast.parse((here / name).read_text(), feature_version=(3, 8))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                mods = [a.name.split(".")[0] for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                mods = [(node.module or "").split(".")[0]]
            else:
                continue
            assert set(mods) <= allowed, (name, mods)


def _pinned_profile(folder: Path, cores: list[int]) -> Path:
    data = yaml.safe_load((ROOT / "device_profiles" / "raspberry-pi-5-cpu.yaml").read_text())
    data.update(id="pi-pinned", threads=1, cpu_affinity=cores)
    data["budgets"]["latency"]["max_ms"] = 5000  # about pinning: a loaded host's tail must not decide
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "pi-pinned.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    return folder


def test_the_profiles_cores_are_pinned_on_the_board_and_never_partly(ssh_board, tmp_path, capsys):
    profiles = _pinned_profile(tmp_path / "on", [0])
    code, out, err = _bench(ssh_board, "--json", capsys=capsys, profile="pi-pinned", profiles_dir=profiles)
    assert code == 0, err
    pinning = json.loads(out)["threads"]["affinity"]
    assert pinning["requested"] == [0] and pinning["applied"] == [0], pinning
    # a core the board does not have: nothing is pinned, and the result says why
    absent = 4095
    profiles = _pinned_profile(tmp_path / "off", [0, absent])
    code, out, err = _bench(ssh_board, "--json", capsys=capsys, profile="pi-pinned", profiles_dir=profiles)
    assert code == 0, err
    pinning = json.loads(out)["threads"]["affinity"]
    assert pinning["applied"] is None and str(absent) in pinning["reason"], pinning
