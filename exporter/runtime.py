"""onnxruntime sessions and batched inference used by parity, evaluation and benchmarking."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnxruntime as ort

from exporter.bench.board_script import open_session


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


def fixed_batch(session: ort.InferenceSession) -> int | None:
    """The batch size the graph fixes, or None when the batch axis is dynamic."""
    dim = session.get_inputs()[0].shape[0] if session.get_inputs()[0].shape else None
    return dim if isinstance(dim, int) else None


def run_all(session: ort.InferenceSession, inputs: dict[str, np.ndarray], batch: int = 64) -> list[np.ndarray]:
    """Run every sample, in chunks; a fixed-batch graph gets exactly its batch (last chunk padded)."""
    n = len(next(iter(inputs.values())))
    fixed = fixed_batch(session)
    step = fixed or batch
    names = [i.name for i in session.get_inputs()]
    chunks: list[list[np.ndarray]] = []
    for start in range(0, n, step):
        feed = {}
        take = min(step, n - start)
        for name in names:
            part = inputs[name][start : start + step]
            if fixed and take < fixed:
                pad = np.repeat(part[-1:], fixed - take, axis=0)
                part = np.concatenate([part, pad])
            feed[name] = part
        outs = session.run(None, feed)
        chunks.append([o[:take] for o in outs])
    return [np.concatenate([c[i] for c in chunks]) for i in range(len(chunks[0]))]
