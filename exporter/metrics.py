"""Quality metrics, a registry of small functions: name -> (fn, higher_is_better).

Each gets the model's first output, the labels (or None) and the FP32 reference output, so
the same call serves labelled accuracy and fidelity against the unmodified model.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from exporter.callables import load_callable
from exporter.errors import UsageError
from exporter.recipe import CallableMetric, TaskMetric

MetricFn = Callable[[np.ndarray, "np.ndarray | None", np.ndarray], float]


def top1(output: np.ndarray, labels: np.ndarray | None, reference: np.ndarray) -> float:
    """Top-1 accuracy as a fraction; against the reference's argmax when there are no labels."""
    truth = labels if labels is not None else reference.argmax(-1)
    return float((output.reshape(len(output), -1).argmax(-1) == truth.reshape(-1)).mean())


def cosine(output: np.ndarray, labels: np.ndarray | None, reference: np.ndarray) -> float:
    """Mean cosine similarity of each sample's output with the FP32 reference."""
    a = output.reshape(len(output), -1).astype(np.float64)
    b = reference.reshape(len(reference), -1).astype(np.float64)
    denom = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return float(np.mean(np.sum(a * b, axis=1) / np.maximum(denom, 1e-12)))


def mse(output: np.ndarray, labels: np.ndarray | None, reference: np.ndarray) -> float:
    return float(np.mean((output.astype(np.float64) - reference.astype(np.float64)) ** 2))


def retrieval_agreement(output: np.ndarray, reference: np.ndarray, k: int = 5) -> dict[str, float]:
    """Nearest-neighbour search over the evaluation set itself: does the variant find what FP32 finds?

    Each sample queries all others; top-1 agreement is the share of queries whose nearest
    neighbour is the same, top-k overlap the mean share of the k nearest in common.
    """

    def neighbours(x: np.ndarray) -> np.ndarray:
        x = x.reshape(len(x), -1).astype(np.float64)
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        sim = x @ x.T
        np.fill_diagonal(sim, -np.inf)
        return np.argsort(-sim, axis=1, kind="stable")[:, :k]

    got, want = neighbours(output), neighbours(reference)
    top1_agree = float(np.mean(got[:, 0] == want[:, 0]))
    overlap = float(np.mean([len(set(a) & set(b)) / k for a, b in zip(got, want)]))
    return {"retrieval_top1_agreement": top1_agree, f"retrieval_top{k}_overlap": overlap}


def extra_metrics(name: str, output: np.ndarray, labels: np.ndarray | None, reference: np.ndarray) -> dict[str, float]:
    """Further named values users read next to the primary metric."""
    out: dict[str, float] = {}
    if name == "cosine":
        a = output.reshape(len(output), -1).astype(np.float64)
        b = reference.reshape(len(reference), -1).astype(np.float64)
        per = np.sum(a * b, axis=1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)
        out["cosine_mean"], out["cosine_min"] = float(per.mean()), float(per.min())
        if len(output) > 5:
            out.update(retrieval_agreement(output, reference))
    if name == "top1" and labels is not None:
        out["agreement_with_fp32"] = top1(output, None, reference)
    return {k: round(v, 6) for k, v in out.items()}


METRICS: dict[str, tuple[MetricFn, bool]] = {"top1": (top1, True), "cosine": (cosine, True), "mse": (mse, False)}


ExtrasFn = Callable[[np.ndarray, "np.ndarray | None", np.ndarray], dict[str, float]]


def resolve_metric(
    spec: str | CallableMetric | TaskMetric, recipe_path: Path, model_path: Path | None = None
) -> tuple[str, MetricFn, bool, ExtrasFn | None]:
    """(name, fn, higher_is_better, extras): extras gives a task metric's further values (CER, box error...)."""
    if isinstance(spec, str):
        fn, higher = METRICS[spec]
        return spec, fn, higher, None
    if isinstance(spec, TaskMetric):
        from exporter.task_metrics import TASKS, task_metric_fn

        options = dict(spec.options)
        charset = _charset(spec, recipe_path, model_path)
        if charset is not None:
            options["charset"] = charset
        try:
            primary, extras = task_metric_fn(spec.task, options)
        except UsageError as exc:
            raise UsageError(str(exc), path=recipe_path) from None  # the task's own field and fix, plus the file
        return spec.task, primary, TASKS[spec.task].higher_is_better, extras
    fn = load_callable(spec.callable, recipe_path.parent, recipe_path, "metric.callable")
    return spec.name, fn, spec.higher_is_better, None


def _charset(spec: TaskMetric, recipe_path: Path, model_path: Path | None) -> list[str] | None:
    """The recogniser's characters, from a file beside the recipe or from the model's own metadata."""
    if spec.charset_file is not None:
        path = (recipe_path.parent / spec.charset_file).resolve()
        if not path.is_file():
            raise UsageError(
                "charset file not found", path=path, field="metric.charset_file", fix="one character per line"
            )
        return path.read_text(encoding="utf-8").splitlines()
    if spec.charset_metadata is not None:
        import onnx

        found = None
        if model_path is not None:
            meta = onnx.load(str(model_path), load_external_data=False).metadata_props
            found = next((p.value for p in meta if p.key == spec.charset_metadata), None)
        if found is None:
            raise UsageError(
                f"the model has no metadata '{spec.charset_metadata}'",
                path=recipe_path,
                field="metric.charset_metadata",
                fix="name the key that holds the characters, or give charset_file",
            )
        return found.splitlines()
    return None


def needs_labels(name: str, labels: np.ndarray | None, where: Path) -> None:
    if name == "top1" and labels is None:
        raise UsageError(
            "metric top1 needs labels in the evaluation data",
            path=where,
            field="data.evaluation",
            fix="add a 'labels' array, or use metric: cosine",
        )


def accuracy_drop(baseline: float, value: float, higher_is_better: bool) -> float:
    """Degradation in the metric's own units: positive means worse than the baseline."""
    return baseline - value if higher_is_better else value - baseline


def output_fidelity(
    outputs: list[np.ndarray], reference: list[np.ndarray], names: list[str], concat_parts: list[dict] | None = None
) -> list[dict]:
    """SQNR (dB) of every output against FP32, and of each part of an output that concatenates unlike
    quantities (exporter.quant.concat_parts): a whole-output figure hides the part a scale destroyed."""
    from exporter.task_metrics import output_parts_sqnr

    rows = []
    for name, out, ref in zip(names, outputs, reference):
        if np.shape(out) != np.shape(ref) or not np.issubdtype(np.asarray(out).dtype, np.floating):
            continue
        parts, labels = [], []
        for rec in concat_parts or []:
            axis = rec.get("output_axis")
            if rec["output"] != name or axis is None:
                continue
            for part in rec["inputs"]:
                if part["start"] is not None and part["stop"] is not None:
                    parts.append((axis, part["start"], part["stop"]))
                    labels.append(part["tensor"])
        got = output_parts_sqnr(out, ref, parts)
        whole = _db(got[0]["sqnr_db"])
        rows.append(
            {
                "output": name,
                "sqnr_db": whole,
                "parts": [
                    {"tensor": t, "slice": r["part"], "sqnr_db": _db(r["sqnr_db"])} for t, r in zip(labels, got[1:])
                ],
            }
        )
    return rows


def _db(value: float) -> float | str:
    """Rounded dB; 'inf' as a string when identical (JSON has no infinity)."""
    return round(value, 2) if np.isfinite(value) else ("inf" if value > 0 else "-inf")
