"""`edgex build --replay OLD/manifest.json`: repeat the decisions an earlier build took from timings.

Timings differ from run to run, so a rebuild that re-measures can ship different bytes: the speed
guard may stop on another rung, and the deliverable (fastest variant by p50, ties
within 10% to the smaller file) may still change near the edge of the band. The
manifest records both decisions; a replay takes them from there instead of from the clock, so
with the same inputs, versions and SOURCE_DATE_EPOCH the release is byte-identical except the
timing fields (see docs/ARCHITECTURE.md). Latency-budget pruning (`compress:` with
`goal: {latency: budget}`) is not replayed yet.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from exporter.digest import sha256_file
from exporter.errors import UsageError


@dataclass(frozen=True)
class Replay:
    path: Path
    sha256: str
    manifest: dict

    def _profile(self, profile_id: str) -> dict | None:
        return next((p for p in self.manifest.get("profiles", []) if p.get("id") == profile_id), None)

    def deliverable(self, profile_id: str) -> str | None:
        prof = self._profile(profile_id)
        return None if prof is None else prof.get("deliverable")

    def speed_guard(self, profile_id: str) -> dict | None:
        prof = self._profile(profile_id) or {}
        for v in prof.get("variants", []):
            if v.get("name") == "int8":
                return (v.get("produced_by") or {}).get("speed_guard")
        return None

    def record(self) -> dict:
        return {"manifest": str(self.path), "sha256": self.sha256}


def load_replay(path: Path, recipe_sha256: str, profile_ids: list[str]) -> Replay:
    """The earlier manifest, refused unless it was built from this very recipe and these profiles."""
    path = path / "manifest.json" if path.is_dir() else path
    fix = "give the manifest.json of an earlier build of this recipe"
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        built_from = manifest["recipe"]["sha256"]
        old_ids = [p["id"] for p in manifest["profiles"]]
    except FileNotFoundError:
        raise UsageError("manifest not found", path=path, field="--replay", fix=fix) from None
    except (OSError, ValueError, KeyError, TypeError):
        raise UsageError("not an edgex manifest", path=path, field="--replay", fix=fix) from None
    if built_from != recipe_sha256:
        raise UsageError(
            "this manifest was built from a different recipe (its sha256 differs)",
            path=path,
            field="recipe.sha256",
            fix="replay only a build of the same recipe file",
        )
    missing = [i for i in profile_ids if i not in old_ids]
    if missing:
        raise UsageError(
            f"profiles {missing} are not in the replayed build",
            path=path,
            field="profiles",
            fix="build the same profiles",
        )
    return Replay(path=path, sha256=sha256_file(path), manifest=manifest)
