"""Preset race: the static INT8 configuration a CPU target ships is measured, not assumed.

No single preset is fastest everywhere. On one host Optimum's `avx512_vnni` preset ran the digits
CNN 3.88x FP32 while the target's own (U8S8 per-channel) ran 3.02x in the same suite run; another
day both ran 3.1x. Signedness is an instruction-set question: onnxruntime's x86 kernels multiply
u8 x s8 (VPMADDUBSW / VPDPBUSD) and only VNNI parts run S8S8 fast (an AVX2-only host ran a
mobilenet-style CNN in S8S8 ~3.8x slower than FP32), while its arm64 kernels have U8U8, S8S8 and
U8S8 paths (NEON, SDOT/UDOT, I8MM). So the race enters only the configurations the DEVICE's
instruction set runs (the profile's `soc.isa`), quantizes each throughout with the same
calibration ranges, keeps those within the accuracy budget and times them side by side at one
thread on this host; the fastest is where the accuracy search starts. Within RACE_TIE_BAND of the
fastest the earlier candidate wins (the target's preset first), so a rebuild does not swap presets
on noise. When the host's instruction set is not the device's, the record says the ranking is the
host's. An entrant onnxruntime refuses is recorded and left out; the target's own preset failing
fails the variant, as before the race.

The winner is only the starting point: the accuracy search and the speed guard run on it as on
any preset. Where no candidate meets the budget quantized throughout (a transformer whose search
keeps tensors in float), the target's preset is kept and the record says so.
"""

from __future__ import annotations

import json
import platform
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from exporter import cache as store
from exporter import log
from exporter.errors import UsageError
from exporter.profiles import ISA_ARCHES as ARCHES
from exporter.profiles import ISA_FEATURES as FEATURES
from exporter.targets import QuantPreset

CACHE_KIND = "preset-race"
RACE_TIE_BAND = 0.10  # 1-thread host timings repeat within ~10%: closer than that is a tie

# /proc/cpuinfo flag -> the feature name profiles use
_CPUINFO = {"avx2": "avx2", "avx512_vnni": "avx512_vnni", "avx_vnni": "avx_vnni", "asimd": "neon",
            "asimddp": "dotprod", "i8mm": "i8mm"}  # fmt: skip

# Optimum's static presets quantize these op types (optimum.onnxruntime AutoQuantizationConfig,
# ORT_DEFAULT_OPS_STATIC_QUANTIZATION_QDQ); Add, Mul, Concat, Sigmoid and the like stay float.
OPTIMUM_STATIC_OPS = [
    "Conv", "ConvTranspose", "Gemm", "Clip", "Relu", "Reshape", "Transpose", "Squeeze", "Unsqueeze",
    "Flatten", "Resize", "MaxPool", "AveragePool", "Slice", "Pad", "MatMul", "Split", "Gather",
    "GatherElements", "Where", "InstanceNormalization", "LayerNormalization", "BatchNormalization",
    "TopK", "CumSum",
]  # fmt: skip

Isa = frozenset[str]


def _vnni(isa: Isa) -> bool:
    return "x86_64" in isa and bool({"avx512_vnni", "avx_vnni"} & isa)


def _arm(isa: Isa) -> bool:
    return "arm64" in isa


@dataclass(frozen=True)
class Candidate:
    name: str
    update: dict  # the QuantPreset fields it changes
    runs_on: Callable[[Isa], bool]  # the device instruction sets with a fast kernel for it
    needs: str  # said in the record when the device lacks it


CANDIDATES = [
    Candidate("target preset", {}, lambda isa: True, ""),
    Candidate("per-tensor weights", {"per_channel": False}, lambda isa: True, ""),
    Candidate(
        "S8S8 (signed activations)",
        {"activation_type": "int8", "activation_symmetric": True},
        lambda isa: _vnni(isa) or _arm(isa),
        "x86 runs S8S8 fast only with VNNI (avx512_vnni / avx_vnni)",
    ),
    Candidate(
        "U8U8 (unsigned weights)",
        {"weight_type": "uint8", "weight_symmetric": False},
        _arm,
        "only onnxruntime's arm64 kernels run U8U8 fast (x86 widens it to 16-bit)",
    ),
    Candidate("QOperator format", {"format": "qoperator"}, lambda isa: True, ""),
    # Optimum's presets as benchmarks/suite.py runs its peer: avx512_vnni per-tensor (its default is
    # per-channel, which the "target preset" entrant already covers on these op types).
    Candidate(
        "Optimum avx512_vnni static preset",
        {"op_types": OPTIMUM_STATIC_OPS, "per_channel": False},
        _vnni,
        "Optimum's avx512_vnni preset is for x86 VNNI parts",
    ),
    Candidate(
        "Optimum arm64 static preset",
        {"op_types": OPTIMUM_STATIC_OPS, "per_channel": True},
        _arm,
        "Optimum's arm64 preset is for arm64 parts",
    ),
]


def host_isa() -> Isa:
    """This machine's architecture and the integer-kernel features onnxruntime dispatches on."""
    arch = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "arm64", "arm64": "arm64"}.get(platform.machine().lower())
    flags: set[str] = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("flags", "features")):
                flags |= set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset({arch or platform.machine().lower()} | {v for k, v in _CPUINFO.items() if k in flags})


def device_isa(profile) -> Isa | None:
    """The profile's `soc.isa` (e.g. "arm64 neon dotprod"; "host" for a profile judged on this
    machine; checked when the profile loads), or None when the profile does not say (then no race:
    the target's preset ships)."""
    fact = profile.soc.get("isa")
    if fact is None:
        return None
    words = frozenset(str(fact.value).lower().split())
    return host_isa() if words == {"host"} else words


def isa_text(isa: Isa) -> str:
    arch = sorted(isa & ARCHES) or sorted(isa - FEATURES)
    return " ".join(arch + sorted(isa & FEATURES))


def race(
    preset: QuantPreset,
    isa: Isa,
    quantize: Callable[[QuantPreset], Path],
    drop_of: Callable[[Path], float],
    budget: float,
    feed: dict[str, np.ndarray],
    baseline: Path,
    label: str,
    replayed: str | None = None,
    facts: dict | None = None,
) -> tuple[QuantPreset, dict]:
    """(the preset the search starts from, the race's record). `replayed`: an earlier build's
    winner (`edgex build --replay`), used without quantizing or timing the others. `facts`: what
    the race's outcome depends on besides the host and the candidates; with them the outcome is
    kept in edgex's cache and a rebuild on the same host reuses it (same winner, same bytes, no
    re-timing). The evaluation set is not among them: a stale hit can start the search from a
    slower preset, and the build's accuracy verdict still judges the file it ships."""
    host = host_isa()
    entrants = [c for c in CANDIDATES if c.runs_on(isa)]
    record: dict = {
        "device_isa": isa_text(isa),
        "host_isa": isa_text(host),
        "ranking": "this host's (the device's instruction set differs)" if host != isa else "the device's own",
        "excluded": [{"candidate": c.name, "why": c.needs} for c in CANDIDATES if not c.runs_on(isa)],
        "tie_band": RACE_TIE_BAND,
    }
    if replayed is not None:
        if _named(entrants, replayed) is None:
            raise UsageError(
                f"the replayed preset race chose '{replayed}', which is not a candidate for {isa_text(isa)}",
                path="--replay",
                field="preset_race.kept",
                fix="rebuild without --replay",
            )
        log.info(f"[{label}] preset race replayed: {replayed}")
        return _as(preset, entrants, replayed), {**record, "kept": replayed, "replayed": True}
    key = _cache_key(facts, preset, isa, host, entrants, budget) if facts is not None else None
    hit = store.lookup(CACHE_KIND, key, "race.json") if key is not None else None
    if hit is not None:
        try:
            cached = json.loads((hit / "race.json").read_text())
            kept = cached["kept"] if _named(entrants, cached["kept"]) is not None else None
        except (OSError, ValueError, KeyError, TypeError):
            kept = None
        if kept is None:  # an unusable entry is a miss, moved out of the way
            store.discard(CACHE_KIND, key)
        else:
            log.info(f"[{label}] preset race: {kept} (cached outcome of an earlier build on this host)")
            return _as(preset, entrants, kept), {**cached, "cached": True}
    rows, files = [], {}
    for i, c in enumerate(entrants):
        log.info(f"[{label}] preset race {i + 1}/{len(entrants)}: {c.name}")
        try:
            files[c.name] = quantize(preset.model_copy(update=c.update))
            drop = float(drop_of(files[c.name]))
        except Exception as exc:  # an entrant onnxruntime refuses is out of the race, not the end of INT8
            if i == 0:  # the target's own preset: its failure is the variant's failure
                raise
            rows.append({"candidate": c.name, "error": str(exc).strip().splitlines()[0][:200] if str(exc) else type(exc).__name__, "within_budget": False})  # fmt: skip
            continue
        rows.append({"candidate": c.name, "drop": round(drop, 6), "within_budget": drop <= budget})
    within = [r for r in rows if r["within_budget"]]
    record["candidates"] = rows
    if not within:
        record["kept"] = entrants[0].name
        record["verdict"] = (
            f"no candidate met the accuracy budget {budget:g} quantized throughout; "
            "the search starts from the target's preset"
        )
        _store(key, record)
        return preset, record
    p50 = _time_side_by_side({"fp32": baseline, **{r["candidate"]: files[r["candidate"]] for r in within}}, feed)
    for r in within:
        r["p50_ms"] = round(p50[r["candidate"]], 4)
        r["speed_vs_fp32"] = round(p50["fp32"] / p50[r["candidate"]], 3)
    fastest = min(r["p50_ms"] for r in within)
    winner = next(r for r in within if r["p50_ms"] <= fastest * (1 + RACE_TIE_BAND))
    record.update(kept=winner["candidate"], fp32_p50_ms=round(p50["fp32"], 4), threads=1)
    log.info(f"[{label}] preset race: {winner['candidate']} kept ({winner['speed_vs_fp32']:.2f}x FP32 on this host)")
    _store(key, record)
    return _as(preset, entrants, winner["candidate"]), record


def _store(key: str | None, record: dict) -> None:
    """Keep the outcome for a rebuild on this host (a race without a winner too: it costs as much)."""
    if key is not None:
        with store.storing(CACHE_KIND, key) as folder:
            (folder / "race.json").write_text(json.dumps(record, sort_keys=True))


def _named(entrants: list[Candidate], name: str) -> Candidate | None:
    return next((c for c in entrants if c.name == name), None)


def _as(preset: QuantPreset, entrants: list[Candidate], name: str) -> QuantPreset:
    """PRESET changed as the entrant NAME changes it."""
    return preset.model_copy(update=_named(entrants, name).update)


def _cache_key(facts: dict, preset: QuantPreset, isa: Isa, host: Isa, entrants: list[Candidate], budget: float) -> str:
    import onnxruntime

    from exporter.versions import host_facts

    return store.cache_key(
        {
            **facts,
            "preset": preset.model_dump(),
            "entrants": [[c.name, c.update] for c in entrants],
            "isa": isa_text(isa),
            "budget": budget,
            "tie_band": RACE_TIE_BAND,
            "host": [host_facts()["cpu"], isa_text(host)],
            "onnxruntime": onnxruntime.__version__,
        },
        fmt=1,
    )


def _time_side_by_side(paths: dict[str, Path], feed: dict[str, np.ndarray]) -> dict[str, float]:
    """p50 ms of each file, interleaved at one thread (the repeatable figure on a shared host)."""
    from exporter.measure import time_interleaved
    from exporter.recipe import BenchSection

    settings = BenchSection(warmup_runs=3, min_runs=20, min_seconds=0.3, max_seconds=2.0)
    stats = time_interleaved(paths, feed, 1, settings, rounds=3)
    return {name: s.percentile(50) for name, s in stats.items()}
