"""Device profiles: one YAML per device under device_profiles/ (and the user's own folders).

Adding a device is adding a file. Every SoC fact carries its source and confidence so users can
check it; budgets are what a release must meet on that device.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationInfo, field_validator

from exporter.errors import UsageError
from exporter.resources import shipped_dir
from exporter.schema_base import Strict, parse, read_yaml
from exporter.targets import get_target

DeviceClass = Literal[
    "phone-flagship",
    "phone-mid",
    "phone-budget",
    "automotive-cockpit",
    "automotive-adas",
    "embedded",
    "robot",
    "build-host",  # an x86 CI box or server that runs the model itself: judged on the host's own timings
]


ISA_ARCHES = {"x86_64", "arm64"}
ISA_FEATURES = {"avx2", "avx512_vnni", "avx_vnni", "neon", "dotprod", "i8mm"}


def isa_problem(value: str) -> str | None:
    """What is wrong with a soc.isa value ("arm64 neon dotprod", or "host"), None when nothing."""
    words = value.lower().split()
    if words == ["host"]:
        return None
    unknown = [w for w in words if w not in ISA_ARCHES | ISA_FEATURES]
    if unknown or sum(w in ISA_ARCHES for w in words) != 1:
        what = f"unknown: {', '.join(unknown)}" if unknown else "name exactly one architecture"
        return (
            f"'{value}' is not an instruction set edgex knows ({what}); write one of {sorted(ISA_ARCHES)} "
            f"then features from {sorted(ISA_FEATURES)}, or 'host'"
        )
    return None


class Fact(Strict):
    """A published number or description with where it came from."""

    value: float | int | str
    unit: str = ""
    source: str = Field(min_length=3)
    confidence: Literal["vendor", "derived", "unverified", "measured"] = "vendor"


class LatencyBudget(Strict):
    percentile: float = Field(gt=0, lt=100, description="e.g. 90 (MLPerf mobile) or 99.9 (automotive).")
    max_ms: float = Field(gt=0)


class PowerBudget(Strict):
    max_w: float = Field(gt=0)
    rate_hz: float = Field(gt=0, description="Inference rate at which average power is judged.")


class Budgets(Strict):
    latency: LatencyBudget
    peak_memory_mb: float | None = Field(default=None, gt=0)
    model_size_mb: float | None = Field(default=None, gt=0)
    energy_mj: float | None = Field(default=None, gt=0, description="Energy per inference.")
    average_power: PowerBudget | None = None
    max_accuracy_drop: float = Field(
        default=0.01, ge=0, description="In the metric's own units against the FP32 baseline."
    )


class PreflightLimits(Strict):
    """Operator-coverage gates checked before benchmarking (preflight)."""

    max_partitions: int | None = Field(default=None, ge=1, description="Most accelerator partitions allowed.")
    allow_cpu_fallback: bool = Field(default=True, description="False: every node must run on the accelerator.")


class Estimates(Strict):
    """Constants of the device-side estimate (roofline latency, energy, power), each with its source.

    compute_gmacs: sustained multiply-accumulates per second (G) of the unit the target runs on, per
    precision, with the profile's threads; pj_per_mac and pj_per_dram_byte: energy per operation;
    static_power_w: power drawn while the unit is busy regardless of work.
    """

    compute_gmacs: dict[Literal["fp32", "fp16", "int8"], Fact]
    dram_gbps: Fact
    pj_per_mac: dict[Literal["fp32", "fp16", "int8"], Fact]
    pj_per_dram_byte: Fact
    static_power_w: Fact


class PowerSensor(Strict):
    """The power sensor to read while benchmarking on this device (exporter/bench/power.py's registry)."""

    sensor: str = Field(description="rapl | hwmon | jetson-ina3221 | android-battery")
    channels: list[str] = Field(default_factory=list, description="Rails/zones by label; empty: the sensor's default.")
    rate_hz: float = Field(default=100.0, gt=0, le=10000, description="Sampling rate of instantaneous power sensors.")
    idle_seconds: float = Field(default=1.0, ge=0, le=60, description="Idle draw measured before timing.")

    @field_validator("sensor")
    @classmethod
    def _known(cls, value: str) -> str:
        from exporter.bench.power import SENSORS

        if value not in SENSORS:
            guess = difflib.get_close_matches(value, list(SENSORS), n=1)
            hint = f"; did you mean '{guess[0]}'?" if guess else ""
            raise ValueError(f"unknown power sensor '{value}' (known: {', '.join(SENSORS)}){hint}")
        return value


class DeviceProfile(Strict):
    schema_version: Literal[1] = 1
    id: str = Field(pattern=r"^[a-z0-9][a-z0-9-]*$")
    name: str
    device_class: DeviceClass = Field(alias="class")
    target: str
    threads: int = Field(ge=1, le=64, description="Threads the app gives the runtime on the device.")
    soc: dict[str, Fact] = Field(description="SoC facts, each with its source.")
    budgets: Budgets
    preflight: PreflightLimits = Field(default_factory=PreflightLimits)
    estimates: Estimates | None = Field(default=None, description="Constants for device latency/energy estimates.")
    power_sensor: PowerSensor | None = Field(default=None, description="Sensor to measure power with, when present.")
    cpu_affinity: list[int] | None = Field(
        default=None,
        description="Linux CPU numbers the benchmark pins its threads to on the device (e.g. the big cluster); "
        "default: the OS schedules. Not applied on a machine without those cores (the manifest says so).",
    )
    notes: str = ""

    @field_validator("soc")
    @classmethod
    def _isa(cls, soc: dict[str, Fact]) -> dict[str, Fact]:
        """soc.isa names the device's instruction set: the static INT8 presets raced for it
        (quant/preset_race.py) depend on it, so a word edgex does not know is refused here."""
        if "isa" in soc:
            problem = isa_problem(str(soc["isa"].value))
            if problem:
                raise ValueError(f"isa: {problem}")
        return soc

    @field_validator("cpu_affinity")
    @classmethod
    def _affinity_fits_threads(cls, cores: list[int] | None, info: ValidationInfo) -> list[int] | None:
        if cores is not None and (len(set(cores)) != len(cores) or min(cores, default=0) < 0 or not cores):
            raise ValueError("list distinct CPU numbers >= 0, e.g. [4, 5, 6, 7]")
        threads = info.data.get("threads")
        if cores is not None and threads is not None and len(cores) < threads:
            raise ValueError(
                f"{len(cores)} core(s) for {threads} threads: list at least as many cores as threads, or lower threads"
            )
        return cores


def load_profile_file(path: Path) -> DeviceProfile:
    profile = parse(DeviceProfile, read_yaml(path, "profile"), path, "profile")
    if profile.id != path.stem:
        raise UsageError(
            f"id '{profile.id}' differs from the file name",
            path=path,
            field="id",
            fix=f"rename the file to {profile.id}.yaml or set id: {path.stem}",
        )
    get_target(profile.target, where=path)
    return profile


def profile_dirs(extra: list[Path] | tuple[Path, ...] = ()) -> list[Path]:
    """Shipped folder first, then EDGEX_PROFILES, then --profiles-dir: later folders override ids."""
    dirs = [shipped_dir("device_profiles")]
    env = os.environ.get("EDGEX_PROFILES", "")
    dirs += [Path(p) for p in env.split(os.pathsep) if p]
    dirs += [Path(p) for p in extra]
    for folder in dirs[1:]:
        if not folder.is_dir():
            raise UsageError(
                "profiles folder not found",
                path=folder,
                field="--profiles-dir/EDGEX_PROFILES",
                fix="give an existing folder of *.yaml profiles",
            )
    return dirs


def all_profiles(extra: list[Path] | tuple[Path, ...] = ()) -> dict[str, DeviceProfile]:
    found: dict[str, DeviceProfile] = {}
    for folder in profile_dirs(extra):
        for path in sorted(folder.glob("*.yaml")):
            profile = load_profile_file(path)
            found[profile.id] = profile
    return found


def refuse_repeated(ids: list[str], where: Path | str) -> None:
    """A profile listed twice would build (and time) twice into one folder: refused before any work."""
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise UsageError(
            f"profile(s) {', '.join(dupes)} listed twice", path=where, field="profiles", fix="list each profile once"
        )


def get_profiles(
    ids: list[str], extra: list[Path] | tuple[Path, ...] = (), where: Path | str = "--profile"
) -> list[DeviceProfile]:
    known = all_profiles(extra)
    chosen = []
    for pid in ids:
        if pid not in known:
            guess = difflib.get_close_matches(pid, list(known), n=1)
            fix = f"did you mean '{guess[0]}'?" if guess else "run `edgex profiles list`"
            raise UsageError(f"unknown profile '{pid}'", path=where, field="profiles", fix=fix)
        chosen.append(known[pid])
    return chosen
