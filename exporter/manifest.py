"""The manifest: the contract with release pipelines. Versioned; keys sorted; every file hashed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from exporter.digest import sha256_file
from exporter.versions import host_facts, source_date_epoch, tool_versions

if TYPE_CHECKING:
    from exporter.pipeline import Context

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
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
        "parity",
        "host",
        "replayed_from",
        "decisions",
        "measured_power",  # sampled during the timed run, like latency
        "power_judged_on",
    ],
    "files": ["manifest.json", "report.md", "latency_vs_accuracy.png"],
}


def file_entries(root: Path) -> list[dict]:
    entries = []
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p.name != MANIFEST):
        entries.append(
            {"path": path.relative_to(root).as_posix(), "sha256": sha256_file(path), "bytes": path.stat().st_size}
        )
    return entries


def build_manifest(ctx: Context, profiles: list[dict], root: Path) -> dict:
    r = ctx.loaded.recipe
    return {
        "schema_version": SCHEMA_VERSION,
        "recipe": {"path": str(ctx.loaded.path), "sha256": ctx.loaded.sha256, "name": r.name},
        "tool_versions": tool_versions(),
        "host": host_facts(),
        "seed": r.seed,
        "source_date_epoch": source_date_epoch(),
        "replayed_from": ctx.replay.record() if getattr(ctx, "replay", None) is not None else None,
        "timing_fields": TIMING_FIELDS,
        "model": {
            "source": r.model.source,
            "weights_sha256": ctx.model.weights_sha256,
            "trusted_code": _trusted_code(),
        },
        "data": {
            "calibration": {"samples": len(ctx.calibration), "sha256": ctx.calibration.digest},
            "evaluation": {"samples": len(ctx.evaluation), "sha256": ctx.evaluation.digest},
        },
        "metric": {
            "name": ctx.metric_name,
            "baseline": round(ctx.baseline_metric, 6),
            "baseline_of": "the source model in FP32 (PyTorch or the given ONNX)",
        },
        "compression": {c.record["cache"]["key"][:12]: c.record for c in getattr(ctx, "compressed", {}).values()},
        "profiles": profiles,
        "ok": all(p["ok"] for p in profiles),
        "files": file_entries(root),
    }


def _trusted_code() -> bool:
    """True when the build ran with --trust-code (code-carrying checkpoints were allowed)."""
    from exporter.sources import TRUST_CODE

    return TRUST_CODE.get()


def write_manifest(root: Path, manifest: dict) -> Path:
    path = root / MANIFEST
    path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return path
