"""Running an exported decoder with its KV cache in onnxruntime, and what a decoder is judged on:
perplexity on held-out text, greedy agreement with FP32, time to first token, decode tokens/s.

Written against the input names of optimum's text-generation-with-past export and onnxruntime-genai's builder (`input_ids`,
`attention_mask`, `position_ids`, `past_key_values.{i}.key|value` -> `logits`, `present.{i}.*`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import onnxruntime as ort


def open_session(path: Path, threads: int = 1) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    config = Path(path).parent / "genai_config.json"  # onnxruntime-genai's files name it `kv_cache_dim`
    if config.is_file():  # the head size, which the file leaves symbolic
        session.edgex_head_size = int(json.loads(config.read_text())["model"]["decoder"]["head_size"])
    return session


def empty_past(session: ort.InferenceSession) -> dict[str, np.ndarray]:
    """Zero-length past keys/values, shaped from the file's own inputs (batch 1)."""
    past = {}
    for inp in session.get_inputs():
        if inp.name.startswith("past_key_values."):
            heads, head_dim = inp.shape[1], inp.shape[3]
            if not isinstance(head_dim, int):
                head_dim = session.edgex_head_size
            past[inp.name] = np.zeros((1, heads, 0, head_dim), np.float32)
    return past


def _input_names(session: ort.InferenceSession) -> set[str]:
    return {inp.name for inp in session.get_inputs()}


def run_step(session: ort.InferenceSession, ids: np.ndarray, past: dict, start: int) -> tuple[np.ndarray, dict]:
    """One forward over `ids` [1, n] after `start` cached positions: (logits [1, n, V], the new past)."""
    n = ids.shape[1]
    feed = {"input_ids": ids.astype(np.int64), "attention_mask": np.ones((1, start + n), np.int64), **past}
    if "position_ids" in _input_names(session):  # optimum's export; onnxruntime-genai's derives positions
        feed["position_ids"] = np.arange(start, start + n, dtype=np.int64)[None]
    names = [out.name for out in session.get_outputs()]
    outs = session.run(None, feed)
    new_past = {name.replace("present.", "past_key_values."): v for name, v in zip(names[1:], outs[1:])}
    return outs[0], new_past


def _log_softmax_at(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    lg = logits.astype(np.float64)
    top = lg.max(-1, keepdims=True)
    lse = np.log(np.exp(lg - top).sum(-1)) + top[..., 0]
    return lg[np.arange(len(targets)), targets] - lse


def perplexity(session: ort.InferenceSession, sequences: Iterable[list[int]]) -> tuple[float, int]:
    """exp(mean next-token negative log-likelihood) over every sequence, and the token count."""
    nll, count = 0.0, 0
    for seq in sequences:
        if len(seq) < 2:
            continue
        ids = np.array([seq], np.int64)
        logits, _ = run_step(session, ids, empty_past(session), 0)
        logp = _log_softmax_at(logits[0, :-1], ids[0, 1:])
        if not np.all(np.isfinite(logp)):
            return float("nan"), count
        nll -= float(logp.sum())
        count += len(seq) - 1
    return float(np.exp(nll / max(count, 1))), count


def greedy(session: ort.InferenceSession, prompt: list[int], new_tokens: int) -> tuple[list[int], float, float]:
    """Greedy tokens after `prompt` with the KV cache: (tokens, time to first token s, decode tokens/s)."""
    start = time.perf_counter()
    logits, past = run_step(session, np.array([prompt], np.int64), empty_past(session), 0)
    ttft = time.perf_counter() - start
    tokens = [int(logits[0, -1].argmax())]
    position = len(prompt)
    start = time.perf_counter()
    for _ in range(new_tokens - 1):
        logits, past = run_step(session, np.array([[tokens[-1]]], np.int64), past, position)
        position += 1
        tokens.append(int(logits[0, -1].argmax()))
    elapsed = time.perf_counter() - start
    return tokens, ttft, (new_tokens - 1) / elapsed if elapsed > 0 else float("inf")


def agreement(tokens: list[int], reference: list[int]) -> int:
    """How many leading greedy tokens equal the reference's."""
    return next((i for i, (a, b) in enumerate(zip(tokens, reference)) if a != b), min(len(tokens), len(reference)))
