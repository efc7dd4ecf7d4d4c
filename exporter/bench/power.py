"""Measured power, where the hardware has a sensor: a registry of small sensor finders and one meter.

A finder looks under a sysfs root (default /sys; `EDGEX_SYSFS_ROOT` or the `root` argument, so tests
and boards with odd layouts can point elsewhere) and returns a `Reading`: either a cumulative energy
counter (read before and after each timed block; the delta is the energy) or an instantaneous power
(sampled by a background thread at a set rate; the mean times the block's time is the energy).

  rapl             /sys/class/powercap/intel-rapl:N/energy_uj (package zones, counter, wraps at
                   max_energy_range_uj); Linux powercap on Intel and recent AMD CPUs
  hwmon            /sys/class/hwmon/hwmon*/power*_input (uW), or in*_input (mV) x curr*_input (mA)
  jetson-ina3221   Jetson INA3221 rails: hwmon under /sys/bus/i2c/drivers/ina3221/*/hwmon/ (in/curr,
                   labels such as VDD_IN) or the older iio in_power*_input (mW) with rail_name_*;
                   by default only VDD_IN (the module's input: the other rails are parts of it)
  android-battery  /sys/class/power_supply/battery/current_now (uA) x voltage_now (uV)

What a reading measures is the whole package, board or battery, not the model alone: the meter
also measures the idle draw for `idle_seconds` before timing, and reports both the energy per
inference including idle (what the battery pays) and the part above idle.

Stdlib only and Python 3.8 compatible: the remote runner ships this file to the board with its
benchmark script.
"""

from __future__ import annotations

import glob
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ENV_ROOT = "EDGEX_SYSFS_ROOT"


@dataclass(frozen=True)
class Reading:
    """One sensor as found: how to read it, what it reads, and from which files."""

    sensor: str
    kind: str  # "energy_j" (cumulative counters) or "power_w" (instantaneous)
    read_each: Callable[[], tuple[float, ...]]  # one value per channel
    channels: tuple[str, ...]
    sources: tuple[str, ...]
    wraps_j: tuple[float, ...] = ()  # each counter's range: a counter that wrapped during a block

    def read(self) -> float:
        """Total over the channels (watts, or joules of the counters as they stand)."""
        return sum(self.read_each())


def sysfs_root(root: str | None = None) -> Path:
    return Path(root or os.environ.get(ENV_ROOT) or "/sys")


def _num(path: str) -> float:
    with open(path) as f:
        return float(f.read().strip())


def _text(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return ""


def _pick(found: list[tuple[str, Callable[[], float], str]], channels: tuple[str, ...], sensor: str):
    """Keep the requested channels (by label); all of them when none are named."""
    if channels:
        missing = [c for c in channels if c not in {name for name, _, _ in found}]
        if missing:
            have = ", ".join(name for name, _, _ in found) or "none"
            raise LookupError(f"{sensor}: channel(s) {', '.join(missing)} not found (found: {have})")
        found = [f for f in found if f[0] in channels]
    return found


def _reading(
    sensor: str,
    kind: str,
    found: list[tuple[str, Callable[[], float], str]],
    channels: tuple[str, ...],
    wraps: dict[str, float] | None = None,
) -> Reading | None:
    """What every finder ends with, so a channel request means the same for each sensor."""
    found = _pick(found, channels, sensor)
    if not found:
        return None
    readers = [r for _, r, _ in found]
    return Reading(
        sensor,
        kind,
        lambda: tuple(r() for r in readers),
        tuple(n for n, _, _ in found),
        tuple(s for _, _, s in found),
        tuple(wraps[n] for n, _, _ in found) if wraps is not None else (),
    )


def _inputs(
    folder: str, prefix: str, label: str = "{prefix}{idx}_label", default: str = "{folder}/{prefix}{idx}"
) -> list[tuple[str, str, str]]:
    """(label, path, index) of each <prefix>N_input: drivers number a chip's channels this way and
    may name channel N in a file beside it; a channel without a name gets one from its folder."""
    found = []
    for path in sorted(glob.glob(os.path.join(folder, f"{prefix}*_input"))):
        idx = os.path.basename(path)[len(prefix) : -len("_input")]
        names = {"prefix": prefix, "idx": idx, "folder": os.path.basename(folder)}
        found.append((_text(os.path.join(folder, label.format(**names))) or default.format(**names), path, idx))
    return found


def find_rapl(root: Path, channels: tuple[str, ...] = ()) -> Reading | None:
    zones = [
        z for z in sorted(glob.glob(str(root / "class/powercap/intel-rapl:*"))) if os.path.basename(z).count(":") == 1
    ]
    found, wraps = [], {}
    for zone in zones:
        energy = os.path.join(zone, "energy_uj")
        if not os.access(energy, os.R_OK):
            continue
        name = _text(os.path.join(zone, "name")) or os.path.basename(zone)
        found.append((name, (lambda p=energy: _num(p) / 1e6), energy))
        rng = _text(os.path.join(zone, "max_energy_range_uj"))
        wraps[name] = float(rng) / 1e6 if rng else 0.0
    return _reading("rapl", "energy_j", found, channels, wraps)


def _hwmon_channels(folder: str) -> list[tuple[str, Callable[[], float], str]]:
    """power*_input (uW) where present, else in*_input (mV) x curr*_input (mA) pairs."""
    found = [(label, (lambda p=p: _num(p) / 1e6), p) for label, p, _ in _inputs(folder, "power")]
    if found:
        return found
    for label, v, idx in _inputs(folder, "in"):
        c = os.path.join(folder, f"curr{idx}_input")
        if os.path.exists(c):
            found.append((label, (lambda v=v, c=c: _num(v) * _num(c) / 1e6), f"{v} x {c}"))
    return found


def find_hwmon(root: Path, channels: tuple[str, ...] = ()) -> Reading | None:
    found = []
    for folder in sorted(glob.glob(str(root / "class/hwmon/hwmon*"))):
        found += _hwmon_channels(folder)
    return _reading("hwmon", "power_w", found, channels)


def find_jetson_ina3221(root: Path, channels: tuple[str, ...] = ()) -> Reading | None:
    found = []
    for folder in sorted(glob.glob(str(root / "bus/i2c/drivers/ina3221/*/hwmon/hwmon*"))):
        found += _hwmon_channels(folder)
    for folder in sorted(glob.glob(str(root / "bus/i2c/drivers/ina3221x/*/iio:device*"))):
        for label, p, _ in _inputs(folder, "in_power", label="rail_name_{idx}", default="in_power{idx}"):
            found.append((label, (lambda p=p: _num(p) / 1e3), p))
    if not channels and any(name == "VDD_IN" for name, _, _ in found):
        channels = ("VDD_IN",)  # the module's input rail; CPU/GPU/SOC rails are parts of it
    return _reading("jetson-ina3221", "power_w", found, channels)


def find_android_battery(root: Path, channels: tuple[str, ...] = ()) -> Reading | None:
    name = channels[0] if channels else "battery"
    folder = root / "class/power_supply" / name
    cur, volt = folder / "current_now", folder / "voltage_now"
    if not (cur.exists() and volt.exists()):
        return None

    def watts() -> float:
        # The sign of current_now differs between vendors (negative while discharging on many): use its size.
        return abs(_num(str(cur))) * _num(str(volt)) / 1e12

    return _reading("android-battery", "power_w", [(name, watts, f"{cur} x {volt}")], ())


SENSORS: dict[str, Callable[[Path, tuple[str, ...]], Reading | None]] = {
    "rapl": find_rapl,
    "hwmon": find_hwmon,
    "jetson-ina3221": find_jetson_ina3221,
    "android-battery": find_android_battery,
}
WHERE = {
    "rapl": "class/powercap/intel-rapl:*/energy_uj",
    "hwmon": "class/hwmon/hwmon*/power*_input or in*_input + curr*_input",
    "jetson-ina3221": "bus/i2c/drivers/ina3221*/...",
    "android-battery": "class/power_supply/battery/{current_now,voltage_now}",
}


def find(sensor: str, root: str | None = None, channels: tuple[str, ...] = ()) -> tuple[Reading | None, str]:
    """(reading, "") when found; (None, why) when this machine does not have it."""
    base = sysfs_root(root)
    if sensor not in SENSORS:
        return None, f"unknown power sensor '{sensor}' (known: {', '.join(SENSORS)})"
    try:
        reading = SENSORS[sensor](base, tuple(channels))
        if reading is not None:
            reading.read()  # readable now, not only present (RAPL is root-only on recent kernels)
    except (OSError, ValueError, LookupError) as exc:
        return None, f"{sensor}: {exc}"
    if reading is None:
        return None, f"{sensor}: nothing readable at {base}/{WHERE[sensor]}"
    return reading, ""


@dataclass
class _Block:
    joules: float = 0.0
    seconds: float = 0.0
    runs: int = 0
    samples: int = 0


@dataclass
class Meter:
    """Energy of timed blocks, per variant; `idle()` first measures the draw with nothing running."""

    reading: Reading
    rate_hz: float = 100.0
    idle_seconds: float = 1.0
    idle_w: float | None = None
    blocks: dict[str, _Block] = field(default_factory=dict)
    _start: tuple[float, tuple[float, ...]] = (0.0, ())
    _samples: list[float] = field(default_factory=list)
    _stop: threading.Event | None = None
    _thread: threading.Thread | None = None

    def _sample(self, stop: threading.Event) -> None:
        period = 1.0 / self.rate_hz
        next_at = time.perf_counter()
        while not stop.is_set():
            self._samples.append(self.reading.read())
            next_at += period
            stop.wait(max(0.0, next_at - time.perf_counter()))

    def start(self) -> None:
        self._start = (time.perf_counter(), self.reading.read_each() if self.reading.kind == "energy_j" else ())
        if self.reading.kind == "power_w":
            self._samples = []
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._sample, args=(self._stop,), daemon=True)
            self._thread.start()

    def stop(self) -> tuple[float, float, int]:
        """(joules, seconds, samples) since start()."""
        t0, e0 = self._start
        if self.reading.kind == "energy_j":
            e1 = self.reading.read_each()
            seconds = time.perf_counter() - t0
            joules = 0.0
            for i, (a, b) in enumerate(zip(e0, e1)):
                wrap = self.reading.wraps_j[i] if i < len(self.reading.wraps_j) else 0.0
                joules += b - a if b >= a or not wrap else b - a + wrap  # one wrap per block at most
            return joules, seconds, 2
        assert self._stop is not None and self._thread is not None
        self._stop.set()
        self._thread.join()
        seconds = time.perf_counter() - t0
        samples = list(self._samples)
        mean = sum(samples) / len(samples) if samples else 0.0
        return mean * seconds, seconds, len(samples)

    def idle(self) -> float:
        self.start()
        time.sleep(self.idle_seconds)
        joules, seconds, _ = self.stop()
        self.idle_w = joules / seconds if seconds > 0 else 0.0
        return self.idle_w

    def block_start(self, name: str) -> None:
        self.blocks.setdefault(name, _Block())
        self.start()

    def block_stop(self, name: str, runs: int) -> None:
        joules, seconds, samples = self.stop()
        b = self.blocks[name]
        b.joules, b.seconds, b.runs, b.samples = (
            b.joules + joules,
            b.seconds + seconds,
            b.runs + runs,
            b.samples + samples,
        )

    def result(self, name: str, rate_hz: float | None = None) -> dict:
        """The measured figures of one variant, in the units and with the formulas of the estimate."""
        b = self.blocks[name]
        r = self.reading
        busy_w = b.joules / b.seconds if b.seconds > 0 else 0.0
        idle_w = self.idle_w if self.idle_w is not None else 0.0
        per_inf_s = b.seconds / b.runs if b.runs else 0.0
        out = {
            "available": True,
            "sensor": r.sensor,
            "method": (
                "energy counter read before and after each timed block"
                if r.kind == "energy_j"
                else f"power sampled by a background thread at {self.rate_hz:g} Hz during each timed block"
            ),
            "sampling_hz": None if r.kind == "energy_j" else self.rate_hz,
            "achieved_hz": round(b.samples / b.seconds, 2) if r.kind == "power_w" and b.seconds else None,
            "samples": b.samples,
            "channels": list(r.channels),
            "sources": list(r.sources),
            "seconds": round(b.seconds, 4),
            "runs": b.runs,
            "idle_w": round(idle_w, 6),
            "idle_seconds": self.idle_seconds,
            "busy_w": round(busy_w, 6),
            "energy_mj": round(busy_w * per_inf_s * 1e3, 6),
            "dynamic_energy_mj": round(max(0.0, busy_w - idle_w) * per_inf_s * 1e3, 6),
            "formula": "energy = mean power during the timed runs x time per inference; dynamic = (that - idle) "
            "x time per inference; power(rate) = idle + dynamic x rate",
            "scope": "what the sensor sees (package, board or battery), not the model alone",
        }
        if rate_hz:
            out["rate_hz"] = rate_hz
            out["sustains_rate"] = per_inf_s * rate_hz <= 1.0
            out["average_power_w"] = round(idle_w + out["dynamic_energy_mj"] * 1e-3 * rate_hz, 6)
        return out


def meter_for(
    sensor: str | None,
    root: str | None = None,
    channels: tuple[str, ...] = (),
    rate_hz: float = 100.0,
    idle_seconds: float = 1.0,
) -> tuple[Meter | None, dict]:
    """(meter, {}) when the sensor is here; (None, {"available": False, "reason": ...}) otherwise."""
    if not sensor:
        return None, {"available": False, "reason": "no power sensor named (profile `power_sensor:` or --power-sensor)"}
    reading, why = find(sensor, root, channels)
    if reading is None:
        return None, {"available": False, "sensor": sensor, "reason": why}
    return Meter(reading, rate_hz, idle_seconds), {}
