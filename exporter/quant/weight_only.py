"""Weight-only block-wise INT4 with onnxruntime's MatMulNBitsQuantizer.

"rtn" is onnxruntime's DefaultWeightOnlyQuantConfig (round to nearest with per-block min/max
scales; its RTNWeightOnlyQuantConfig needs Intel Neural Compressor, not a dependency here).
Activations stay float (no calibration except for GPTQ); every MatMul with a constant weight
becomes MatMulNBits, and with `embeddings` the Gather tables become GatherBlockQuantized — the
word embedding holds half of a small BERT's weights, so without it INT4 barely shrinks MiniLM.
QDQ targets get standard int4 DequantizeLinear -> MatMul instead (opset 21); onnxruntime cannot
express a quantized Gather in QDQ, so there the embeddings stay float and the result says so.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import QuantFormat
from onnxruntime.quantization.matmul_nbits_quantizer import (
    DefaultWeightOnlyQuantConfig,
    GPTQWeightOnlyQuantConfig,
    HQQWeightOnlyQuantConfig,
    MatMulNBitsQuantizer,
)

from exporter import log
from exporter.errors import UsageError
from exporter.onnx_io import save_model
from exporter.quant.calibration import FeedReader
from exporter.recipe import Int4Settings


@dataclass(frozen=True)
class Int4Result:
    path: Path
    settings: dict
    quantized: dict[str, int] = field(default_factory=dict)
    kept_float: list[str] = field(default_factory=list)


def quantize_int4(
    fp32_path: Path, out_path: Path, settings: Int4Settings, fmt: str, feeds: list[dict[str, np.ndarray]]
) -> Int4Result:
    model = onnx.load(str(fp32_path))
    op_types = ("MatMul", "Gather") if settings.embeddings and fmt == "qoperator" else ("MatMul",)
    quant_format = QuantFormat.QDQ if fmt == "qdq" else QuantFormat.QOperator
    if fmt == "qdq" and settings.algorithm != "rtn":
        raise UsageError(
            f"onnxruntime writes {settings.algorithm.upper()} INT4 only as MatMulNBits, not as QDQ",
            path="recipe",
            field="quantize.int4.algorithm",
            fix="use algorithm: rtn for this target (QDQ int4 weights)",
        )
    if fmt == "qdq":
        config = DefaultWeightOnlyQuantConfig(
            block_size=settings.block_size,
            is_symmetric=True,  # int4 DequantizeLinear for TensorRT: symmetric, no zero point
            accuracy_level=None,
            quant_format=quant_format,
            op_types_to_quantize=op_types,
        )
    elif settings.algorithm == "hqq":
        config = HQQWeightOnlyQuantConfig(block_size=settings.block_size, bits=4, op_types_to_quantize=op_types)
    elif settings.algorithm == "gptq":
        config = GPTQWeightOnlyQuantConfig(
            calibration_data_reader=FeedReader(feeds), block_size=settings.block_size, op_types_to_quantize=op_types
        )
    else:
        config = DefaultWeightOnlyQuantConfig(
            block_size=settings.block_size,
            is_symmetric=settings.symmetric,
            accuracy_level=settings.accuracy_level or None,
            quant_format=quant_format,
            op_types_to_quantize=op_types,
        )
    passes = [(config, op_types)]
    if settings.algorithm != "rtn" and "Gather" in op_types:
        # onnxruntime's HQQ and GPTQ handle MatMul only; the embedding tables get RTN in a second pass.
        gather = DefaultWeightOnlyQuantConfig(
            block_size=settings.block_size, is_symmetric=settings.symmetric, op_types_to_quantize=("Gather",)
        )
        passes = [(config, ("MatMul",)), (gather, ("Gather",))]
        config.op_types_to_quantize = {"MatMul"}
    out = model
    with log.quiet_libraries():
        for algo, types in passes:
            q = MatMulNBitsQuantizer(
                out,
                block_size=settings.block_size,
                is_symmetric=settings.symmetric if fmt == "qoperator" else True,
                accuracy_level=settings.accuracy_level or None,
                quant_format=quant_format,
                op_types_to_quantize=types,
                algo_config=algo,
            )
            q.process()
            out = q.model.model
    save_model(out, out_path)
    counts: dict[str, int] = {}
    for n in out.graph.node:
        if n.op_type in ("MatMulNBits", "GatherBlockQuantized", "DequantizeLinear"):
            counts[n.op_type] = counts.get(n.op_type, 0) + 1
    inits = {i.name for i in out.graph.initializer}
    kept = sorted(
        n.name for n in out.graph.node if n.op_type in ("MatMul", "Gather", "Gemm") and any(i in inits for i in n.input)
    )
    record = settings.model_dump() | {"format": fmt}
    if fmt == "qdq" and settings.embeddings:
        record["note"] = "embedding tables stay float: onnxruntime has no QDQ form of a quantized Gather"
    return Int4Result(out_path, record, counts, kept)
