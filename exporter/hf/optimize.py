"""Per-target transformer graph: fixed shapes where the runtime needs them, and onnxruntime.transformers
fusions (Attention, SkipLayerNorm, Gelu) where the runtime executes onnxruntime's contrib ops.

NPU runtimes (QNN, NNAPI, CoreML, TensorRT) do not run com.microsoft contrib ops, so their
graph stays unfused rather than falling back to the CPU op by op.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path

import onnx

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


def fuse(path: Path, model_type: str, attention: bool = True) -> tuple[onnx.ModelProto, dict[str, int]]:
    """attention=False keeps Q/K/V as MatMuls for static INT8: onnxruntime has no QDQ form of the
    fused Attention op, so a fused graph would keep its projections (a quarter of the work) in float."""
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    kind = _OPTIMIZER_TYPE.get(model_type, model_type)
    options = FusionOptions(kind)
    options.enable_attention = attention

    quiet = logging.getLogger("onnxruntime.transformers")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        opt = optimize_model(
            str(path), model_type=kind, num_heads=0, hidden_size=0, use_gpu=False, optimization_options=options
        )
    finally:
        quiet.setLevel(level)
    stats = {k: v for k, v in sorted(opt.get_fused_operator_statistics().items()) if v}
    return opt.model, stats


def export_for_target(
    canonical: Path,
    folder: Path,
    specs: list[InputSpec],
    static: bool,
    allow_fusion: bool,
    path: Path,
    attention: bool = True,
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
            model, stats = fuse(staged, model_type, attention)
        info["fusion"] = "onnxruntime.transformers" + ("" if attention else " (attention left as MatMuls for INT8)")
        info["fused_ops"] = stats
    save_model(model, path)
    return info
