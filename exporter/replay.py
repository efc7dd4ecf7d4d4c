"""`edgex build --replay OLD/manifest.json`: repeat the decisions an earlier build took from timings.

Timings differ from run to run, so a rebuild that re-measures can ship different bytes: the speed
guard may stop on another rung, and the deliverable (fastest variant by p50, ties
within 10% to the smaller file) may still change near the edge of the band. The
manifest records both decisions; a replay takes them from there instead of from the clock, so
with the same inputs, versions and SOURCE_DATE_EPOCH the release is byte-identical except the
timing fields (see docs/ARCHITECTURE.md). A transformer's FP32 graph (fused or plain, raced on
the clock) and a CPU target's static INT8 preset (raced on the clock) are replayed too. Latency-goal pruning (`compress:` with `goal: {latency: ...}`) is not
replayed: its result is cached, so a rebuild on the same host reuses the plan.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from exporter.digest import sha256_file
from exporter.errors import UsageError
from exporter.manifest_schema import Manifest, Profile, manifest_file, read_manifest


@dataclass(frozen=True)
class Replay:
    path: Path
    sha256: str
    manifest: Manifest

    def _profile(self, profile_id: str) -> Profile | None:
        return next((p for p in self.manifest.profiles if p.id == profile_id), None)

    def deliverable(self, profile_id: str) -> str | None:
        prof = self._profile(profile_id)
        return None if prof is None else prof.deliverable

    def speed_guard(self, profile_id: str) -> dict | None:
        prof = self._profile(profile_id)
        for v in prof.variants if prof is not None else []:
            if v.name == "int8":
                return v.produced_by.get("speed_guard")
        return None

    def preset_race(self, profile_id: str) -> str | None:
        """The static INT8 preset an earlier build's race kept for this profile (None: no int8 variant)."""
        prof = self._profile(profile_id)
        for v in prof.variants if prof is not None else []:
            if v.name == "int8":  # built without a race (an older edgex, no soc.isa): the target's preset
                return (v.produced_by.get("preset_race") or {}).get("kept", "target preset")
        return None

    def fusion_race(self, variant: str) -> str | None:
        """Which FP32 graph of a transformer shipped ("fused" or "plain"); one race serves every
        profile whose export is the same, so the first recorded one is the answer."""
        for prof in self.manifest.profiles:
            for v in prof.variants:
                race = v.produced_by.get("fusion_race") if v.name == variant else None
                if race:
                    return race["kept"]
        return None

    def record(self) -> dict:
        return {"manifest": str(self.path), "sha256": self.sha256}


def load_replay(path: Path, recipe_sha256: str, profile_ids: list[str]) -> Replay:
    """The earlier manifest, refused unless it was built from this very recipe and these profiles."""
    path = manifest_file(path)
    manifest = read_manifest(path)
    if manifest.recipe.sha256 != recipe_sha256:
        raise UsageError(
            "this manifest was built from a different recipe (its sha256 differs)",
            path=path,
            field="recipe.sha256",
            fix="replay only a build of the same recipe file",
        )
    old_ids = [p.id for p in manifest.profiles]
    missing = [i for i in profile_ids if i not in old_ids]
    if missing:
        raise UsageError(
            f"profiles {missing} are not in the replayed build",
            path=path,
            field="profiles",
            fix="build the same profiles",
        )
    return Replay(path=path, sha256=sha256_file(path), manifest=manifest)
