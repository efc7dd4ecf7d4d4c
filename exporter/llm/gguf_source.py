"""A GGUF decoder loaded through transformers (dequantized, with its tokenizer and chat template)
and exported by optimum with its KV cache, the exported logits checked against PyTorch's.

optimum's own validation is switched off because it printed "values not close enough" and wrote
the model anyway; the check here fails the export instead.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from exporter import hf as _offline  # noqa: F401  (sets the offline environment first)
from exporter.errors import GateFailure, UsageError
from exporter.llm import decode

EXPORT_TASK = "text-generation-with-past"
OPSET = 18  # optimum's minimum for llama; 17 exported but warned the graph may be suboptimal
PARITY_ATOL = 1e-3  # max |logit difference| FP32 ONNX vs PyTorch (logits span ~±30)


@dataclass
class LoadedDecoder:
    model: object  # transformers PreTrainedModel (CausalLM), FP32, eval mode
    tokenizer: object | None  # None when the GGUF carries no tokenizer
    architecture: str
    source_types: dict[str, int]  # GGUF tensor types and how many of each (the source's quantization)


def _quiet():
    names = ("optimum", "transformers", "transformers.modeling_utils", "accelerate")
    loggers = [logging.getLogger(n) for n in names]
    for lg in loggers:
        lg.setLevel(logging.ERROR)


def load_gguf(path: Path, source_types: dict[str, int]) -> LoadedDecoder:
    """transformers dequantizes the GGUF into a float model; what the file held is in `source_types`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not path.is_file():
        raise UsageError("no such file", path=path, fix="give the path of a .gguf model file")
    _quiet()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
        except (ValueError, KeyError, OSError) as exc:
            raise UsageError(
                f"transformers cannot load it ({str(exc).splitlines()[0]})",
                path=path,
                field="general.architecture",
                fix="give a GGUF of an architecture transformers reads (llama, qwen2, mistral, ...)",
            ) from None
        try:
            tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        except (ValueError, KeyError, OSError, TypeError):
            tokenizer = None
    model.eval()
    return LoadedDecoder(model, tokenizer, model.config.model_type, dict(source_types))


def export_with_past(loaded: LoadedDecoder, out_dir: Path) -> Path:
    """optimum's text-generation-with-past export (inputs: ids, mask, positions, past keys/values)."""
    from optimum.exporters.onnx import onnx_export_from_model

    _quiet()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        onnx_export_from_model(
            loaded.model, str(out_dir), opset=OPSET, task=EXPORT_TASK, device="cpu", do_validation=False
        )
    return out_dir / "model.onnx"


def check_logits(loaded: LoadedDecoder, onnx_path: Path, ids: np.ndarray) -> float:
    """Max |logit| difference of the ONNX file vs PyTorch on `ids` [1, T]; fails over PARITY_ATOL."""
    import torch

    with torch.no_grad():
        want = loaded.model(torch.from_numpy(ids)).logits.numpy()
    session = decode.open_session(onnx_path, threads=1)
    got, _ = decode.run_step(session, ids, decode.empty_past(session), 0)
    diff = float(np.abs(got - want).max())
    if not np.isfinite(diff) or diff > PARITY_ATOL:
        raise GateFailure(f"{onnx_path}: exported logits differ from PyTorch's by {diff:.2e} (allowed {PARITY_ATOL})")
    return diff
