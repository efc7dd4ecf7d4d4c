"""Quantize stage: static INT8 with onnxruntime.quantization, using the target's preset.

The preset comes from the target declaration (why each choice is documented there); the recipe
picks the calibration method and sample count. What stays in float is counted and reported,
never left silent.
"""

from __future__ import annotations

import logging
import re
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

from exporter.data import Dataset
from exporter.errors import UsageError
from exporter.onnx_io import save_model
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
_QDQ_OPS = {"QuantizeLinear", "DequantizeLinear"}
# Ops that only move or reshape data: reported separately, they cost nothing in float.
_LAYOUT_OPS = {
    "Reshape",
    "Flatten",
    "Transpose",
    "Squeeze",
    "Unsqueeze",
    "Shape",
    "Gather",
    "Concat",
    "Identity",
    "Constant",
    "Slice",
    "Split",
    "Cast",
}


class _Reader(CalibrationDataReader):
    """Feeds calibration samples one at a time in the model's own batch size."""

    def __init__(self, inputs: dict[str, np.ndarray], batch: int):
        n = len(next(iter(inputs.values())))
        self._feeds = [{k: v[i : i + batch] for k, v in inputs.items()} for i in range(0, n - batch + 1, batch)]
        self._it = iter(self._feeds)

    def get_next(self):
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = iter(self._feeds)


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


def float_compute_nodes(model: onnx.ModelProto) -> tuple[dict[str, int], dict[str, int]]:
    """Split compute nodes into quantized (fed by DequantizeLinear) and kept in float."""
    producers = {out: node.op_type for node in model.graph.node for out in node.output}
    quantized: Counter[str] = Counter()
    floating: Counter[str] = Counter()
    for node in model.graph.node:
        if node.op_type in _QDQ_OPS or node.op_type in _LAYOUT_OPS:
            continue
        if node.op_type.startswith("QLinear") or node.op_type in ("ConvInteger", "MatMulInteger"):
            quantized[node.op_type] += 1
        elif node.input and producers.get(node.input[0]) == "DequantizeLinear":
            quantized[node.op_type] += 1
        else:
            floating[node.op_type] += 1
    return dict(sorted(quantized.items())), dict(sorted(floating.items()))


def quantize_int8(
    fp32_path: Path,
    out_path: Path,
    calibration: Dataset,
    settings: QuantizeSection,
    preset: QuantPreset,
    batch: int,
    seed: int,
) -> QuantizeResult:
    """Static INT8: pre-process (shape inference, no symbolic pass), calibrate, quantize."""
    if preset.format != "qdq" and preset.activation_type.endswith("16"):
        raise UsageError(
            "16-bit activations need the QDQ format", path="targets", field="quantization.format", fix="use format: qdq"
        )
    sample = calibration.take(settings.calibration_samples, seed)
    with tempfile.TemporaryDirectory(prefix="edgex-quant-") as tmp:
        prepped = Path(tmp) / "prepped.onnx"
        quant_pre_process(str(fp32_path), str(prepped), skip_symbolic_shape=True)
        raw = Path(tmp) / "int8.onnx"
        excluded: dict[str, str] = {}
        while True:
            try:
                _quantize_once(prepped, raw, Path(tmp), sample, settings, preset, batch, sorted(excluded))
                break
            except ValueError as exc:
                node = _bias_failure_node(prepped, str(exc))
                if node is None or node in excluded or len(excluded) >= 16:
                    raise
                # onnxruntime cannot quantize this node's bias because its input stays float (e.g. a
                # Gemm after Tanh); keep that node in float, say so, and quantize the rest.
                excluded[node] = " ".join(str(exc).split())[:200]
        model = onnx.load(str(raw))
        quantized, floating = float_compute_nodes(model)
        save_model(model, out_path)
    return QuantizeResult(
        path=out_path,
        calibration_samples=len(sample),
        calibration_digest=sample.digest,
        method=settings.calibration_method,
        preset=preset.model_dump(),
        quantized_nodes=quantized,
        float_nodes=floating,
        excluded_nodes=excluded,
    )


_BIAS_FAILURE = re.compile(r"when quantizing bias '([^']+)'")


def _bias_failure_node(model_path: Path, message: str) -> str | None:
    """The node whose bias onnxruntime failed to quantize, or None for any other failure."""
    found = _BIAS_FAILURE.search(message)
    if not found:
        return None
    model = onnx.load(str(model_path), load_external_data=False)
    return next((n.name for n in model.graph.node if found.group(1) in n.input and n.name), None)


def _quantize_once(
    prepped: Path,
    raw: Path,
    tmp: Path,
    sample: Dataset,
    settings: QuantizeSection,
    preset: QuantPreset,
    batch: int,
    exclude: list[str],
) -> None:
    root = logging.getLogger()
    level = root.level
    # onnxruntime.quantization logs every tensor it leaves in float on the root logger; the
    # same facts are counted afterwards and reported per variant as `kept_in_float`.
    root.setLevel(logging.ERROR)
    try:
        quantize_static(
            str(prepped),
            str(raw),
            _Reader(sample.inputs, batch),
            quant_format=QuantFormat.QDQ if preset.format == "qdq" else QuantFormat.QOperator,
            op_types_to_quantize=preset.op_types,
            per_channel=preset.per_channel,
            activation_type=_QUANT_TYPES[preset.activation_type],
            weight_type=_QUANT_TYPES[preset.weight_type],
            nodes_to_exclude=exclude or None,
            calibrate_method=_METHODS[settings.calibration_method],
            calibration_cache_path=str(tmp / "calib.cache"),  # reused when a retry excludes a node
            extra_options={
                "ActivationSymmetric": preset.activation_symmetric,
                "WeightSymmetric": preset.weight_symmetric,
                # A tensor constant over the calibration set would get a zero scale; give it a minimal range.
                "MinimumRealRange": 1e-4,
            },
        )
    finally:
        root.setLevel(level)
