"""Accuracy-aware static quantization: the fewest tensors kept in float (or raised to 16-bit)
until the accuracy budget holds.

Order of levers, cheapest first: the calibration methods the recipe allows (one calibration each),
then tensors ranked by how badly their INT8 scale represents their FP32 values (SQNR, one FP32
pass), kept out of INT8 in doubling steps and bisected back to the fewest that meet the budget.
On integer-only NPUs (fallback uint16: QNN's HTP) nothing is ever kept float: the tensors are
raised to 16-bit, and when the most the recipe allows still misses, every activation goes to
16-bit with 8-bit weights (A16W8) — how transformers keep their accuracy on the HTP.
Every evaluation is on the recipe's evaluation data and the target's own evaluation mode, and
every step is returned for the report. When even the last step misses the budget the result says
so; the build's accuracy verdict then fails (exit 1). Nothing is dropped silently.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from exporter import log
from exporter.quant.qdq_graph import activation_pairs, keep_float, sqnr_ranking

_INTEGER_PRODUCERS = {"MatMul", "Gemm", "Conv", "ConvTranspose"}
_COST_DB = 6.0  # an input kept in float must be 6 dB (4x noise power) worse to go before an output
ALL_ACTIVATIONS = "*"  # an override key: every activation at that type (A16W8 with "uint16")
# (method, {tensor: "uint16"}[, op types to quantize]) -> path of a freshly quantized model
Requantize = Callable[..., Path]
# Where the target runs float, the last lever: quantize only the op types whose integer kernels carry
# the work. Measured on Silero VAD (an LSTM carrying state across chunks, an STFT magnitude): every
# per-tensor step left frame F1 at 0.22 (FP32 0.97); Conv only gave 0.971.
OP_TYPE_RUNGS: list[tuple[str, list[str]]] = [
    ("matrix ops and convolutions", ["Conv", "Gemm", "MatMul"]),
    ("matrix ops only", ["Gemm", "MatMul"]),
]
Evaluate = Callable[[Path], float]  # path -> accuracy drop (>= 0 is worse)


@dataclass
class SearchResult:
    path: Path
    method: str
    drop: float
    met: bool
    kept: list[dict] = field(default_factory=list)  # tensor, sqnr_db, kept_as
    steps: list[dict] = field(default_factory=list)
    all_quantized: Path | None = None  # the first model tried with the chosen method, for the speed cost
    op_types: list[str] | None = None  # set when only these op types could be quantized within the budget


def search(
    requantize: Requantize,
    evaluate: Evaluate,
    fp32: Path,
    feeds: list[dict[str, np.ndarray]],
    budget: float,
    methods: list[str],
    fallback: str,
    max_kept: int,
    work: Path,
    label: str,
) -> SearchResult:
    steps: list[dict] = []
    tried: dict[str, tuple[Path, float]] = {}
    for method in methods:
        path = requantize(method, {})
        drop = evaluate(path)
        tried[method] = (path, drop)
        steps.append(
            {
                "step": f"calibrate with {method}",
                "kept": 0,
                "drop": round(drop, 6),
                "ok": drop <= budget,
                "file": path.name,
            }
        )
        log.info(f"[{label}] INT8 with {method} calibration: drop {drop:.4f} (budget {budget:g})")
        if drop <= budget:
            return SearchResult(path, method, drop, True, [], steps, path)
    method = min(tried, key=lambda m: tried[m][1])
    base_path, base_drop = tried[method]
    if max_kept <= 0:
        if fallback == "uint16":
            return _all_activations_16bit(requantize, evaluate, method, budget, steps, label, (base_path, base_drop, 0))
        return SearchResult(base_path, method, base_drop, False, [], steps, base_path)

    base = onnx.load(str(base_path))
    pairs = activation_pairs(base)
    ranked = sqnr_ranking(onnx.load(str(fp32)), pairs, feeds)
    # Cheap before dear: a matrix product's *output* kept in float leaves the product itself in
    # integers (float-output kernel); its *input* kept in float makes the whole product float. An
    # input therefore ranks as if its SQNR were _COST_DB better. Measured on MiniLM: SQNR order
    # alone kept 5 GELU outputs (1.12x); outputs strictly first saturated at cosine 0.988.
    cheap = {p.tensor for p in pairs if p.producer in _INTEGER_PRODUCERS}
    candidates = sorted((n for n, _ in ranked), key=lambda n: dict(ranked)[n] + (0.0 if n in cheap else _COST_DB))
    candidates = candidates[:max_kept]
    sqnr = dict(ranked)
    cache: dict[int, tuple[Path, float]] = {0: (base_path, base_drop)}

    def attempt(k: int) -> float:
        if k in cache:
            return cache[k][1]
        chosen = candidates[:k]
        if fallback == "uint16":
            path = requantize(method, dict.fromkeys(chosen, "uint16"))
        else:
            path = work / f"{base_path.stem}-keep{k}.onnx"
            onnx.save(keep_float(base, set(chosen)), str(path))
        drop = evaluate(path)
        cache[k] = (path, drop)
        verb = "raised to 16-bit" if fallback == "uint16" else "kept in float"
        steps.append(
            {
                "step": f"worst {k} tensor(s) {verb}",
                "kept": k,
                "drop": round(drop, 6),
                "ok": drop <= budget,
                "file": path.name,
            }
        )
        log.info(f"[{label}] {k} tensor(s) {verb}: drop {drop:.4f}")
        return drop

    k, met_at = 1, None
    while True:
        k = min(k, len(candidates))
        if attempt(k) <= budget:
            met_at = k
            break
        if k == len(candidates):
            break
        k *= 2
    if met_at is not None:  # bisect down to the fewest tensors that still meet the budget
        lo = met_at // 2
        hi = met_at
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if attempt(mid) <= budget:
                hi = mid
            else:
                lo = mid
        chosen_k = hi
    else:
        chosen_k = min(cache, key=lambda n: (cache[n][1], n))
    path, drop = cache[chosen_k]
    kept_as = "uint16" if fallback == "uint16" else "float"
    if fallback == "uint16" and drop > budget:
        return _all_activations_16bit(requantize, evaluate, method, budget, steps, label, (path, drop, chosen_k))
    if drop > budget:
        rung = _op_type_rungs(requantize, evaluate, method, budget, steps, label)
        if rung is not None:
            return rung
    kept = [
        {"tensor": t, "sqnr_db": round(sqnr[t], 2), "kept_as": kept_as, "cost": "low" if t in cheap else "high"}
        for t in candidates[:chosen_k]
    ]
    return SearchResult(path, method, drop, drop <= budget, kept, steps, base_path)


def _all_activations_16bit(
    requantize: Requantize,
    evaluate: Evaluate,
    method: str,
    budget: float,
    steps: list[dict],
    label: str,
    best: tuple[Path, float, int],
) -> SearchResult:
    """The last lever of an integer-only NPU: every activation 16-bit, weights 8-bit (A16W8).

    Kept only when it does better than the best per-tensor step; the record says which won."""
    path = requantize(method, {ALL_ACTIVATIONS: "uint16"})
    drop = evaluate(path)
    steps.append(
        {
            "step": "every activation 16-bit, weights 8-bit (A16W8)",
            "kept": "all",
            "drop": round(drop, 6),
            "ok": drop <= budget,
            "file": path.name,
        }
    )
    log.info(f"[{label}] A16W8 (every activation 16-bit): drop {drop:.4f} (budget {budget:g})")
    best_path, best_drop, _k = best
    if drop < best_drop or drop <= budget:
        kept = [{"tensor": ALL_ACTIVATIONS, "sqnr_db": None, "kept_as": "uint16", "cost": "all activations"}]
        return SearchResult(path, method, drop, drop <= budget, kept, steps, path)
    return SearchResult(best_path, method, best_drop, False, [], steps, best_path)


def _op_type_rungs(
    requantize: Requantize, evaluate: Evaluate, method: str, budget: float, steps: list[dict], label: str
) -> SearchResult | None:
    """Fewer op types quantized (the rest float), most coverage first; the first rung within the budget."""
    for rung, op_types in OP_TYPE_RUNGS:
        path = requantize(method, {}, op_types)
        drop = evaluate(path)
        steps.append(
            {"step": f"only {rung} quantized", "kept": "other op types", "drop": round(drop, 6),
             "ok": drop <= budget, "file": path.name}
        )  # fmt: skip
        log.info(f"[{label}] only {rung} quantized: drop {drop:.4f} (budget {budget:g})")
        if drop <= budget:
            return SearchResult(path, method, drop, True, [], steps, path, op_types)
    return None
