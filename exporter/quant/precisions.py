"""Precisions registered by their name, one handler each (as torchao registers a handler per config).

A build (`exporter.pipeline.variants`) and `edgex quantize` (`quant.standalone`) resolve the same
handler here, so a precision is produced, checked and cached the same way in both. A handler owns
its check (the target runs it), its cache key (what determines its bytes), its run and its
post-condition (the produced weights are finite and no scale is zero). Adding a precision is one
new function beside the others plus one `register(...)` line.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from exporter.data import Dataset
from exporter.errors import TEST_FAULT_ENV, injected_fault, internal_step
from exporter.numerics import guard_produced
from exporter.quant.preset_race import isa_text
from exporter.quant.search import Evaluate
from exporter.recipe import QuantizeSection
from exporter.targets import Target

NOT_QUANTIZED = "fp32"  # the export itself: produced by the export stage, not by a handler here


def evaluation_mode(target: Target) -> str:
    """How quality is computed for a target (see runtime.EVALUATION_MODES): the CPU is judged on the
    fused kernels it ships ("deployed"); any other runtime on Q/DQ kept as nodes ("simulated"),
    because the host's fused integer kernels are the host's, not the device's."""
    return "deployed" if target.execution_provider == "CPUExecutionProvider" else "simulated"


@dataclass(frozen=True)
class StepKey:
    """What determines a produced file: two requests with equal keys share its bytes."""

    step: str
    subject: str  # the file or model it starts from
    settings: str = ""  # canonical JSON of the rest


@dataclass(frozen=True)
class Request:
    """What determines a variant (its cache key is computed from this alone)."""

    source: Path  # the FP32 graph it starts from
    target: Target
    settings: QuantizeSection
    budget: float
    transformer: bool = False  # a Hugging Face graph: the preset's transformer op types apply
    isa: frozenset[str] | None = None  # the device's instruction set (profile soc.isa): the preset race's entrants


@dataclass(frozen=True)
class RunInputs:
    """What a run needs besides its request: data and the accuracy/speed instruments."""

    calibration: Dataset
    batch: int
    seed: int
    evaluate: Evaluate | None = None
    speed_feed: dict[str, np.ndarray] | None = None
    speed_baseline: Path | None = None
    label: str = "quantize"
    speed_replay: dict | None = None
    race_replay: str | None = None  # the preset an earlier build's race kept (`edgex build --replay`)


@dataclass(frozen=True)
class Produced:
    path: Path
    record: dict  # the manifest's `produced_by`
    summary: dict  # what `edgex quantize` reports of the run


@dataclass(frozen=True)
class Handler:
    variant: str  # its name in the manifest
    precision: str  # what it computes (artifact.precision)
    requested_by: str  # the recipe / --precision name that asks for it
    graph: str  # the FP32 graph it starts from: "full", "for-int8" or "none" (see pipeline.variants.export_for)
    offered: Callable[[Target, QuantizeSection], bool]
    key: Callable[[Request], StepKey]
    file_name: Callable[[Request, StepKey], str]
    run: Callable[[Request, RunInputs, Path], Produced]
    describe: Callable[[Request, RunInputs], str]  # the build's log line before a run
    companion: bool = False  # offered beside the handler of its precision, never asked for alone
    searched: bool = False  # runs the accuracy search and the speed guard: needs RunInputs.evaluate etc.
    ensures: Callable[[Path, str], dict] = guard_produced  # NaN/Inf weights or zero scales: GateFailure

    def check(self, target: Target, where: Path | str, profile: str = "") -> None:
        """The target refuses what it cannot run, before any work is done."""
        target.refuse_precision(self.requested_by, where, profile)


REGISTRY: dict[str, Handler] = {}  # variant name -> handler, in the order variants are produced


def register(handler: Handler) -> Handler:
    """Add HANDLER; its run becomes an edgex step (`as_step`) whatever library it drives."""
    if handler.variant in REGISTRY:
        raise ValueError(f"precision variant '{handler.variant}' registered twice")
    handler = dataclasses.replace(handler, run=as_step(handler.variant, handler.run))
    REGISTRY[handler.variant] = handler
    return handler


def as_step(variant: str, run: Callable[[Request, RunInputs, Path], Produced]) -> Callable:
    """RUN as the step "quantize <variant>": a library's error on what edgex feeds it or writes
    (onnxruntime's quantizer, a temporary file that does not load) is an InternalError naming the
    step and the file edgex was writing (exit 3 alone, a failed variant in a build), never the
    user's model's fault. The test hook `EDGEX_TEST_FAULT=quantize:<variant>` fails it here."""

    @functools.wraps(run)
    def step(req: Request, run_inputs: RunInputs, out: Path) -> Produced:
        with internal_step(f"quantize {variant}", out):
            if injected_fault(f"quantize:{variant}"):
                raise ValueError(f"failure injected into this step by the test hook {TEST_FAULT_ENV}")
            return run(req, run_inputs, out)

    return step


def handler_for(precision: str) -> Handler:
    """The one handler that produces a requested precision (`edgex quantize --precision`)."""
    return next(h for h in REGISTRY.values() if h.requested_by == precision and not h.companion)


def planned(settings: QuantizeSection, target: Target) -> list[Handler]:
    """The handlers a build runs for a recipe's quantize section on a target, in variant order."""
    wanted = settings.precisions
    return [h for h in REGISTRY.values() if h.requested_by in wanted and h.offered(target, settings)]


def refuse_unrunnable(settings: QuantizeSection, target: Target, where: Path | str, profile: str) -> None:
    """Every precision the recipe asks for (FP32 alone when quantization is off) must run on the target."""
    if not settings.enabled:
        target.refuse_precision(NOT_QUANTIZED, where, profile)
        return
    for precision in settings.precisions:
        handler_for(precision).check(target, where, profile)


def _supported(target: Target, _settings: QuantizeSection) -> bool:
    return True  # the precision itself is refused up front (Handler.check) when the target lacks it


# -- static INT8 ------------------------------------------------------------------------------


def _int8_preset(req: Request):
    preset = req.target.quantization
    if req.transformer and preset.transformer_op_types is not None:
        preset = preset.model_copy(update={"op_types": preset.transformer_op_types})
    return preset


def _int8_settings(req: Request) -> str:
    static_fields = _int8_preset(req).model_dump(
        exclude={"precisions", "dynamic", "int4_format", "transformer_op_types"}
    )
    deployed = evaluation_mode(req.target) == "deployed"
    parts = [static_fields, req.settings.model_dump(), req.budget, deployed, _cpu_transformer(req)]
    if _raced(req):  # the race's entrants depend on the device's instruction set
        parts.append(isa_text(req.isa))
    return json.dumps(parts, sort_keys=True)


def _raced(req: Request) -> bool:
    """The preset race runs where the host runs the target's kernels and the profile names its ISA."""
    return req.isa is not None and req.settings.preset_race and evaluation_mode(req.target) == "deployed"


def _cpu_transformer(req: Request) -> bool:
    """A transformer for a runtime that runs onnxruntime's CPU kernels: its quantized file ships
    without shape annotations (quant/shape_annotations.py)."""
    return bool(req.transformer and req.target.contrib_ops)


def _int8_describe(req: Request, run: RunInputs) -> str:
    s, preset = req.settings, _int8_preset(req)
    return (
        f"[{run.label}] quantize INT8 for {req.target.id} ({preset.format}, {preset.activation_type}/"
        f"{preset.weight_type}, per-channel {preset.per_channel}, {s.calibration_method}, "
        f"{min(s.calibration_samples, len(run.calibration))} samples)"
    )


def _activations(q) -> str:
    """What the activations of the shipped file are: the preset's type, or 16-bit everywhere (A16W8)."""
    kept = (q.search or {}).get("kept_out_of_int8") or []
    if any(k["tensor"] == "*" for k in kept):
        return "uint16 (A16W8: every activation 16-bit, weights 8-bit)"
    return q.preset["activation_type"] + (f", {len(kept)} tensor(s) raised or kept" if kept else "")


def _int8_run(req: Request, run: RunInputs, out: Path) -> Produced:
    from exporter.quantize import quantize_int8

    s, preset = req.settings, _int8_preset(req)
    deployed = evaluation_mode(req.target) == "deployed"
    q = quantize_int8(
        req.source,
        out,
        run.calibration,
        s,
        preset,
        run.batch,
        run.seed,
        evaluate=run.evaluate,
        budget=req.budget,
        # The speed guard times host kernels: meaningful only where the host runs the target's own.
        speed_feed=run.speed_feed if deployed else None,
        speed_baseline=run.speed_baseline,
        label=run.label,
        speed_replay=run.speed_replay,
        race_isa=req.isa if _raced(req) else None,
        race_replay=run.race_replay,
        split_sinks=deployed,  # measured where onnxruntime's CPU kernels run the file (quant/sink_token.py)
    )
    preset_keys = (
        "format",
        "activation_type",
        "weight_type",
        "per_channel",
        "activation_symmetric",
        "weight_symmetric",
        "op_types",  # a raced preset may quantize other op types than the target's (Optimum's presets)
    )
    record = {"step": "quantize", "precision": "int8", "input_graph": req.source.name}
    record.update({k: q.preset[k] for k in preset_keys})
    record.update(
        {
            "calibration_method": q.method,
            "calibration_samples": q.calibration_samples,
            "calibration_sha256": q.calibration_digest,
            "quantized_nodes": q.quantized_nodes,
            "kept_in_float": q.float_nodes,
            "excluded_nodes": q.excluded_nodes,
            "notes": q.notes,
            "search": q.search,
            "speed_guard": q.speed_guard,
            "graph_rewrites": q.graph_rewrites,  # FP32 rewrites before calibration, each with parity
            "concat_parts": q.concat_parts,  # outputs concatenating far-apart ranges, and how they were kept apart
            "preset_race": q.preset_race,  # the configurations raced on a CPU target and the one kept
            "activations": _activations(q),
        }
    )
    if _cpu_transformer(req):
        from exporter.quant.shape_annotations import drop_shape_annotations

        record["shape_annotations"] = drop_shape_annotations(q.path)
    summary = {
        "method": q.method,
        "calibration_samples": q.calibration_samples,
        "search": q.search,
        "speed_guard": q.speed_guard,
        "notes": q.notes,
        "quantized_nodes": q.quantized_nodes,
        "kept_in_float": q.float_nodes,
        "preset_race": q.preset_race,
    }
    return Produced(q.path, record, summary)


register(
    Handler(
        variant="int8",
        precision="int8",
        requested_by="int8",
        graph="for-int8",
        offered=_supported,
        key=lambda req: StepKey("int8", req.source.name, _int8_settings(req)),
        file_name=lambda req, key: f"int8-{hashlib.sha256(key.settings.encode()).hexdigest()[:10]}.onnx",
        run=_int8_run,
        describe=_int8_describe,
        searched=True,
    )
)


# -- dynamic INT8 (CPU runtimes, beside static) ----------------------------------------------


def _converted(out: Path, precision: str, record_key: str, info: dict) -> Produced:
    """A one-call conversion's result: its facts in produced_by and under its own key."""
    return Produced(out, {"step": "quantize", "precision": precision, **info}, {record_key: info})


def _dynamic_run(req: Request, run: RunInputs, out: Path) -> Produced:
    from exporter.quant.dynamic import quantize_dynamic_int8

    info = quantize_dynamic_int8(req.source, out)
    if req.transformer:  # dynamic INT8 is for CPU runtimes: see quant/shape_annotations.py
        from exporter.quant.shape_annotations import drop_shape_annotations

        info["shape_annotations"] = drop_shape_annotations(out)
    return _converted(out, "int8", "dynamic", info)


register(
    Handler(
        variant="int8-dynamic",
        precision="int8",
        requested_by="int8",
        graph="full",
        offered=lambda target, settings: settings.dynamic and target.quantization.dynamic,
        key=lambda req: StepKey("int8-dynamic", req.source.name),
        file_name=lambda req, key: f"int8-dynamic-{req.source.stem}.onnx",
        run=_dynamic_run,
        describe=lambda req, run: f"[{run.label}] quantize dynamic INT8 (per-channel weights) for {req.target.id}",
        companion=True,
    )
)


# -- INT4 weight-only --------------------------------------------------------------------------


def _int4_legacy_tuple(req: Request) -> tuple:
    """The tuple the work file was named after before keys were records: same names, same logs."""
    return ("int4", req.source.name, req.settings.int4.model_dump_json(), req.target.quantization.int4_format)


def _int4_run(req: Request, run: RunInputs, out: Path) -> Produced:
    from exporter.quant.weight_only import quantize_int4

    s4 = req.settings.int4
    feeds = run.calibration.feeds(run.batch, 32)  # GPTQ's calibration
    res = quantize_int4(req.source, out, s4, req.target.quantization.int4_format, feeds)
    record = {"step": "quantize", "precision": "int4", **res.settings, "nodes": res.quantized}
    return Produced(out, record, {"int4": res.settings})


register(
    Handler(
        variant="int4",
        precision="int4",
        requested_by="int4",
        graph="none",  # MatMulNBits and GatherBlockQuantized need the plain MatMul/Gather graph
        offered=_supported,
        key=lambda req: StepKey(
            "int4", req.source.name, json.dumps([req.settings.int4.model_dump(), req.target.quantization.int4_format])
        ),
        file_name=lambda req, key: (
            f"int4-{hashlib.sha256(repr(_int4_legacy_tuple(req)).encode()).hexdigest()[:10]}.onnx"
        ),
        run=_int4_run,
        describe=lambda req, run: (
            f"[{run.label}] quantize INT4 weights ({req.settings.int4.algorithm}, "
            f"block {req.settings.int4.block_size}) for {req.target.id}"
        ),
    )
)


# -- FP16 ----------------------------------------------------------------------------------------


def _fp16_run(req: Request, run: RunInputs, out: Path) -> Produced:
    from exporter.quant.fp16 import convert_fp16

    return _converted(out, "fp16", "fp16", convert_fp16(req.source, out))


register(
    Handler(
        variant="fp16",
        precision="fp16",
        requested_by="fp16",
        graph="full",
        offered=_supported,
        key=lambda req: StepKey("fp16", req.source.name),
        file_name=lambda req, key: f"fp16-{req.source.stem}.onnx",
        run=_fp16_run,
        describe=lambda req, run: f"[{run.label}] convert to FP16 for {req.target.id}",
    )
)
