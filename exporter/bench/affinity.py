"""Pin the benchmark's threads to a profile's cores (`cpu_affinity:`), or say why they were not.

Phones and cars mix big and little cores: the same model can time 2-3x apart depending on where
the scheduler puts its threads, so a budget is only meaningful on the cores the app will get.
onnxruntime's pool threads inherit the affinity of the thread that creates the session, so the
pinning wraps session creation as well as the timed loop. Cores the machine does not have are
never pinned partially (that would time a different configuration under the profile's name): the
record says the pinning was not applied here and why.

The remote runner copies this file beside the board script (exporter/bench/board_script.py), so
it uses the standard library only and stays Python 3.8 compatible.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator


def plan(cores: list[int] | None) -> dict:
    """What pinning to `cores` means on this machine: applied, or not, with the reason."""
    if not cores:
        return {"requested": None, "applied": None, "reason": "no cpu_affinity in the profile: the OS schedules"}
    if not hasattr(os, "sched_setaffinity"):
        return {"requested": cores, "applied": None, "reason": "this OS cannot pin threads (no sched_setaffinity)"}
    here = sorted(os.sched_getaffinity(0))
    missing = [c for c in cores if c not in here]
    if missing:
        return {
            "requested": cores,
            "applied": None,
            "reason": f"this machine lets the benchmark use cores {here}, not {missing}; "
            "the pinning applies where those cores exist (a board over --runner ssh://)",
        }
    return {"requested": cores, "applied": cores, "reason": "pinned with sched_setaffinity"}


def describe(record: dict) -> str:
    """One phrase for reports: where the threads ran."""
    if not record or record.get("requested") is None:
        return "threads scheduled by the OS"
    if record.get("applied"):
        return f"threads pinned to cores {record['applied']}"
    return f"cpu_affinity {record['requested']} not applied ({record['reason']})"


@contextlib.contextmanager
def pinned(record: dict | None) -> Iterator[None]:
    """Run the block on the cores `record` (from `plan`) applies; restores the previous mask after."""
    if not record or record["applied"] is None:
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, record["applied"])
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)
