"""Device latency fitted on published per-device latencies, with a leave-one-model-out error band.

Why: a roofline divided by the build host's efficiency moves with the host's load and was never
checked against a device. Where a vendor publishes latencies of many models on one device (Qualcomm
AI Hub for Snapdragon NPUs), a kernel-level linear model in the spirit of nn-Meter (Zhang et al.,
MobiSys 2021) is fitted on them instead: latency = sum over operator classes of (seconds per unit
of work) x (work of that class) + a per-layer and a per-inference overhead, all non-negative. Its
error is measured by leaving each model out of the fit and predicting it, so the band reported with
every estimate is an out-of-sample figure, not a training residual.

Work is counted in elements, not bytes: the fit is per precision, so the element width is a constant
the coefficients absorb, and a float graph and its QDQ-quantized form give the same features.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import onnx
import yaml

from exporter.graph_stats import _node_macs, _shapes
from exporter.resources import shipped_dir

FEATURES = (
    "conv_macs",  # dense convolutions (group = 1)
    "dw_macs",  # grouped and depthwise convolutions
    "fc_macs",  # MatMul/Gemm against a weight
    "attn_macs",  # MatMul of two activations (attention scores and context)
    "dense_macs",  # conv_macs + fc_macs + attn_macs: the work of the matrix unit
    "conv_act_elems",  # activation elements read and written by convolutions and weight MatMuls
    "act_elems",  # activation elements read and written by every other op (elementwise, norms, softmax, pools, copies)
    "weight_elems",  # weight elements the compute layers read
    "layers",  # compute layers after the usual fusions (per-layer dispatch overhead)
    "const",  # 1 per inference (fixed per-call overhead)
)
_QDQ = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"}
_CONV = {"Conv", "ConvInteger", "QLinearConv", "ConvTranspose"}
_MATMUL = {"MatMul", "Gemm", "MatMulInteger", "QLinearMatMul", "QGemm", "Attention"}
_VIEWS = {"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Dropout"}  # no data movement on an NPU
_SHAPE_OPS = {"Shape", "Size", "Constant", "ConstantOfShape"}
_FUSED_AFTER_MAC = {"BatchNormalization", "Relu", "Clip", "LeakyRelu", "PRelu"}  # fused into the conv/matmul


def _declared_dynamic(model: onnx.ModelProto) -> list[str]:
    inits = {i.name for i in model.graph.initializer}
    out = []
    for inp in model.graph.input:
        if inp.name in inits:
            continue
        if any(d.dim_value <= 0 for d in inp.type.tensor_type.shape.dim):
            out.append(inp.name)
    return out


def _elems(shape: list[int | None] | None) -> int:
    if not shape or any(d is None for d in shape):
        return 0
    return int(np.prod(shape))


def graph_features(model: onnx.ModelProto, shapes: dict[str, list[int]] | None) -> dict[str, float]:
    """Work per operator class (see FEATURES) of a float or QDQ graph at the given input shapes.

    Q/DQ nodes are looked through: a DequantizeLinear of an initializer is a weight, an activation
    passing Q->DQ is the same activation. A dynamic input without a shape in `shapes` is an error,
    never counted as 1; a compute node whose sizes stay unknown is an error too (the fit would be wrong)."""
    missing = [n for n in _declared_dynamic(model) if not shapes or n not in shapes]
    if missing:
        raise ValueError(f"inputs {missing} have dynamic dimensions: pass their shapes")
    sizes = _shapes(model, shapes) if shapes else _shapes(model, None)
    graph = model.graph
    producers = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    static = {i.name for i in graph.initializer}  # constants, weights and shape arithmetic
    for n in graph.node:
        ins = [i for i in n.input if i]
        if n.op_type in _SHAPE_OPS or (ins and all(i in static for i in ins)):
            static.update(n.output)

    def source(name: str) -> onnx.NodeProto | None:
        """The op producing an activation, looking through Q->DQ pairs."""
        prod = producers.get(name)
        while prod is not None and prod.op_type in _QDQ:
            prod = producers.get(prod.input[0])
        return prod

    def single_user(name: str) -> bool:
        users = consumers.get(name, [])
        while len(users) == 1 and users[0].op_type in _QDQ:
            users = consumers.get(users[0].output[0], [])
        return len(users) <= 1

    feats = dict.fromkeys(FEATURES, 0.0)
    feats["const"] = 1.0
    fused_into_mac: set[str] = set()
    for node in graph.node:
        op = node.op_type
        if op in _QDQ or not node.output or node.output[0] in static:
            continue
        acts_in = [i for i in node.input if i and i not in static]
        moved = sum(_elems(sizes.get(i)) for i in acts_in) + _elems(sizes.get(node.output[0]))
        if op in _CONV or op in _MATMUL:
            macs = _node_macs(node, sizes, producers)
            if macs is None:
                raise ValueError(f"sizes of {op} node '{node.name}' are unknown at the given shapes")
            weights = [i for i in node.input[1:] if i in static]
            if op in _CONV:
                group = next((a.i for a in node.attribute if a.name == "group"), 1)
                feats["conv_macs" if group == 1 else "dw_macs"] += macs
            else:
                feats["fc_macs" if weights else "attn_macs"] += macs
            feats["weight_elems"] += sum(_elems(sizes.get(w) or _dq_source_shape(w, producers, sizes)) for w in weights)
            feats["conv_act_elems"] += moved
            feats["layers"] += 1
            fused_into_mac.add(node.output[0])
            continue
        if op in _VIEWS:
            continue
        src = source(acts_in[0]) if acts_in else None
        upstream = src.output[0] if src is not None else None
        if op in _FUSED_AFTER_MAC and upstream in fused_into_mac and single_user(upstream):
            fused_into_mac.add(node.output[0])  # conv -> BN -> ReLU chains fuse as a whole
            continue
        feats["act_elems"] += moved
        feats["layers"] += 1
    feats["dense_macs"] = feats["conv_macs"] + feats["fc_macs"] + feats["attn_macs"]
    return feats


def shares(features: dict[str, float]) -> dict[str, float]:
    """Fractions of the MACs in weight MatMuls and in attention: what says whether a graph is like
    the fitted ones (a fit on CNNs has not seen a transformer's MatMul-bound work)."""
    total = features["dense_macs"] + features["dw_macs"]
    if total <= 0:
        return {"matmul_share": 0.0, "attention_share": 0.0}
    return {
        "matmul_share": (features["fc_macs"] + features["attn_macs"]) / total,
        "attention_share": features["attn_macs"] / total,
    }


def in_domain(features: dict[str, float], fitted: dict) -> bool:
    """Whether the graph's MatMul and attention shares lie within the fitted models' (2 points slack)."""
    domain = fitted.get("domain") or {}
    own = shares(features)
    return all(own[k] <= domain.get(f"max_{k}", 0.0) + 0.02 for k in own)


def _dq_source_shape(name: str, producers: dict, sizes: dict) -> list[int] | None:
    prod = producers.get(name)
    return sizes.get(prod.input[0]) if prod is not None and prod.op_type == "DequantizeLinear" else None


# ---- fitting -----------------------------------------------------------------------------------------------
def _nnls(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Exact non-negative least squares for a handful of columns: the optimum is the unconstrained
    solution on its own support, so every support is tried (2^k - 1 small solves, k <= 9)."""
    k = a.shape[1]
    scale = np.linalg.norm(a, axis=0)
    scale[scale == 0] = 1.0
    a = a / scale
    best, best_res = np.zeros(k), float(np.sum(b**2))
    for r in range(1, k + 1):
        for support in itertools.combinations(range(k), r):
            sol, *_ = np.linalg.lstsq(a[:, support], b, rcond=None)
            if np.any(sol < 0):
                continue
            res = float(np.sum((a[:, support] @ sol - b) ** 2))
            if res < best_res - 1e-15:
                best_res, best = res, np.zeros(k)
                best[list(support)] = sol
    return best / scale


def fit(rows: list[dict], features: tuple[str, ...] | list[str]) -> dict:
    """Non-negative seconds per unit of each feature minimising the squared RELATIVE error
    (rows: {"features": {...}, "latency_ms": float}); relative so a 0.2 ms model counts as much as a 10 ms one."""
    a = np.array([[r["features"][f] for f in features] for r in rows], dtype=float)
    y = np.array([r["latency_ms"] * 1e-3 for r in rows])
    coef = _nnls(a / y[:, None], np.ones(len(rows)))
    return {"features": list(features), "seconds_per_unit": {f: float(c) for f, c in zip(features, coef, strict=True)}}


def predict_ms(features: dict[str, float], constants: dict) -> float:
    return 1e3 * sum(features[f] * c for f, c in constants["seconds_per_unit"].items())


def leave_one_out(rows: list[dict], features: tuple[str, ...] | list[str]) -> list[dict]:
    """Each row predicted by a fit on all the others: {"model", "latency_ms", "predicted_ms", "rel_error"}."""
    out = []
    for i, row in enumerate(rows):
        constants = fit(rows[:i] + rows[i + 1 :], features)
        pred = predict_ms(row["features"], constants)
        out.append(
            {"model": row.get("model", str(i)), "latency_ms": row["latency_ms"], "predicted_ms": pred,
             "rel_error": pred / row["latency_ms"] - 1.0}
        )  # fmt: skip
    return out


def error_summary(loo: list[dict], band_quantile: float = 0.9) -> dict:
    """LOO median |relative error|, max ratio max(pred/actual, actual/pred), and the band: the
    `band_quantile` quantile of |relative error| (an estimate is expected within x(1 +/- band))."""
    rel = np.array([abs(r["rel_error"]) for r in loo])
    ratios = [
        max(r["predicted_ms"] / r["latency_ms"], r["latency_ms"] / r["predicted_ms"])
        if r["predicted_ms"] > 0
        else np.inf
        for r in loo
    ]
    return {
        "loo_median_rel_error": float(np.median(rel)),
        "loo_max_ratio": float(max(ratios)),
        "band_rel": float(np.quantile(rel, band_quantile)),
        "n_models": len(loo),
    }


# ---- shipped fits ------------------------------------------------------------------------------------------
def fit_file(profile_id: str) -> Path:
    return shipped_dir("device_profiles") / "fits" / f"{profile_id}.yaml"


def load_fit(profile_id: str | None, precision: str) -> dict | None:
    """The fitted constants and LOO error band of a profile at an edgex compute precision, or None
    when no published figures were fitted for it. A fit file that exists but is malformed is an error."""
    if not profile_id:
        return None
    path = fit_file(profile_id)
    if not path.is_file():
        return None
    data = yaml.safe_load(path.read_text())
    entry = (data.get("precisions") or {}).get(precision)
    if entry is None:
        return None
    for key in ("features", "seconds_per_unit", "n_models", "loo_median_rel_error", "loo_max_ratio", "band_rel"):
        if key not in entry:
            raise ValueError(f"{path}: precision '{precision}' lacks '{key}'")
    return {**entry, "profile_id": profile_id, "device": data.get("device"), "sources": data.get("sources", []),
            "fit_file": str(path)}  # fmt: skip
