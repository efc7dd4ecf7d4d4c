"""The CPU preset race (exporter/quant/preset_race.py): which configurations a device's instruction
set enters, that a configuration a user would reject (per-tensor weights wrecking a layer whose
one output channel carries weights 10,000x the rest) is dropped before timing, the cached outcome and its
replay, and the profile field's one-line refusal."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_cli
from torch import nn

from exporter.data import make_dataset
from exporter.errors import UsageError
from exporter.metrics import cosine
from exporter.profiles import all_profiles, isa_problem
from exporter.quant.preset_race import CANDIDATES, device_isa, host_isa, isa_text
from exporter.quantize import quantize_int8
from exporter.recipe import QuantizeSection, SearchSettings
from exporter.runtime import make_session, run_all
from exporter.targets import get_target

X86_AVX2 = frozenset({"x86_64", "avx2"})
X86_VNNI = frozenset({"x86_64", "avx2", "avx512_vnni"})
ARM_DOT = frozenset({"arm64", "neon", "dotprod"})


class SpreadChannels(nn.Module):
    """One output channel of the first layer carries weights 10,000x the rest, on inputs that are
    always zero (a dead feature, as pruning and ReLU leave behind), and nothing reads that channel:
    activations keep their ranges, but one per-tensor weight scale rounds every other weight to
    zero, while per-channel scales lose only the unread channel."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b = nn.Linear(32, 64), nn.Linear(64, 8)
        with torch.no_grad():
            self.a.weight[0, 24:] = 1e3
            self.b.weight[:, 0] = 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.relu(self.a(x)))


@pytest.fixture(scope="module")
def spread(tmp_path_factory):
    folder = tmp_path_factory.mktemp("race")
    path = folder / "spread.onnx"
    torch.onnx.export(SpreadChannels().eval(), (torch.randn(1, 32),), str(path), input_names=["x"], dynamo=False)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((48, 32)).astype(np.float32)
    x[:, 24:] = 0.0  # the dead features
    data = make_dataset({"x": x}, None)
    ref = run_all(make_session(path), data.inputs)[0]

    def drop(p: Path) -> float:
        return 1.0 - cosine(run_all(make_session(p), data.inputs)[0], None, ref)

    return path, data, drop


def _entrants(isa: frozenset[str]) -> list[str]:
    return [c.name for c in CANDIDATES if c.runs_on(isa)]


def test_entrants_follow_the_device_instruction_set():
    assert _entrants(X86_AVX2) == ["target preset", "per-tensor weights", "QOperator format"]
    vnni = _entrants(X86_VNNI)
    assert "S8S8 (signed activations)" in vnni and "Optimum avx512_vnni static preset" in vnni
    assert "U8U8 (unsigned weights)" not in vnni and "Optimum arm64 static preset" not in vnni
    arm = _entrants(ARM_DOT)
    assert {"S8S8 (signed activations)", "U8U8 (unsigned weights)", "Optimum arm64 static preset"} <= set(arm)
    assert "Optimum avx512_vnni static preset" not in arm


def test_profiles_name_their_instruction_set():
    profiles = all_profiles()
    assert device_isa(profiles["raspberry-pi-5-cpu"]) == frozenset({"arm64", "neon", "dotprod"})
    assert device_isa(profiles["imx8m-plus-cpu"]) == frozenset({"arm64", "neon"})
    assert device_isa(profiles["x86-64-host-cpu"]) == host_isa()
    assert isa_problem("arm64 neon dotprod i8mm") is None and isa_problem("host") is None
    assert "unknown: sve9" in isa_problem("arm64 sve9")
    assert "exactly one architecture" in isa_problem("arm64 x86_64 neon")


def test_race_drops_a_configuration_over_budget_and_ships_the_fastest_left(spread, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEX_CACHE_DIR", str(tmp_path / "cache"))
    fp32, data, drop = spread
    settings = QuantizeSection(
        calibration_samples=16, speed_guard=False, search=SearchSettings(calibration_methods=["minmax"], max_kept=0)
    )

    def build(out: str, replay: str | None = None):
        return quantize_int8(
            fp32, tmp_path / out, data, settings, get_target("cpu").quantization, 1, 0, evaluate=drop,
            budget=0.01, speed_feed={"x": data.inputs["x"][:1]}, race_isa=X86_VNNI, race_replay=replay,
        )  # fmt: skip

    first = build("a.onnx")
    race = first.preset_race
    rows = {r["candidate"]: r for r in race["candidates"]}
    assert set(rows) == set(_entrants(X86_VNNI))
    # per-tensor weights round the small channels away: over budget, never timed, never shipped
    for name in ("per-tensor weights", "Optimum avx512_vnni static preset"):
        assert rows[name]["drop"] > 0.01 and not rows[name]["within_budget"] and "p50_ms" not in rows[name]
    assert rows["target preset"]["within_budget"] and rows["target preset"]["p50_ms"] > 0
    timed = [r for r in rows.values() if r["within_budget"]]
    fastest = min(r["p50_ms"] for r in timed)
    assert rows[race["kept"]]["p50_ms"] <= fastest * (1 + race["tie_band"])
    assert race["device_isa"] == isa_text(X86_VNNI) and race["excluded"]
    assert first.preset["per_channel"] is True  # every entrant within budget is per-channel here
    # a rebuild reuses the cached outcome (same winner, same bytes) and a replay repeats it
    second = build("b.onnx")
    assert second.preset_race.get("cached") and second.preset_race["kept"] == race["kept"]
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()
    replayed = build("c.onnx", replay=race["kept"])
    assert replayed.preset_race["replayed"] and (tmp_path / "c.onnx").read_bytes() == (tmp_path / "a.onnx").read_bytes()
    with pytest.raises(UsageError, match="preset_race.kept"):
        build("d.onnx", replay="a preset nobody has")


def test_race_keeps_the_preset_when_nothing_meets_the_budget(spread, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEX_CACHE_DIR", str(tmp_path / "cache"))
    fp32, data, _ = spread
    settings = QuantizeSection(calibration_samples=16, speed_guard=False, search=SearchSettings(enabled=False))
    res = quantize_int8(
        fp32, tmp_path / "n.onnx", data, settings, get_target("cpu").quantization, 1, 0,
        evaluate=lambda p: 0.5, budget=0.01, speed_feed={"x": data.inputs["x"][:1]}, race_isa=ARM_DOT,
    )  # fmt: skip
    race = res.preset_race
    assert race["kept"] == "target preset" and "no candidate met the accuracy budget" in race["verdict"]
    assert all("p50_ms" not in r for r in race["candidates"])
    assert res.preset["activation_type"] == get_target("cpu").quantization.activation_type


def test_a_profile_with_an_unknown_isa_is_refused_in_one_line(tmp_path):
    src = Path(__file__).resolve().parents[1] / "device_profiles" / "raspberry-pi-5-cpu.yaml"
    text = src.read_text().replace('value: "arm64 neon dotprod"', 'value: "arm64 neon sve9"')
    text = text.replace("id: raspberry-pi-5-cpu", "id: my-board")
    assert "sve9" in text and "my-board" in text
    folder = tmp_path / "profiles"
    folder.mkdir()
    (folder / "my-board.yaml").write_text(text)
    recipe = Path(__file__).resolve().parents[1] / "examples" / "digits.yaml"
    out = tmp_path / "o"
    res = run_cli("--profiles-dir", str(folder), "build", str(recipe), "--profile", "my-board", "--out", str(out))
    assert res.returncode == 2, res.stderr
    lines = [line for line in res.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "my-board.yaml" in lines[0] and "sve9" in lines[0], res.stderr
    assert "Traceback" not in res.stderr and not out.exists()


def test_the_winner_shapes_the_shipped_file_and_ties_go_to_the_earlier_entrant(spread, tmp_path, monkeypatch):
    """Timings replaced by fixed numbers (the host's are noise here): S8S8 clearly fastest ships
    signed activations; within the tie band the target's preset stays."""
    from exporter.quant import preset_race

    fp32, data, drop = spread
    settings = QuantizeSection(calibration_samples=16, speed_guard=False, search=SearchSettings(enabled=False))

    def build(out: str, times: dict[str, float]):
        monkeypatch.setattr(
            preset_race, "_time_side_by_side", lambda paths, feed: {n: times.get(n, 1.0) for n in paths}
        )
        monkeypatch.setenv("EDGEX_CACHE_DIR", str(tmp_path / f"cache-{out}"))  # each build races afresh
        return quantize_int8(
            fp32, tmp_path / out, data, settings, get_target("cpu").quantization, 1, 0, evaluate=drop,
            budget=0.01, speed_feed={"x": data.inputs["x"][:1]}, race_isa=ARM_DOT,
        )  # fmt: skip

    fast = build("s8.onnx", {"fp32": 3.0, "S8S8 (signed activations)": 0.5})
    assert fast.preset_race["kept"] == "S8S8 (signed activations)" and fast.preset["activation_type"] == "int8"
    import onnx

    zero_points = [i for i in onnx.load(str(tmp_path / "s8.onnx")).graph.initializer if i.name.endswith("zero_point")]
    assert zero_points and any(z.data_type == onnx.TensorProto.INT8 for z in zero_points)
    tied = build("tie.onnx", {"fp32": 3.0, "target preset": 1.0, "S8S8 (signed activations)": 0.95})
    assert tied.preset_race["kept"] == "target preset" and tied.preset["activation_type"] == "uint8"


def test_an_entrant_onnxruntime_refuses_is_left_out_and_a_bad_cache_entry_is_a_miss(spread, tmp_path, monkeypatch):
    from exporter import cache as store
    from exporter.quant import preset_race

    monkeypatch.setenv("EDGEX_CACHE_DIR", str(tmp_path / "cache"))
    fp32, data, drop = spread
    calls = []

    def quantize(p):
        calls.append(p)
        if p.format == "qoperator":
            raise ValueError("onnxruntime refused this entrant")
        return fp32  # the FP32 file stands in for every quantized one: the race logic is under test

    kwargs = dict(budget=0.01, feed={"x": data.inputs["x"][:1]}, baseline=fp32, label="t", facts={"model": "m"})
    preset = get_target("cpu").quantization
    _, record = preset_race.race(preset, X86_AVX2, quantize, drop, **kwargs)
    failed = next(r for r in record["candidates"] if r["candidate"] == "QOperator format")
    assert "refused" in failed["error"] and not failed["within_budget"]
    assert record["kept"] in {"target preset", "per-tensor weights"}
    # the stored outcome names an entrant that no longer exists: a miss, raced again, entry replaced
    key = next(p.name for p in (tmp_path / "cache" / preset_race.CACHE_KIND).iterdir() if not p.name.startswith("."))
    (store.entry_path(preset_race.CACHE_KIND, key) / "race.json").write_text('{"kept": "gone"}')
    calls.clear()
    _, again = preset_race.race(preset, X86_AVX2, quantize, drop, **kwargs)
    assert len(calls) == 3 and not again.get("cached") and again["kept"] == record["kept"]
