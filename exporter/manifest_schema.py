"""The manifest's schema: one pydantic model that every manifest is written and read through.

A release pipeline branches on the manifest, so its shape is a contract: structure is strict
(unknown or missing keys are refused), and only what a stage genuinely leaves open (a step's
`produced_by`, the preflight record, the device estimate, extra metrics, compression records)
is a free mapping. Validation is strict too, so a value is never coerced: what is read is
exactly what is written back, and the canonical digest of a read manifest equals the one
computed when it was built.

`content_sha256` is the sha256 of the canonical JSON (sorted keys, no whitespace) of the
manifest without that field. `edgex verify` recomputes it, so an edited field (a verdict
flipped to true) is caught without a signature; a deliberate editor can recompute it, which is
what `edgex sign` guards against. Manifests written before the field existed read as before
(`content_sha256` absent) and `verify` says it cannot check their content.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from exporter.errors import UsageError

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
DIGEST_FIELD = "content_sha256"
Number = int | float  # ints stay ints: a limit of 20 is written "20", never "20.0"
Open = dict[str, Any]  # a stage's own record: its keys are the stage's to choose


class Record(BaseModel):
    """Strict, frozen, never coerces; dumps exactly the keys it was given (by their JSON names)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, populate_by_name=True)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, exclude_unset=True)


class RecipeRef(Record):
    path: str
    sha256: str
    name: str


class ReplayRef(Record):
    manifest: str = Field(description="The earlier manifest whose timing-based decisions were repeated.")
    sha256: str


class TimingFields(Record):
    keys: list[str] = Field(description="Keys, anywhere in the manifest, that may differ between two builds.")
    files: list[str]


class ModelRef(Record):
    source: str
    weights_sha256: str | None
    trusted_code: bool = Field(description="True when --trust-code let a code-carrying checkpoint load.")


class DataDigest(Record):
    samples: int
    sha256: str


class DataRef(Record):
    calibration: DataDigest
    evaluation: DataDigest


class MetricRef(Record):
    name: str
    baseline: Number
    baseline_of: str


class FileEntry(Record):
    path: str = Field(description="Relative to the release folder, '/'-separated.")
    sha256: str
    bytes: int


class Host(Record):
    cpu: str
    cores: int | None
    machine: str
    system: str


class Affinity(Record):
    requested: list[int] | None
    applied: list[int] | None
    reason: str


class Threads(Record):
    profile: int
    host: int
    affinity: Affinity


class Bench(Record):
    warmup_runs: int
    min_runs: int
    min_seconds: Number
    max_seconds: Number
    mlperf: bool


class InputRecord(Record):
    name: str
    shape: list[int]
    dtype: str


class ProfileData(Record):
    calibration_sha256: str
    evaluation_sha256: str
    baseline_metric: Number


class Decisions(Record):
    deliverable: str
    by: str
    replayed_from: ReplayRef | None = None


class DeliverablePackage(Record):
    model: str
    runtime: str
    reference: str
    format: str


class Verdict(Record):
    budget: str
    limit: Number | None
    value: Number | None
    ok: bool | None = Field(description="null: the budget could not be evaluated (never counted as a pass).")
    unit: str
    basis: str
    margin: Number | None
    interval: list[Number] | None
    decided: bool | None


class Artifact(Record):
    path: str
    sha256: str
    bytes: int
    precision: str


class Latency(Record):
    p50: Number
    p90: Number
    p99: Number
    p99_9: Number = Field(alias="p99.9")
    mean: Number
    stdev: Number
    runs: int
    threads: int
    basis: str
    budget_percentile: Number
    interval95: list[Number]
    interval95_half_width_pct: Number | None


class Memory(Record):
    peak_rss_mb: Number
    baseline_rss_mb: Number
    session_mb: Number


class VariantMetric(Record):
    name: str
    value: Number
    drop: Number
    evaluated: str


class VariantPackage(Record):
    path: str
    format: str
    required_operators: str | None = None
    parity: Open | None = None
    reproducible: bool | None = None


class WeightsCheck(Record):
    non_finite: list[str]
    zero_scales: list[str]
    all_zero_channels: dict[str, int]


class Variant(Record):
    name: str
    artifact: Artifact
    latency_ms: Latency
    device_estimate: Open
    measured_power: Open | None
    power_judged_on: Literal["measured", "estimate"] | None
    memory_mb: Number
    memory: Memory
    metric: VariantMetric
    metrics: dict[str, Number] = Field(description="Further named values next to the primary metric.")
    output_sqnr: list[Open] = Field(
        default_factory=list,
        description="SQNR (dB) of each output against FP32, and of each part of an output that concatenates "
        "far-apart ranges (YOLO boxes beside class scores); 'inf' when identical.",
    )
    params: int
    macs: int
    produced_by: Open = Field(description="What the step that made this file did; its keys depend on the step.")
    parent: str | None
    verdicts: list[Verdict]
    ok: bool
    preflight: Open
    weights_check: WeightsCheck
    package: VariantPackage
    npu: Open | None = Field(
        default=None,
        description="QNN variants: the metric on onnxruntime-qnn's emulated HTP (a seeded subset) vs FP32 and vs "
        "the Q/DQ simulation, or why it did not run (`available: false`).",
    )


class Failure(Record):
    step: str = Field(description="The step that failed, e.g. 'quantize int8-dynamic', 'preflight and package'.")
    error: str = Field(description="Why, whole (never cut): the error's type and message.")
    file: str | None = Field(default=None, description="Name of the file edgex was making when it failed.")


class FailedVariant(Record):
    """A variant the recipe asked for that could not be made or measured; the build went on without it."""

    name: str
    precision: str
    parent: str | None
    failed: Failure


class Profile(Record):
    id: str
    name: str
    device_class: str = Field(alias="class")
    target: str
    execution_provider: str
    host_execution_provider: str
    threads: Threads
    bench: Bench
    inputs: list[InputRecord]
    data: ProfileData
    deliverable: str
    decisions: Decisions
    package: DeliverablePackage
    variants: list[Variant]
    tokenizer: list[str]
    compression: str | None = Field(description="Key of the top-level `compression` record this profile used.")
    verdicts: list[Verdict]
    not_evaluated: list[str]
    ok: bool
    context_binary: Open | None = Field(
        default=None,
        description="QNN profiles: the shipped variant compiled to an EPContext model for the profile's SoC, "
        "loaded back with CPU fallback disabled, with the QNN/QAIRT and onnxruntime versions it needs.",
    )
    failed_variants: list[FailedVariant] = Field(
        default_factory=list,
        description="Variants that failed (written only when there are any; the profile's `ok` is then false).",
    )


class CellMatrix(Record):
    id: str
    cells: list[str]


class Cell(Record):
    """Written by `edgex build --plan --cell`: which cell of which plan this release is."""

    id: str
    key: str
    recipe: str
    recipe_name: str
    profile: str
    matrix: CellMatrix


class Manifest(Record):
    """The contract with release pipelines (`edgex schema manifest`)."""

    schema_version: Literal[1]
    recipe: RecipeRef
    tool_versions: dict[str, str]
    host: Host
    seed: int
    source_date_epoch: str | None
    replayed_from: ReplayRef | None
    timing_fields: TimingFields
    model: ModelRef
    data: DataRef
    metric: MetricRef
    compression: dict[str, Open]
    profiles: list[Profile]
    ok: bool
    files: list[FileEntry]
    cell: Cell | None = None
    content_sha256: str | None = Field(
        default=None,
        description="sha256 of the canonical JSON (sorted keys, no whitespace) of this manifest without this key.",
    )

    def digest(self) -> str:
        return content_digest(self.to_dict())

    def sealed(self) -> Manifest:
        """This manifest carrying the digest of its current content."""
        return self.model_copy(update={DIGEST_FIELD: self.digest()})


def content_digest(manifest: dict[str, Any]) -> str:
    """sha256 of the canonical JSON of a manifest mapping, its own digest left out."""
    body = {k: v for k, v in manifest.items() if k != DIGEST_FIELD}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def manifest_file(path: Path) -> Path:
    """A release folder's manifest, or the file itself."""
    path = Path(path)
    return path / MANIFEST if path.is_dir() else path


def first_problem(exc: ValidationError) -> tuple[str, str]:
    """(field, reason) of the first validation error, the field dotted as in the JSON."""
    errors = sorted(exc.errors(), key=lambda e: e["type"] != "extra_forbidden")
    err = errors[0]
    field = ".".join(str(p) for p in err["loc"] if not str(p).startswith("function-")) or "(top level)"
    reasons = {"missing": "a required key is missing", "extra_forbidden": "an unknown key"}
    return field, reasons.get(err["type"], err["msg"][:1].lower() + err["msg"][1:])


def parse_manifest(data: object, where: Path | str) -> Manifest:
    """Validate an already-parsed manifest; any problem is a one-line UsageError (exit 2)."""
    fix = "give the manifest.json of an edgex build (see `edgex schema manifest`)"
    if not isinstance(data, dict):
        raise UsageError("not an edgex manifest (not a JSON object)", path=where, field="(top level)", fix=fix)
    version = data.get("schema_version")
    if version is None:
        raise UsageError("not an edgex manifest (no schema_version)", path=where, field="schema_version", fix=fix)
    if version != SCHEMA_VERSION:
        raise UsageError(
            f"schema_version {version!r} is not one this edgex reads ({SCHEMA_VERSION})",
            path=where,
            field="schema_version",
            fix="read it with the edgex that wrote it",
        )
    try:
        return Manifest.model_validate(data)
    except ValidationError as exc:
        field, reason = first_problem(exc)
        raise UsageError(f"not an edgex manifest ({reason})", path=where, field=field, fix=fix) from None


def read_manifest(path: Path) -> Manifest:
    """The manifest of a release folder (or the file given): the one reader compare, merge,
    verify and replay share, so a bad manifest gets the same one-line error everywhere."""
    path = Path(path)
    file = manifest_file(path)
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        if path.is_dir():
            raise UsageError(
                "no manifest.json in this folder",
                path=path,
                field="(folder)",
                fix="give the output folder of an edgex build",
            ) from None
        raise UsageError(
            "manifest not found", path=file, field="(file)", fix="give an edgex release folder or its manifest.json"
        ) from None
    except (OSError, ValueError):  # unreadable, not UTF-8, not JSON
        raise UsageError("not a JSON manifest", path=file, field="(file)", fix="give an edgex manifest.json") from None
    return parse_manifest(data, file)


def manifest_json_schema() -> dict[str, Any]:
    """The JSON Schema of the manifest (`edgex schema manifest`)."""
    schema = Manifest.model_json_schema(by_alias=True)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return schema
