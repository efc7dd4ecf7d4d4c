"""Quantize stage: static INT8 with onnxruntime.quantization, from the target's preset.

The preset comes from the target declaration (why each choice is documented there), or on a CPU
target from the preset race among the configurations the device runs (quant/preset_race.py); the recipe
picks the calibration method and sample count. What stays in float is counted and reported,
never left silent.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
from onnxruntime.quantization import (
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.execution_providers.qnn import get_qnn_qdq_config
from onnxruntime.quantization.shape_inference import quant_pre_process

from exporter import log
from exporter.data import Dataset, feed_digest
from exporter.digest import sha256_file
from exporter.errors import UsageError, clip, injected_fault, internal_step
from exporter.onnx_io import save_model
from exporter.quant.calibration import FeedReader, bounded_samples
from exporter.quant.concat_parts import keep_parts_apart
from exporter.quant.graph_edit import name_unnamed_nodes
from exporter.quant.npu_graph import prepare_for_integer_npu
from exporter.quant.preset_race import race
from exporter.quant.qdq_graph import float_compute_nodes
from exporter.quant.search import ALL_ACTIVATIONS, Evaluate, search
from exporter.quant.sink_token import split_sink_rows
from exporter.quant.speed import replay_guard, speed_guard, time_ratio
from exporter.recipe import QuantizeSection
from exporter.targets import QuantPreset

_QUANT_TYPES = {
    "uint8": QuantType.QUInt8,
    "int8": QuantType.QInt8,
    "uint16": QuantType.QUInt16,
    "int16": QuantType.QInt16,
}
_METHODS = {
    "minmax": CalibrationMethod.MinMax,
    "entropy": CalibrationMethod.Entropy,
    "percentile": CalibrationMethod.Percentile,
    "distribution": CalibrationMethod.Distribution,
}


@dataclass(frozen=True)
class QuantizeResult:
    path: Path
    calibration_samples: int
    calibration_digest: str
    method: str
    preset: dict
    quantized_nodes: dict[str, int] = field(default_factory=dict)
    float_nodes: dict[str, int] = field(default_factory=dict)
    excluded_nodes: dict[str, str] = field(default_factory=dict)  # node -> why it was kept in float
    notes: list[str] = field(default_factory=list)
    search: dict | None = None  # the accuracy search: steps, tensors kept out of INT8, whether it met the budget
    speed_guard: dict | None = None
    graph_rewrites: list[dict] = field(default_factory=list)  # FP32 rewrites before calibration, with parity
    concat_parts: list[dict] = field(default_factory=list)  # outputs concatenating far-apart ranges, kept apart
    preset_race: dict | None = None  # the CPU preset race (quant/preset_race.py): candidates, timings, winner


def quantize_int8(
    fp32_path: Path,
    out_path: Path,
    calibration: Dataset,
    settings: QuantizeSection,
    preset: QuantPreset,
    batch: int,
    seed: int,
    evaluate: Evaluate | None = None,
    budget: float | None = None,
    speed_feed: dict[str, np.ndarray] | None = None,
    speed_baseline: Path | None = None,
    label: str = "quantize",
    keep_dir: Path | None = None,
    speed_replay: dict | None = None,
    race_isa: frozenset[str] | None = None,
    race_replay: str | None = None,
    split_sinks: bool = False,
) -> QuantizeResult:
    """Static INT8: pre-process, calibrate, quantize; then the accuracy search and the speed guard.

    `evaluate` (path -> accuracy drop) and `budget` enable the search; `speed_feed` enables the
    speed guard, which only makes sense where the host runs the target's own kernels (CPU). It
    times against `speed_baseline`, the FP32 graph the build ships (for a transformer, the faster of
    the fused and the plain graph, not the graph quantization starts from), defaulting to `fp32_path`.
    `speed_replay` (the speed-guard record of an earlier build, `edgex build --replay`) repeats
    that build's decision without timing anything, so the INT8 bytes are the same. `race_isa` (the
    device's instruction set) with the speed instruments runs the preset race first
    (quant/preset_race.py); `race_replay` repeats an earlier build's winner. `split_sinks`: keep an
    attention sink's rows apart first (quant/sink_token.py), where onnxruntime's CPU kernels run the file.
    """
    if preset.format != "qdq" and preset.activation_type.endswith("16"):
        raise UsageError(
            "16-bit activations need the QDQ format", path="targets", field="quantization.format", fix="use format: qdq"
        )
    sample = calibration.take(settings.calibration_samples, seed)
    reference = speed_baseline or fp32_path  # what the race and the speed guard time INT8 against
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="edgex-quant-") as tmp_name:
        tmp = Path(tmp_name)
        prepped, source = tmp / "prepped.onnx", fp32_path
        graph_rewrites: list[dict] = []
        carried = sample.feeding is not None and sample.feeding.carried  # chunks: position 0 is no sink
        if split_sinks and preset.fallback == "float" and not carried:  # see quant/sink_token.py for where
            # before pre-processing, which turns a static-shape MatMul + Add into a 2-D Gemm
            with internal_step("static INT8: attention-sink rows apart (exporter.quant.sink_token)", source):
                split, graph_rewrites = split_sink_rows(onnx.load(str(fp32_path)), sample.feeds(batch, 16))
                if graph_rewrites and graph_rewrites[0]["applied"]:
                    source = tmp / "sink-split.onnx"
                    onnx.save(split, str(source))
                for rec in graph_rewrites:
                    log.info(f"[{label}] FP32 rewrite: {_rewrite_text(rec)}")
        with internal_step("static INT8: pre-process (onnxruntime quant_pre_process)", prepped):
            quant_pre_process(str(source), str(prepped), skip_symbolic_shape=True)
        if preset.fallback == "uint16":  # an integer-only NPU (QNN's HTP): FP32 rewrites before any calibration
            with internal_step("static INT8: integer-NPU graph rewrites (exporter.quant.npu_graph)", prepped):
                rewritten, graph_rewrites = prepare_for_integer_npu(onnx.load(str(prepped)), sample.feeds(batch, 32))
                named = name_unnamed_nodes(rewritten)
                if named:  # onnxruntime's QNN mixed-precision fixer addresses nodes by name
                    graph_rewrites.append({"kind": "named-nodes", "nodes": named, "why": "the QNN settings need names"})
                if graph_rewrites:
                    onnx.save(rewritten, str(prepped))
            for rec in graph_rewrites:
                if rec.get("kind") != "fp32-parity":
                    log.info(f"[{label}] integer-NPU rewrite: {_rewrite_text(rec)}")
        concat_parts, excluded, pinned = keep_parts_apart(prepped, sample.feeds(batch, 8), preset.fallback, label)
        methods = [settings.calibration_method] + [
            m for m in settings.search.calibration_methods if m != settings.calibration_method
        ]
        samples: dict[str, Dataset] = {}

        def data_for(method: str) -> Dataset:
            """Calibration samples `method` can hold; measured only when the method is first used."""
            if method not in samples:
                samples[method], note = bounded_samples(
                    prepped, sample, method, settings.calibration_memory_mb, batch, seed
                )
                if note:
                    notes.append(note)
            return samples[method]

        counter = iter(range(10_000))

        def requantize(
            method: str,
            overrides: dict[str, str],
            op_types: list[str] | None = None,
            exclude: tuple[str, ...] = (),
            use: QuantPreset | None = None,
        ) -> Path:
            out = tmp / f"int8-{next(counter)}.onnx"
            with internal_step("static INT8: calibration sizing", prepped):
                data = data_for(method)
            with internal_step("static INT8: calibrate and quantize (onnxruntime quantize_static)", out):
                _quantize_excluding(out, data, method, {**pinned, **overrides}, op_types, exclude, use or preset)
                if injected_fault("corrupt:int8-quantized"):  # test hook: a written file that cannot load
                    out.write_bytes(out.read_bytes()[: out.stat().st_size // 2])
            return out

        def _quantize_excluding(out, data, method, overrides, op_types, exclude, use) -> None:
            while True:
                try:
                    _quantize_once(
                        prepped,
                        out,
                        tmp,
                        data,
                        method,
                        use,
                        batch,
                        sorted(set(excluded) | set(exclude)),
                        overrides,
                        op_types,
                    )
                    return
                except ValueError as exc:
                    node = _bias_failure_node(prepped, str(exc))
                    if node is None or node in excluded or len(excluded) >= 16:
                        raise
                    # onnxruntime cannot quantize this node's bias because its input stays float (e.g. a
                    # Gemm after Tanh); keep that node in float, say so, and quantize the rest.
                    excluded[node] = clip(str(exc), 200)

        searched: dict | None = None
        guard: dict | None = None
        raced: dict | None = None
        checked = _on_edgex_files(evaluate) if evaluate is not None else None
        if race_isa is not None and speed_feed is not None and checked is not None and budget is not None:
            before = dict(excluded)  # what a losing entrant made onnxruntime refuse is not the winner's
            with internal_step("static INT8: preset race", prepped):
                preset, raced = race(
                    preset,
                    race_isa,
                    lambda p: requantize(settings.calibration_method, {}, use=p),
                    checked,
                    budget,
                    speed_feed,
                    reference,
                    label,
                    race_replay,
                    facts={
                        "model": sha256_file(prepped),
                        "baseline": sha256_file(reference),
                        "calibration": data_for(settings.calibration_method).digest,
                        "method": settings.calibration_method,
                        "feed": feed_digest(speed_feed, None),
                    },
                )
            excluded.clear()
            excluded.update(before)
        if checked is not None and budget is not None and settings.search.enabled:
            feeds = sample.feeds(batch, 8)
            fallback = "uint16" if preset.fallback == "uint16" else "float"
            result = search(
                requantize,
                checked,
                prepped,
                feeds,
                budget,
                methods,
                fallback,
                settings.search.max_kept,
                tmp,
                label,
            )
            chosen, method = result.path, result.method
            searched = {
                "budget": budget,
                "met": result.met,
                "drop": round(result.drop, 6),
                "kept_out_of_int8": result.kept,
                "op_types": result.op_types,  # only these quantized (the rest float), when per-tensor steps missed
                "steps": result.steps,
                "evaluated_on": "evaluation set"
                + (f" ({settings.search.samples}-sample subset)" if settings.search.samples else ""),
            }
        else:
            method = settings.calibration_method
            chosen = requantize(method, {})
            result = SimpleNamespace(path=chosen, method=method, kept=[], all_quantized=None)
        # The guard holds whether or not the accuracy search ran: every static INT8 file a CPU target
        # ships is timed against FP32 (a rung's accuracy is checked with the evaluator).
        guarded = speed_feed is not None and settings.speed_guard
        if guarded and speed_replay is not None:
            chosen, guard = replay_guard(speed_replay, prepped, chosen, result, requantize, label)
        elif guarded and checked is not None and budget is not None:
            with internal_step("static INT8: speed guard", chosen):
                chosen, guard = speed_guard(
                    reference, prepped, chosen, result, requantize, checked, budget, speed_feed, method, label
                )
                if result.kept and result.all_quantized is not None:
                    # what keeping tensors out of INT8 cost in time
                    guard["ratio_all_quantized"] = round(time_ratio(reference, result.all_quantized, speed_feed), 3)
        if keep_dir is not None and searched is not None:  # every model the search tried (benchmarks plot them)
            for i, step in enumerate(searched["steps"]):
                shutil.copyfile(tmp / step["file"], keep_dir / f"step{i:02d}.onnx")
        if searched is not None:
            for step in searched["steps"]:
                step.pop("file")
        with internal_step("static INT8: count and save the chosen file", chosen):
            model = onnx.load(str(chosen))
            quantized, floating = float_compute_nodes(model)
            save_model(model, out_path)
    return QuantizeResult(
        path=out_path,
        calibration_samples=len(samples[method]),
        calibration_digest=samples[method].digest,
        method=method,
        preset=preset.model_dump(),
        quantized_nodes=quantized,
        float_nodes=floating,
        excluded_nodes=excluded,
        notes=notes,
        search=searched,
        speed_guard=guard,
        graph_rewrites=graph_rewrites,
        concat_parts=concat_parts,
        preset_race=raced,
    )


def _on_edgex_files(evaluate: Evaluate) -> Evaluate:
    """EVALUATE on the quantized files edgex writes: a file that fails to load or run is edgex's
    error (InternalError naming the step and the file), never a reason to re-export the user's model."""

    def checked(path: Path) -> float:
        with internal_step("static INT8: accuracy search (evaluating a quantized file)", Path(path)):
            return evaluate(path)

    return checked


_BIAS_FAILURE = re.compile(r"(?:for input '([^']+)' )?when quantizing bias '([^']+)'")


def _bias_failure_node(model_path: Path, message: str) -> str | None:
    """The node whose bias onnxruntime failed to quantize, or None for any other failure.

    Identical initializers may be shared (a LayerNorm bias and a Gemm bias with equal values), so
    the node must read both the failing input and the bias."""
    found = _BIAS_FAILURE.search(message)
    if not found:
        return None
    wanted = {t for t in found.groups() if t}
    model = onnx.load(str(model_path), load_external_data=False)
    return next((n.name for n in model.graph.node if wanted <= set(n.input) and n.name), None)


def _quantize_once(
    prepped: Path,
    raw: Path,
    tmp: Path,
    sample: Dataset,
    method: str,
    preset: QuantPreset,
    batch: int,
    exclude: list[str],
    overrides: dict[str, str],
    op_types: list[str] | None,
) -> None:
    # onnxruntime.quantization logs every tensor it leaves in float; the same facts are counted
    # afterwards and reported per variant as `kept_in_float`.
    activation_type = _QUANT_TYPES[preset.activation_type]
    per_channel = preset.per_channel
    if ALL_ACTIVATIONS in overrides:  # A16W8: every activation at the override's type, weights as the preset
        activation_type = _QUANT_TYPES[overrides[ALL_ACTIVATIONS]]
        overrides = {k: v for k, v in overrides.items() if k != ALL_ACTIVATIONS}
        # per-channel Gemm weights (measured on MiniLM on the HTP: cosine 0.986 per-tensor, 0.997 per-channel)
        per_channel = per_channel or preset.fallback == "uint16"
    extra = {
        "ActivationSymmetric": preset.activation_symmetric,
        "WeightSymmetric": preset.weight_symmetric,
        # Matrix products whose outputs the search keeps in float still run integer kernels.
        "TensorQuantOverrides": {t: [{"quant_type": _QUANT_TYPES[q]}] for t, q in overrides.items()},
    }
    op_types_to_quantize = op_types or preset.op_types
    if preset.fallback == "uint16":
        # An integer-only NPU: onnxruntime's own QNN settings quantize every op type the HTP runs and
        # insert the 8/16-bit conversions mixed precision needs (without them QNN refuses the op and
        # its bias DequantizeLinear falls back to the CPU).
        cfg = get_qnn_qdq_config(
            str(prepped),
            FeedReader(sample.feeds(batch)),
            calibrate_method=_METHODS[method],
            activation_type=activation_type,
            weight_type=_QUANT_TYPES[preset.weight_type],
            per_channel=per_channel,
            init_overrides={t: [{"quant_type": _QUANT_TYPES[q]}] for t, q in overrides.items()} or None,
            activation_symmetric=preset.activation_symmetric,
            weight_symmetric=preset.weight_symmetric,
            op_types_to_quantize=op_types_to_quantize,
            nodes_to_exclude=exclude or None,
        )
        extra = dict(cfg.extra_options)
        op_types_to_quantize = cfg.op_types_to_quantize
    with log.quiet_libraries():
        quantize_static(
            str(prepped),
            str(raw),
            FeedReader(sample.feeds(batch)),
            quant_format=QuantFormat.QDQ if preset.format == "qdq" else QuantFormat.QOperator,
            op_types_to_quantize=op_types_to_quantize,
            per_channel=per_channel,
            activation_type=activation_type,
            weight_type=_QUANT_TYPES[preset.weight_type],
            nodes_to_exclude=exclude or None,
            calibrate_method=_METHODS[method],
            # Ranges depend on the method and the tensors calibrated (the op types), not on types,
            # formats, overrides or exclusions.
            calibration_cache_path=str(tmp / f"calib-{method}-{_names_digest(op_types_to_quantize)}.cache"),
            extra_options={
                **extra,
                # A tensor constant over the calibration set would get a zero scale; give it a minimal range.
                "MinimumRealRange": 1e-4,
                # Contrib ops (fused LayerNorm, Gelu) defeat ONNX shape inference; their outputs are float.
                "DefaultTensorType": onnx.TensorProto.FLOAT,
            },
        )


def _rewrite_text(rec: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in rec.items() if not isinstance(v, (list, dict)))


def _names_digest(names: list[str] | None) -> str:
    """A short file-name-safe stand-in for a list of op types (None: every op type)."""
    return hashlib.sha256(",".join(names or ["all"]).encode()).hexdigest()[:12]
