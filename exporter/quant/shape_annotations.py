"""Quantized transformers for onnxruntime's CPU runtimes ship without the intermediate shape
annotations (graph.value_info) that the quantizer's pre-processing writes.

Why: with them, onnxruntime 1.32's CPU provider can prove the shapes around each residual Add that
feeds a LayerNormalization behind a quantized MatMul, and fuses the pair into the contrib op
SkipLayerNormalization, whose CPU kernel measured 4.5-6x slower than the two ops it replaces (327 vs
52 us at [1, 128, 384], one thread, in one run; `benchmarks/skip_layernorm.py`). Without the annotations the
fusion cannot see those shapes where only the annotations gave them (a graph without fused
Attention, as MiniLM's plain export and every static-INT8 input; behind a fused Attention op
onnxruntime infers them itself and still fuses), and every other load-time fusion still happens (the same counts
of DynamicQuantizeMatMul, MatMulIntegerToFloat and QLinearMatMul); onnxruntime infers what it
needs at load. Measured on a Fisher-pruned MiniLM at one thread: dynamic INT8 12.2 -> 10.2 ms,
static QDQ INT8 12.8 -> 10.6 ms. The graph's inputs and outputs keep their shapes; only the
annotations of intermediate values go, which carry no meaning of their own.
"""

from __future__ import annotations

from pathlib import Path

import onnx

from exporter.onnx_io import save_model


def drop_shape_annotations(path: Path) -> dict:
    """Remove graph.value_info from the file in place; returns what the manifest records."""
    model = onnx.load(str(path))
    count = len(model.graph.value_info)
    if count:
        del model.graph.value_info[:]
        save_model(model, path)
    return {
        "dropped": count,
        "why": "keeps onnxruntime from fusing Add+LayerNormalization into SkipLayerNormalization, "
        "measured 4.5-6x slower on CPU (benchmarks/skip_layernorm.py)",
    }
