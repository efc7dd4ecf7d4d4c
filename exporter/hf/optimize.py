"""Per-target transformer graph: fixed shapes where the runtime needs them, and onnxruntime.transformers
fusions (Attention, SkipLayerNorm, Gelu) where the runtime executes onnxruntime's contrib ops.

NPU runtimes (QNN, NNAPI, CoreML, TensorRT) do not run com.microsoft contrib ops, so their
graph stays unfused rather than falling back to the CPU op by op.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import onnx

from exporter import log
from exporter.onnx_io import save_model
from exporter.recipe import InputSpec

# Model types onnxruntime.transformers.optimizer knows how to fuse (its MODEL_TYPES).
FUSABLE = {"bert", "roberta", "distilbert", "xlm-roberta", "electra", "mpnet", "albert", "deberta", "camembert"}
_OPTIMIZER_TYPE = {
    "roberta": "bert",
    "xlm-roberta": "bert",
    "electra": "bert",
    "mpnet": "bert",
    "albert": "bert",
    "camembert": "bert",
    "distilbert": "bert",
    "deberta": "bert",
}


def fix_shapes(model: onnx.ModelProto, specs: list[InputSpec]) -> onnx.ModelProto:
    from onnxruntime.tools.onnx_model_utils import make_input_shape_fixed

    for spec in specs:
        make_input_shape_fixed(model.graph, spec.name, list(spec.shape))
    return onnx.shape_inference.infer_shapes(model)


def fuse(path: Path, model_type: str, for_int8: bool = False) -> tuple[onnx.ModelProto, dict[str, int]]:
    """for_int8 leaves Attention and Gelu unfused, for static INT8. onnxruntime has no QDQ form of
    the fused Attention op (its Q/K/V projections, a quarter of the work, would stay float), and
    ONNX shape inference cannot type a contrib BiasGelu output, so the quantizer would leave the
    second feed-forward MatMul's input float and onnxruntime would run it as a slow MatMulNBits
    (measured on MiniLM: 24 ms of 56). onnxruntime re-fuses Gelu at load time anyway."""
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    kind = _OPTIMIZER_TYPE.get(model_type, model_type)
    options = FusionOptions(kind)
    # SkipLayerNormalization's CPU kernel measured 4.5-6x slower than the Add + LayerNormalization it
    # replaces at [1, 128, 384] and [1, 128, 768] (benchmarks/skip_layernorm.py); see also
    # quant/shape_annotations.py, which keeps onnxruntime from fusing it at load time
    options.enable_skip_layer_norm = False
    options.enable_bias_skip_layer_norm = False
    if for_int8:
        options.enable_attention = False
        options.enable_gelu = False
        options.enable_bias_gelu = False

    with log.quiet_libraries():  # it logs every fusion; the counts are returned and reported
        opt = optimize_model(
            str(path), model_type=kind, num_heads=0, hidden_size=0, use_gpu=False, optimization_options=options
        )
    stats = {k: v for k, v in sorted(opt.get_fused_operator_statistics().items()) if v}
    return opt.model, stats


def export_for_target(
    canonical: Path,
    folder: Path,
    specs: list[InputSpec],
    static: bool,
    allow_fusion: bool,
    path: Path,
    for_int8: bool = False,
) -> dict:
    """Write this target's FP32 graph; returns what was done (shapes, fusions or why none)."""
    model = onnx.load(str(canonical))
    if static:
        model = fix_shapes(model, specs)
    model_type = json.loads((folder / "config.json").read_text(encoding="utf-8")).get("model_type", "")
    info: dict = {"static_shapes": static}
    if not allow_fusion:
        info["fusion"] = "skipped: the target's runtime does not execute onnxruntime contrib ops"
    elif model_type not in FUSABLE:
        info["fusion"] = f"skipped: onnxruntime.transformers has no fusions for model type '{model_type}'"
    else:
        with tempfile.TemporaryDirectory(prefix="edgex-fuse-") as tmp:
            staged = Path(tmp) / "unfused.onnx"
            onnx.save(model, str(staged))
            model, stats = fuse(staged, model_type, for_int8)
        info["fusion"] = "onnxruntime.transformers" + (
            " (Attention and Gelu left unfused for INT8)" if for_int8 else ""
        )
        info["fused_ops"] = stats
    save_model(model, path)
    return info
