"""onnxruntime sessions and batched inference used by parity, evaluation and benchmarking."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnxruntime as ort

from exporter.bench.board_script import open_session
from exporter.feeding import Feeding, StateLink, to_samples


def host_threads(requested: int) -> int:
    """The profile's thread count, capped at the host's cores (recorded next to each result)."""
    return max(1, min(requested, os.cpu_count() or 1))


# How a variant's outputs are computed on the host for its quality metric:
#  "deployed": the CPU provider with every graph optimisation, Q/DQ fused into integer kernels
#              (exactly what the cpu target runs);
#  "simulated": Q/DQ kept as nodes (basic optimisations only), i.e. the quantized arithmetic the
#              model file specifies, as a device provider executes it. Needed because the host's
#              fused int8 kernels are not the device's: measured here, a per-channel S8S8 symmetric
#              (TensorRT) digits model scores 26.8% fused and 99.7% simulated.
EVALUATION_MODES = {
    "deployed": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    "simulated": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
}


def make_session(path: Path, threads: int = 1, mode: str = "deployed") -> ort.InferenceSession:
    """The board script's session (the same options wherever edgex times), at the mode's optimisation level."""
    return open_session(path, threads, EVALUATION_MODES[mode])


def fixed_batch(session: ort.InferenceSession, feeding: Feeding | None = None) -> int | None:
    """The batch size the graph fixes, or None when the batch axis is dynamic.

    Read from a data input: with state or constant inputs, the first input may be neither."""
    skip = set() if feeding is None else {s.input for s in feeding.states} | set(feeding.constants)
    first = next((i for i in session.get_inputs() if i.name not in skip), session.get_inputs()[0])
    dim = first.shape[0] if first.shape else None
    return dim if isinstance(dim, int) else None


def _pad(part: np.ndarray, rows: int) -> np.ndarray:
    return part if len(part) >= rows else np.concatenate([part, np.repeat(part[-1:], rows - len(part), axis=0)])


def run_all(
    session: ort.InferenceSession, inputs: dict[str, np.ndarray], batch: int = 64, feeding: Feeding | None = None
) -> list[np.ndarray]:
    """Run every sample, in chunks; a fixed-batch graph gets exactly its batch (last chunk padded).

    With a `feeding`, constants are added and state inputs are taken from the samples as given
    (each sample's own state, e.g. the FP32-carried one); outputs come back samples first.
    `run_sequences` carries the states instead."""
    n = len(next(iter(inputs.values())))
    fixed = fixed_batch(session, feeding)
    step = fixed or (feeding.max_batch() if feeding is not None else None) or batch
    names = [i.name for i in session.get_inputs()]
    axes = feeding.output_axes() if feeding is not None else {}
    out_names = [o.name for o in session.get_outputs()]
    chunks: list[list[np.ndarray]] = []
    for start in range(0, n, step):
        take = min(step, n - start)
        part = {
            k: _pad(v[start : start + step], fixed) if fixed else v[start : start + step] for k, v in inputs.items()
        }
        feed = feeding.feed(part, names) if feeding is not None else {name: part[name] for name in names}
        outs = session.run(None, feed)
        chunks.append([to_samples(o, axes.get(name, 0))[:take] for name, o in zip(out_names, outs, strict=True)])
    return [np.concatenate([c[i] for c in chunks]) for i in range(len(chunks[0]))]


def run_sequences(
    session: ort.InferenceSession, inputs: dict[str, np.ndarray], feeding: Feeding, batch: int = 64
) -> tuple[list[np.ndarray], dict[str, np.ndarray]]:
    """Run every sequence chunk by chunk, each state input carried from its output of the previous
    chunk (`initial` at the first): how the app runs the model, so how it is evaluated.

    Samples are sequence-major (`feeding.steps` chunks per sequence); up to `batch` sequences run
    side by side (the graph's fixed batch when it has one, 1 when a state has no batch axis).
    Returns the outputs and the state values each chunk was fed, both samples first: the
    FP32 model's fed states are the calibration samples of the state inputs."""
    n, steps = len(next(iter(inputs.values()))), feeding.steps
    if n % steps:
        raise ValueError(f"{n} samples are not whole sequences of {steps} chunks")
    fixed = fixed_batch(session, feeding)
    group = fixed or feeding.max_batch() or batch
    names = [i.name for i in session.get_inputs()]
    out_names = [o.name for o in session.get_outputs()]
    axes = feeding.output_axes()
    outputs: dict[str, np.ndarray] = {}
    fed = {s.input: np.empty((n, *_sample_shape(s)), dtype=s.dtype) for s in feeding.states}
    n_seq = n // steps
    for first in range(0, n_seq, group):
        seqs = list(range(first, min(first + group, n_seq)))
        take = len(seqs)
        if fixed:
            seqs += [seqs[-1]] * (fixed - take)
        state = {s.input: s.initial_value(len(seqs)) for s in feeding.states}
        for t in range(steps):
            rows = np.asarray([q * steps + t for q in seqs])
            data = {k: v[rows] for k, v in inputs.items() if k not in state}
            feed = {**data, **state, **feeding.constants}
            outs = dict(zip(out_names, session.run(None, {k: feed[k] for k in names}), strict=True))
            for s in feeding.states:
                fed[s.input][rows[:take]] = to_samples(state[s.input], s.batch_axis)[:take]
                state[s.input] = outs[s.output].astype(s.dtype, copy=False)
            for name, value in outs.items():
                value = to_samples(value, axes.get(name, 0))[:take]
                if name not in outputs:
                    outputs[name] = np.empty((n, *value.shape[1:]), dtype=value.dtype)
                outputs[name][rows[:take]] = value
    return [outputs[name] for name in out_names], fed


def _sample_shape(link: StateLink) -> tuple[int, ...]:
    return link.shape if link.batch_axis is None else link.shape[: link.batch_axis] + link.shape[link.batch_axis + 1 :]
