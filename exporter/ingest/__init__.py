"""Ingest: an ONNX file as another exporter wrote it -> a graph the later stages can work on.

Users bring files exported years ago by other frameworks (paddle2onnx, spox, old torch): opsets
below every target's range, weights stored as `Constant` nodes (onnxruntime's quantizer only
quantizes initializers, so dynamic INT8 died on them and `inspect` counted 0 parameters), and
control flow (If/Loop/Scan). A user holding only the file cannot re-export it, so edgex converts
what it can safely convert and checks the result against the original in onnxruntime: the
converted graph must give the original's outputs on seeded inputs (same tolerance as the export
gate), else exit 2 naming the model and the output that differed. A model ABOVE the target's range
is lowered with onnx's version converter where it has adapters, parity-checked the same way; where
it has none the user gets one line (exit 2). The record of what was done goes into the manifest
(`model.ingest`) and the report. `build`, `validate` and `quantize` run this same function.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import helper

from exporter.errors import UsageError
from exporter.ingest.graph import (
    control_flow_nodes,
    convert_opset,
    count_parameters,
    infer_shapes,
    inline_constant_ifs,
    model_opset,
    promote_constants,
    refuse_float_subgraphs,
)
from exporter.targets import Target

PARITY_ATOL = 1e-4  # the export gate's tolerance (exporter.export.check_parity)
PARITY_RTOL = 1e-3


@dataclass(frozen=True)
class IngestRecord:
    """What ingest did to the user's file; `changed` is False when the file is used as given."""

    opset_from: int
    opset_to: int
    constants_promoted: int = 0
    constants_bytes: int = 0
    parameters: int = 0
    typed_tensors: int = 0  # value_info entries shape inference added
    control_flow: list[str] = field(default_factory=list)  # node names of If/Loop/Scan, "op:name"
    bound_inputs: list[str] = field(default_factory=list)  # inputs the recipe fixes (`sr: 16000`), assumed
    inlined: list[str] = field(default_factory=list)  # If nodes replaced by the branch they always take
    parity: dict | None = None
    changed: bool = False

    def as_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        """One line for the log and the report."""
        if not self.changed:
            return f"used as given (opset {self.opset_from}, {self.parameters} parameters)"
        parts = []
        if self.opset_from != self.opset_to:
            parts.append(f"opset {self.opset_from} -> {self.opset_to} (onnx version converter)")
        if self.constants_promoted:
            parts.append(
                f"{self.constants_promoted} Constant nodes promoted to initializers ({self.constants_bytes} bytes)"
            )
        if self.bound_inputs:
            parts.append(f"{len(self.inlined)} If nodes inlined for {', '.join(self.bound_inputs)} as declared")
        elif self.inlined:
            parts.append(f"{len(self.inlined)} If nodes inlined for the declared static shapes")
        if self.parity:
            parts.append(
                f"parity vs the original: max abs diff {self.parity['max_abs_diff']:.3g}, "
                f"cosine {self.parity['cosine']:.6f}"
            )
        return "; ".join(parts)


def common_opset_range(targets: Sequence[Target], where: Path | str = "profiles") -> tuple[int, int]:
    """The opsets every target of the build accepts: one ingested graph serves all profiles."""
    lo = max(t.opset.min for t in targets)
    hi = min(t.opset.max for t in targets)
    if lo > hi:
        ranges = ", ".join(f"{t.id} [{t.opset.min}, {t.opset.max}]" for t in targets)
        raise UsageError(
            f"the targets of these profiles share no opset ({ranges})",
            path=where,
            field="profiles",
            fix="build profiles whose targets' opset ranges overlap from separate recipes",
        )
    return lo, hi


# --------------------------------------------------------------------------- parity


def seeded_feed(
    model: onnx.ModelProto, shapes: Mapping[str, Sequence[int]], seed: int, where: Path | str
) -> dict[str, np.ndarray]:
    """Inputs at the given shapes: floats standard normal from the seed, integers and bools zero
    (a random index or sample rate is not a meaningful input). A dynamic dimension with no shape
    given is exit 2: a guessed 1 made models fail or look fast."""
    inits = {i.name for i in model.graph.initializer}
    rng = np.random.default_rng(seed)
    feed = {}
    for value in model.graph.input:
        if value.name in inits:
            continue
        t = value.type.tensor_type
        dtype = helper.tensor_dtype_to_np_dtype(t.elem_type)
        if value.name in shapes:
            shape = [int(d) for d in shapes[value.name]]
        else:
            dims = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
            if any(d is None for d in dims):
                raise UsageError(
                    f"input '{value.name}' has dynamic dimensions {[d.dim_param or '?' for d in t.shape.dim]}"
                    " and no shape was given",
                    path=where,
                    field="inputs",
                    fix=f"declare the shape of '{value.name}' (recipe `inputs:` or --shape {value.name}=...)",
                )
            shape = dims
        if np.issubdtype(dtype, np.floating):
            feed[value.name] = rng.standard_normal(shape).astype(dtype)
        else:
            feed[value.name] = np.zeros(shape, dtype=dtype)
    return feed


def _session(model: onnx.ModelProto | Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    source = str(model) if isinstance(model, Path) else model.SerializeToString()
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def parity(
    original: onnx.ModelProto | Path,
    converted: onnx.ModelProto,
    feed: dict[str, np.ndarray],
    where: Path | str,
    field_name: str,
) -> dict:
    """The converted graph against the original in onnxruntime on the same inputs: every output
    within atol + rtol*|ref| (the export gate's tolerance), else exit 2 naming what differed."""
    label = Path(where).name if isinstance(where, Path) else str(where)
    try:
        want = _session(original).run(None, feed)
    except Exception as exc:
        detail = " ".join(str(exc).split())[:240]
        shapes = {k: list(v.shape) for k, v in feed.items()}
        raise UsageError(
            f"the model does not run at the shapes {shapes} ({detail})",
            path=where,
            field="inputs",
            fix="declare the shapes the model was exported for",
        ) from None
    try:
        own = {i.name for i in converted.graph.input}
        got = _session(converted).run(None, {k: v for k, v in feed.items() if k in own})
    except Exception as exc:
        from exporter.errors import InternalError

        raise InternalError(
            f"ingest: the converted graph of '{label}' does not load or run in onnxruntime "
            f"({' '.join(str(exc).split())[:240]})"
        ) from None
    worst, dot, norm_a, norm_b = 0.0, 0.0, 0.0, 0.0
    names = [o.name for o in converted.graph.output]
    for name, a, b in zip(names, want, got):
        a64, b64 = np.asarray(a, np.float64), np.asarray(b, np.float64)
        if a64.shape != b64.shape:
            raise UsageError(
                f"after conversion output '{name}' has shape {list(b64.shape)}, the original {list(a64.shape)}",
                path=where,
                field=field_name,
                fix="re-export the model at an opset in the target's range",
            )
        diff = np.abs(a64 - b64)
        worst = max(worst, float(diff.max()) if diff.size else 0.0)
        bad = diff > PARITY_ATOL + PARITY_RTOL * np.abs(a64)
        if bad.any():
            raise UsageError(
                f"after conversion {int(bad.sum())} of {bad.size} values of output '{name}' differ from the "
                f"original (max abs diff {float(diff.max()):.3g} > atol {PARITY_ATOL} + rtol {PARITY_RTOL})",
                path=where,
                field=field_name,
                fix="re-export the model at an opset in the target's range",
            )
        dot += float((a64 * b64).sum())
        norm_a += float((a64 * a64).sum())
        norm_b += float((b64 * b64).sum())
    cosine = dot / np.sqrt(norm_a * norm_b) if norm_a > 0 and norm_b > 0 else 1.0
    return {
        "max_abs_diff": worst,
        "cosine": round(float(cosine), 9),
        "inputs": {k: list(v.shape) for k, v in feed.items()},
        "atol": PARITY_ATOL,
        "rtol": PARITY_RTOL,
    }


# --------------------------------------------------------------------------- the function


def ingest(
    model: onnx.ModelProto | Path,
    target: Target | Sequence[Target],
    shapes: Mapping[str, Sequence[int]] | None = None,
    *,
    feed: dict[str, np.ndarray] | None = None,
    seed: int = 0,
    constants: Mapping[str, np.ndarray] | None = None,
    where: Path | str | None = None,
    field_name: str = "model.path",
) -> tuple[onnx.ModelProto, IngestRecord]:
    """The user's graph made workable for TARGET(s): opset brought into range, Constant weights
    promoted, shapes inferred; parity-checked when anything changed.

    shapes: the shape of each input for the parity run (needed for dynamic dimensions), or feed:
    the exact arrays to run (a recipe's data, a state input's initial value). constants: inputs
    fixed for the device (`sr: 16000`): bound into the graph, and If nodes they decide inlined.
    A path is loaded with its external data (call `onnx_io.check_onnx_file` on it first)."""
    path = model if isinstance(model, Path) else None
    where = where if where is not None else (path or "model")
    original = onnx.load(str(path)) if path is not None else model
    targets = [target] if isinstance(target, Target) else list(target)
    lo, hi = common_opset_range(targets, where)
    opset = model_opset(original)
    work = onnx.ModelProto()
    work.CopyFrom(original)
    to = opset if lo <= opset <= hi else (lo if opset < lo else hi)
    if to != opset:
        work = convert_opset(work, to, where, field_name)
    count, size = promote_constants(work.graph, as_inputs=work.ir_version < 4)
    bound = {k: np.asarray(v) for k, v in (constants or {}).items()}
    static = shapes if shapes and any(t.static_shapes for t in targets) else None
    inlined = inline_constant_ifs(work, bound, static) if bound or static else []
    refuse_float_subgraphs(work, targets, where)
    changed = to != opset or count > 0 or bool(inlined)
    typed = 0
    if changed:
        work, typed = infer_shapes(work)
    record = IngestRecord(
        opset_from=opset,
        opset_to=to,
        constants_promoted=count,
        constants_bytes=size,
        parameters=count_parameters(work.graph),
        typed_tensors=typed,
        control_flow=control_flow_nodes(work.graph),
        bound_inputs=sorted(bound),
        inlined=inlined,
        changed=changed,
    )
    if not changed:
        return original, record
    run = dict(feed) if feed is not None else seeded_feed(original, shapes or {}, seed, where)
    run.update(bound)
    checked = parity(path if path is not None else original, work, run, where, field_name)
    return work, IngestRecord(**{**record.as_dict(), "parity": checked})


def ingest_file(
    path: Path,
    target: Target | Sequence[Target],
    shapes: Mapping[str, Sequence[int]] | None,
    folder: Path,
    *,
    feed: dict[str, np.ndarray] | None = None,
    seed: int = 0,
    field_name: str = "MODEL",
) -> tuple[Path, IngestRecord]:
    """`ingest` for a file on disk (`edgex quantize`): the path to work on (PATH itself when nothing
    changed, else the ingested graph written into FOLDER, which the caller owns) and the record."""
    from exporter.onnx_io import save_model

    model, record = ingest(path, target, shapes, feed=feed, seed=seed, where=path, field_name=field_name)
    if not record.changed:
        return path, record
    out = folder / f"{path.stem}-ingested-op{record.opset_to}.onnx"
    save_model(model, out)
    return out, record
