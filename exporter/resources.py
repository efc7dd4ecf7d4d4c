"""Where the shipped declarations live: the source checkout, or share/edgex in an installed wheel."""

from __future__ import annotations

import sys
from pathlib import Path

_REPO_ROOT = Path(__file__).resolve().parent.parent


def shipped_dir(name: str) -> Path:
    """Folder of shipped files (targets, device_profiles, benchmarks, examples)."""
    checkout = _REPO_ROOT / name
    if checkout.is_dir():
        return checkout
    installed = Path(sys.prefix) / "share" / "edgex" / name
    if installed.is_dir():
        return installed
    raise FileNotFoundError(f"edgex data folder '{name}' is missing from this installation")
