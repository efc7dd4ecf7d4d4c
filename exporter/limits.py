"""The sandbox's memory and time limits, read from the environment.

A foundation of its own because two sides need the same numbers: `onnx_io.prescan` refuses
declared sizes over the memory limit before any session exists, and `isolate` enforces both
limits on the child that runs the session. Neither may import the other's layer for them.

Limits: EDGEX_SANDBOX_MEMORY_MB (default: 3/4 of physical memory) and
EDGEX_SANDBOX_SECONDS (default 600).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from exporter.errors import UsageError

MEMORY_ENV = "EDGEX_SANDBOX_MEMORY_MB"
SECONDS_ENV = "EDGEX_SANDBOX_SECONDS"


@dataclass(frozen=True)
class Limits:
    memory_mb: int
    seconds: float


def _env_number(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if value <= 0:
        raise UsageError(
            f"'{raw}' is not a positive number", path="environment", field=name, fix=f"unset {name} or give a number"
        )
    return value


def limits() -> Limits:
    """The sandbox limits from the environment (checked: a bad value is a usage error)."""
    try:
        physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20
    except (ValueError, OSError):
        physical = 8192
    # RLIMIT_AS caps address space, which runs well above resident memory (thread stacks, arenas):
    # the default leaves room for that and still stops a model that would take the machine down.
    default = max(1024, int(physical * 0.75))
    return Limits(int(_env_number(MEMORY_ENV, default)), _env_number(SECONDS_ENV, 600.0))
