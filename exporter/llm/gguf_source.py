"""A GGUF decoder loaded through transformers (dequantized, with its tokenizer and chat template)
and exported with its KV cache, by optimum or by onnxruntime-genai's model builder (run in its own
environment), the exported logits checked against PyTorch's.

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
from exporter.llm.gguf_grid import tokenizer_facts

EXPORT_TASK = "text-generation-with-past"
OPSET = 18  # optimum's minimum for llama; 17 exported but warned the graph may be suboptimal
PARITY_ATOL = 1e-3  # max |logit difference| FP32 ONNX vs PyTorch (logits span ~±30)


@dataclass
class LoadedDecoder:
    model: object  # transformers PreTrainedModel (CausalLM), FP32, eval mode
    tokenizer: object | None  # None when the GGUF carries no tokenizer
    architecture: str
    source_types: dict[str, int]  # GGUF tensor types and how many of each (the source's quantization)
    tokenizer_repairs: list[str]  # what was put back in the tokenizer transformers rebuilt


def _quiet():
    names = ("optimum", "transformers", "transformers.modeling_utils", "accelerate")
    loggers = [logging.getLogger(n) for n in names]
    for lg in loggers:
        lg.setLevel(logging.ERROR)


def load_gguf(path: Path, source_types: dict[str, int]) -> LoadedDecoder:
    """transformers dequantizes the GGUF into a float model; what the file held is in `source_types`."""
    try:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError:
        raise UsageError(
            "GGUF decoders need transformers", field="transformers", fix="pip install 'edgex[llm]'"
        ) from None
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
        facts = tokenizer_facts(path)
        tokenizer = None
        if facts.get("model") is not None:  # the GGUF has a tokenizer: failing to load it is not "none"
            try:
                tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
            except (ValueError, KeyError, OSError, TypeError) as exc:
                raise UsageError(
                    f"transformers cannot build its tokenizer ({str(exc).splitlines()[0]})",
                    path=path,
                    field="tokenizer.ggml.model",
                    fix="give a GGUF whose tokenizer transformers reads (gpt2 / llama vocabularies)",
                ) from None
    model.eval()
    repairs = repair_tokenizer(tokenizer, facts) if tokenizer is not None else []
    return LoadedDecoder(model, tokenizer, model.config.model_type, dict(source_types), repairs)


def repair_tokenizer(tokenizer, facts: dict) -> list[str]:
    """transformers 4.57 rebuilds a GGUF's GPT-2 (byte-level BPE) vocabulary as a hybrid: BPE with
    SentencePiece byte fallback, a SentencePiece decoder before the byte-level one, and a template
    that puts the BOS token before every text even when the GGUF says `add_bos_token: false`.
    transformers itself still round-trips, but onnxruntime-genai's tokenizer reads that file as
    [19556, -1, -1, -1, ...] for "Hello world, this is a test." on SmolLM2, and every sequence
    gains a token the model was not trained to see first. Put back what the GGUF describes."""
    if facts.get("model") != "gpt2":
        return []
    from tokenizers import decoders, processors

    backend = tokenizer.backend_tokenizer
    done = []
    if getattr(backend.model, "byte_fallback", False):
        backend.model.byte_fallback = False
        done.append("BPE byte_fallback off (byte-level vocabulary)")
    if type(backend.decoder).__name__ != "ByteLevel":
        backend.decoder = decoders.ByteLevel()
        done.append("decoder: ByteLevel")
    if facts.get("add_bos_token") is False and type(backend.post_processor).__name__ != "ByteLevel":
        tokenizer.add_bos_token = False  # first: setting it rebuilds the post-processor; saved in tokenizer_config
        backend.post_processor = processors.ByteLevel(trim_offsets=False)
        done.append("no BOS token added (GGUF add_bos_token: false)")
    eos = facts.get("eos_token_id")
    if eos is not None and tokenizer.eos_token_id != eos:
        tokenizer.eos_token = tokenizer.convert_ids_to_tokens(int(eos))
        done.append(f"EOS token {tokenizer.eos_token!r} (GGUF eos_token_id {eos})")
    return done


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


def export_with_genai_builder(loaded: LoadedDecoder, out_dir: Path, python: Path, work: Path) -> Path:
    """onnxruntime-genai's model builder (GroupQueryAttention, rotary inside, packed QKV,
    genai_config.json), FP32, run by `python`: the builder needs transformers 5, which optimum-onnx
    does not allow beside it, so it lives in its own environment (`make genai-builder`).
    The builder's tokenizer files are replaced by the repaired tokenizer."""
    import subprocess

    if not python.is_file():
        raise UsageError(
            "no such Python", path=python, field="--genai-python", fix="run `make genai-builder` or give its python"
        )
    hf_dir = work / "hf"
    loaded.model.save_pretrained(str(hf_dir), safe_serialization=True)
    if loaded.tokenizer is not None:
        loaded.tokenizer.save_pretrained(str(hf_dir))
    cmd = [str(python), "-m", "onnxruntime_genai.models.builder", "-i", str(hf_dir), "-o", str(out_dir)]
    cmd += ["-p", "fp32", "-e", "cpu", "-c", str(work / "builder-cache")]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0 or not (out_dir / "model.onnx").is_file():
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise UsageError(
            f"onnxruntime-genai's builder failed ({last})",
            path=python,
            field="--genai-python",
            fix="give the python of an environment made by `make genai-builder`",
        )
    if loaded.tokenizer is not None:
        for name in ("tokenizer.json", "tokenizer_config.json"):
            (out_dir / name).unlink(missing_ok=True)
        loaded.tokenizer.save_pretrained(str(out_dir))
    return out_dir / "model.onnx"
