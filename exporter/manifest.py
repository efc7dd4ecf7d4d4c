"""The manifest: the contract with release pipelines. Versioned; keys sorted; every file hashed.

Built from plain facts (a record does not know the pipeline that gathered them) and written only
through `manifest_schema.Manifest`: a build that would write a manifest its own schema refuses
stops with an internal error instead of shipping it. The written manifest carries the digest
of its content (`content_sha256`, see manifest_schema).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Protocol

from pydantic import ValidationError

from exporter.callables import TRUST_CODE
from exporter.digest import sha256_file
from exporter.errors import EdgexError
from exporter.manifest_schema import DIGEST_FIELD, MANIFEST, SCHEMA_VERSION, Manifest, first_problem
from exporter.recipe import LoadedRecipe
from exporter.versions import host_facts, source_date_epoch, tool_versions

__all__ = ["DERIVED_FIELDS", "MANIFEST", "SCHEMA_VERSION", "TIMING_FIELDS", "build_manifest", "write_manifest"]

# What may differ between two builds of the same inputs (timings and what is computed from them):
# the keys below anywhere in the manifest, and the files that print them. Everything else is
# byte-identical, `edgex build --replay` making the timing-based decisions the same.
TIMING_FIELDS = {
    "keys": [
        "latency_ms",
        "memory",
        "memory_mb",  # the measured session memory, copied to the variant's top level
        "device_estimate",
        "verdicts",
        "ok",
        "not_evaluated",
        "speed_guard",
        "preset_race",
        "fusion_race",  # which FP32 graph of a transformer was faster (replayed by --replay)
        "latency_table",  # the head/neuron times a latency-goal prune was planned with
        "parity",
        "host",
        "replayed_from",
        "decisions",
        "measured_power",  # sampled during the timed run, like latency
        "power_judged_on",
    ],
    "files": ["manifest.json", "report.md", "latency_vs_accuracy.png"],
}
# Computed from the rest of the manifest, so they differ whenever a timing field does. Not written
# into `timing_fields`, which stays as manifests have always carried it.
DERIVED_FIELDS = [DIGEST_FIELD]


class Samples(Protocol):
    digest: str

    def __len__(self) -> int: ...


class BuildFacts(Protocol):
    """What a manifest records about a build (the pipeline's context satisfies it).

    Optional: `replay` (exporter.replay.Replay) and `compressed` (values with a `.record` dict)."""

    loaded: LoadedRecipe
    model: Any  # has weights_sha256
    calibration: Samples
    evaluation: Samples
    metric_name: str
    baseline_metric: float


def file_entries(root: Path) -> list[dict]:
    entries = []
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p.name != MANIFEST):
        entries.append(
            {"path": path.relative_to(root).as_posix(), "sha256": sha256_file(path), "bytes": path.stat().st_size}
        )
    return entries


def build_manifest(facts: BuildFacts, profiles: list[dict], root: Path) -> dict:
    """The manifest of the release in ROOT, validated and sealed with its digest."""
    r = facts.loaded.recipe
    replay = getattr(facts, "replay", None)
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "recipe": {"path": str(facts.loaded.path), "sha256": facts.loaded.sha256, "name": r.name},
        "tool_versions": tool_versions(),
        "host": host_facts(),
        "seed": r.seed,
        "source_date_epoch": source_date_epoch(),
        "replayed_from": replay.record() if replay is not None else None,
        "timing_fields": TIMING_FIELDS,
        "model": {
            "source": r.model.source,
            "weights_sha256": facts.model.weights_sha256,
            "trusted_code": TRUST_CODE.get(),  # True when the build ran with --trust-code
        },
        "data": {
            "calibration": {"samples": len(facts.calibration), "sha256": facts.calibration.digest},
            "evaluation": {"samples": len(facts.evaluation), "sha256": facts.evaluation.digest},
        },
        "metric": {
            "name": facts.metric_name,
            "baseline": round(facts.baseline_metric, 6),
            "baseline_of": "the source model in FP32 (PyTorch or the given ONNX)",
        },
        "compression": {c.record["cache"]["key"][:12]: c.record for c in getattr(facts, "compressed", {}).values()},
        "profiles": profiles,
        "ok": all(p["ok"] for p in profiles),
        "files": file_entries(root),
    }
    return _checked(manifest).sealed().to_dict()


class InvalidManifest(EdgexError):
    """The build produced a manifest its own schema refuses: a bug in edgex (exit 3), never shipped."""


def _checked(manifest: dict | Manifest) -> Manifest:
    if isinstance(manifest, Manifest):
        return manifest
    # Validated in its JSON form (tuples as lists), exactly as it will be read back.
    data = json.loads(json.dumps(manifest))
    try:
        return Manifest.model_validate(data)
    except ValidationError as exc:
        field, reason = first_problem(exc)
        raise InvalidManifest(
            f"internal error: the manifest this build would write is invalid at {field}: {reason}"
        ) from None


def write_manifest(root: Path, manifest: dict | Manifest) -> Path:
    """Write ROOT/manifest.json through the schema, with the digest of what is written."""
    path = root / MANIFEST
    data = _checked(manifest).sealed().to_dict()
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return path
