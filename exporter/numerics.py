"""Numerical guards on weights: NaN/Inf, zero quantization scales, all-zero output channels.

A NaN weight or a zero scale does not crash onnxruntime; it produces NaN or constant outputs
that a latency benchmark happily times. Source weights are checked when they are loaded (bad
input, exit 2) and every model a build produces is scanned before it is measured (a gate,
exit 1). All-zero output channels are legal (a pruned or dead filter) but usually a sign of a
broken checkpoint or calibration, so they are counted in the manifest and said in the log.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from exporter.errors import GateFailure, UsageError

_WEIGHT_OPS = {"Conv": 1, "ConvTranspose": 1, "Gemm": 1, "MatMul": 1}
_SCALE_OPS = {"QuantizeLinear", "DequantizeLinear"}


def check_state(state: dict[str, Any], where: Path | str, field: str) -> None:
    """A PyTorch state_dict (or module parameters) must be finite."""
    import torch

    for name, value in state.items():
        if isinstance(value, torch.Tensor) and value.is_floating_point() and not torch.isfinite(value).all():
            bad = int((~torch.isfinite(value)).sum())
            raise UsageError(
                f"weight '{name}' contains {bad} NaN/Inf values",
                path=where,
                field=field,
                fix="use a checkpoint from a run that did not diverge",
            )


def _arrays(model: onnx.ModelProto):
    """Initializers held in the file (external data is not read here)."""
    for init in model.graph.initializer:
        if init.data_location == onnx.TensorProto.EXTERNAL:
            continue
        try:
            yield init.name, numpy_helper.to_array(init)
        except Exception:  # a type numpy cannot hold (e.g. float8): nothing to check numerically
            continue


def check_initializers(model: onnx.ModelProto, where: Path | str, field: str) -> None:
    """A given ONNX model's float weights must be finite (bad input, exit 2)."""
    for name, arr in _arrays(model):
        if arr.dtype.kind in "fc" and not np.isfinite(arr).all():
            raise UsageError(
                f"initializer '{name}' contains {int((~np.isfinite(arr)).sum())} NaN/Inf values",
                path=where,
                field=field,
                fix="re-export the model from weights that are finite",
            )


def scan_model(path: Path) -> dict:
    """What is numerically wrong with a model file: non-finite tensors, zero scales, dead channels."""
    model = onnx.load(str(path))
    arrays = dict(_arrays(model))
    non_finite = sorted(n for n, a in arrays.items() if a.dtype.kind in "fc" and not np.isfinite(a).all())
    zero_scales: set[str] = set()
    dead: dict[str, int] = {}
    for node in model.graph.node:
        if node.op_type in _SCALE_OPS and len(node.input) > 1 and node.input[1] in arrays:
            scale = arrays[node.input[1]]
            if scale.size and not (np.abs(scale) > 0).all():
                zero_scales.add(node.input[1])
        index = _WEIGHT_OPS.get(node.op_type)
        if index is not None and len(node.input) > index and node.input[index] in arrays:
            weight = arrays[node.input[index]]
            if weight.ndim >= 2:
                # Conv weights are [out, in, ...]; MatMul/Gemm weights [in, out] (transB aside).
                axis = 0 if node.op_type in ("Conv", "ConvTranspose") or _trans_b(node) else weight.ndim - 1
                flat = np.moveaxis(weight, axis, 0).reshape(weight.shape[axis], -1)
                zeros = int((~flat.any(axis=1)).sum())
                if zeros:
                    dead[node.input[index]] = zeros
    return {"non_finite": non_finite, "zero_scales": sorted(zero_scales), "all_zero_channels": dead}


def _trans_b(node: onnx.NodeProto) -> bool:
    return node.op_type == "Gemm" and any(a.name == "transB" and a.i for a in node.attribute)


def guard_produced(path: Path, variant: str) -> dict:
    """Scan a model this build produced; NaN/Inf weights or a zero scale fail the build (exit 1)."""
    found = scan_model(path)
    if found["non_finite"]:
        raise GateFailure(f"variant '{variant}': weights {found['non_finite'][:3]} contain NaN/Inf")
    if found["zero_scales"]:
        raise GateFailure(
            f"variant '{variant}': quantization scales {found['zero_scales'][:3]} are zero "
            "(a constant or empty calibration range); check the calibration data"
        )
    return found
