"""`edgex gguf`: a GGUF decoder to an FP32 ONNX file with KV cache and an INT4 file on the GGUF's
own grid, both judged on held-out text (and timed side by side on this host), optionally the QNN
prompt/token pair, written atomically with a record of what was done.

The build fails (exit 1, files written) when the INT4 perplexity rises more than `max_ppl_rise`
over the FP32 export's, or is not finite (a decoder that reads fluently but wrongly is what users
fear most), or when a QNN graph does not load without CPU fallback or strays from FP32's logits.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from exporter import log
from exporter.digest import sha256_file
from exporter.errors import UsageError
from exporter.hf.text import corpus
from exporter.llm import decode, footprint, genai_check, qnn_decoder
from exporter.llm.gguf_grid import read_grid, tokenizer_facts
from exporter.llm.gguf_source import check_logits, export_with_genai_builder, export_with_past, load_gguf
from exporter.llm.source_grid import grid_index, rewrite_on_grid, set_accuracy_level
from exporter.staging import check_output, staged_output

EVAL_SENTENCES = 200  # held-out pydoc-topics sentences (4,510 SmolLM2 tokens, 4,310 scored)
PROMPTS = (
    "What is the capital of France?",
    "Write a Python function that reverses a string.",
    "Explain what a compiler does in two sentences.",
    "List three colours of the rainbow.",
    "Why is the sky blue?",
)


@dataclass(frozen=True)
class GgufOptions:
    accuracy_level: int = 4  # MatMulNBits: 4 = int8 activations per block (the fast CPU path), 0 = float
    max_ppl_rise: float = 0.10
    eval_sentences: int = EVAL_SENTENCES
    new_tokens: int = 20
    genai_python: Path | None = None  # an environment with onnxruntime-genai's builder: its graph, a genai folder
    qnn_soc: dict | None = None  # {"soc_model", "htp_arch"} of a QNN profile: also the AR-N / AR-1 pair
    qnn_prompt_tokens: int = 128
    qnn_context: int = 512


def _eval_texts(count: int) -> list[str]:
    return corpus()["evaluation"][:count]


def _prompt_ids(tokenizer) -> list[list[int]]:
    if getattr(tokenizer, "chat_template", None):
        return [
            tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True) for p in PROMPTS
        ]
    return [tokenizer(p)["input_ids"] for p in PROMPTS]


def _judge(folder: Path, tokenizer, options: GgufOptions) -> dict:
    """Perplexity of both files and greedy agreement of INT4 with FP32 on the reference prompts."""
    sessions = {name: decode.open_session(folder / name / "model.onnx") for name in ("fp32", "int4")}
    texts = _eval_texts(options.eval_sentences)
    sequences = [tokenizer(t)["input_ids"] for t in texts]
    result: dict = {"eval_sentences": len(sequences)}
    for name, session in sessions.items():
        log.info(f"perplexity of the {name} file on {len(sequences)} held-out sentences")
        result[f"perplexity_{name}"], result["eval_tokens"] = decode.perplexity(session, sequences)
    prompts = []
    for ids in _prompt_ids(tokenizer):
        ref, _, _ = decode.greedy(sessions["fp32"], ids, options.new_tokens)
        got, _, _ = decode.greedy(sessions["int4"], ids, options.new_tokens)
        prompts.append(
            {"prompt_tokens": ids, "fp32_tokens": ref, "int4_tokens": got, "agree": decode.agreement(got, ref)}
        )
    result["prompts"] = prompts
    if (folder / "int4" / "genai_config.json").is_file():
        result["genai_tokenizer"] = genai_check.tokenizer_round_trip(folder / "int4", tokenizer, texts + list(PROMPTS))
        genai = genai_check.genai_greedy(folder / "int4", [p["prompt_tokens"] for p in prompts], options.new_tokens)
        for prompt, tokens in zip(prompts, genai):
            prompt["genai_tokens"] = tokens
            prompt["genai_agree"] = decode.agreement(tokens, prompt["fp32_tokens"])
            prompt["genai_is_loop"] = tokens == prompt["int4_tokens"][: len(tokens)]  # genai stops at EOS
    return result


def export_gguf(gguf_path: Path, out: Path, options: GgufOptions = GgufOptions()) -> dict:
    """The whole command; returns the record also written to OUT/record.json (`ok` false when the
    perplexity or QNN gate failed: the files are written and say so)."""
    check_output(out)  # before minutes of loading and exporting
    grid, types = read_grid(gguf_path)
    if options.qnn_soc is not None:
        _check_qnn(gguf_path, options.qnn_soc)
    loaded = load_gguf(gguf_path, types)
    record: dict = {
        "source": {"file": gguf_path.name, "sha256": sha256_file(gguf_path), "tensor_types": types},
        "architecture": loaded.architecture,
        "tokenizer_repairs": loaded.tokenizer_repairs,
        "accuracy_level": options.accuracy_level,
    }
    with staged_output(out) as tmp:
        if options.genai_python is not None:
            log.info("exporting the FP32 decoder with onnxruntime-genai's builder (its own environment)")
            with _work_dir(tmp, out) as work:
                fp32 = export_with_genai_builder(loaded, tmp / "fp32", options.genai_python, Path(work))
        else:
            log.info("exporting the FP32 decoder with its KV cache (optimum)")
            with log.quiet_libraries(), log.stdout_to_stderr():
                fp32 = export_with_past(loaded, tmp / "fp32")
        record["graph"] = "onnxruntime-genai builder" if options.genai_python else "optimum text-generation-with-past"
        probe = [[(7 * i + 3) % loaded.model.config.vocab_size for i in range(16)]]
        record["fp32_logit_diff_vs_pytorch"] = check_logits(loaded, fp32, np.array(probe, np.int64))
        model = onnx.load(str(fp32))
        rewrite = rewrite_on_grid(model, grid_index(grid), accuracy_level=0)
        (tmp / "int4").mkdir()
        for extra in fp32.parent.iterdir():  # genai_config.json, tokenizer files, chat template
            if not extra.name.startswith("model.onnx"):
                shutil.copy(extra, tmp / "int4" / extra.name)
        int4 = tmp / "int4" / "model.onnx"
        onnx.save(model, str(int4))
        # in float compute the grid file must give the FP32 export's logits: the codes, scales and
        # mins were carried, not re-rounded (a packing mistake shows here, not in perplexity)
        record["int4_float_compute_logit_diff"] = check_logits(loaded, int4, np.array(probe, np.int64))
        set_accuracy_level(model, options.accuracy_level)
        onnx.save(model, str(int4))
        record["int4"] = rewrite.as_record()
        if loaded.tokenizer is not None:
            if options.genai_python is None:
                loaded.tokenizer.save_pretrained(str(tmp / "tokenizer"))
            record["judged"] = _judge(tmp, loaded.tokenizer, options)
        else:
            record["judged"] = None  # no tokenizer in the GGUF: nothing to measure text on
        record["sizes_mb"] = {n: round(_model_bytes(tmp / n) / 1e6, 1) for n in ("fp32", "int4")}
        if options.qnn_soc is not None:
            record["qnn"] = _qnn(loaded, fp32 if options.genai_python is None else None, tmp, out, options)
        record["kv_cache"] = footprint.kv_cache(loaded.model.config)
        log.info("timing FP32 and INT4 side by side on this host (one thread)")
        prompt = [(11 * i + 5) % loaded.model.config.vocab_size for i in range(footprint.PROMPT_TOKENS)]
        record["host_timing"] = footprint.host_timing({n: tmp / n / "model.onnx" for n in ("fp32", "int4")}, prompt)
        record["problem"] = _gate(record, options) or (_qnn_problem(record["qnn"]) if "qnn" in record else None)
        record["ok"] = record["problem"] is None
        (tmp / "record.json").write_text(json.dumps(record, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return record


def _work_dir(tmp: Path, out: Path):
    """Beside the output (a model's FP32 copies: ~4 bytes a weight each), named like staging so a
    killed run's leftovers are cleaned by the next run's recovery."""
    return tempfile.TemporaryDirectory(dir=tmp.parent, prefix=f".{out.name}.edgex-tmp-work-")


def _check_qnn(gguf_path: Path, soc: dict) -> None:
    """What the QNN pair needs, before any work: the emulator, a SoC, a tokenizer (real text)."""
    from exporter import qnn_htp

    reason = qnn_htp.unavailable_reason()
    if reason:
        raise UsageError(reason, field="--qnn-profile", fix="pip install 'edgex[qnn]' (linux x86_64)")
    if soc.get("soc_model") is None:
        raise UsageError("the profile names no soc.soc_model", field="--qnn-profile", fix="give a QNN profile with one")
    if tokenizer_facts(gguf_path).get("model") is None:
        raise UsageError(
            "the GGUF has no tokenizer: the QNN graphs are calibrated on text",
            path=gguf_path,
            field="--qnn-profile",
            fix="give a GGUF with its tokenizer, or leave out --qnn-profile",
        )


def _qnn(loaded, optimum_fp32: Path | None, tmp: Path, out: Path, options: GgufOptions) -> dict:
    """The QNN prompt/token pair, from optimum's export (the genai graph's contrib ops are CPU-only)."""
    with _work_dir(tmp, out) as work:
        if optimum_fp32 is None:
            with log.quiet_libraries(), log.stdout_to_stderr():
                optimum_fp32 = export_with_past(loaded, Path(work) / "optimum")
        sequences = {
            split: [loaded.tokenizer(t)["input_ids"] for t in corpus()[split]]
            for split in ("calibration", "evaluation")
        }
        (tmp / "qnn").mkdir()
        return qnn_decoder.qnn_pair(
            optimum_fp32,
            tmp / "qnn",
            Path(work),
            options.qnn_soc,
            sequences,
            options.qnn_prompt_tokens,
            options.qnn_context,
        )


QNN_MIN_COSINE = 0.98  # logits vs the FP32 fixed graph on a held-out window (SmolLM2 AR-1: 0.996)


def _qnn_problem(qnn: dict) -> str | None:
    for name, graph in qnn["graphs"].items():
        if not graph["loads_without_cpu_fallback"]:
            return f"QNN {name.upper()} does not load on the HTP without CPU fallback: {graph['refusal']}"
        if not graph["logits_cosine_vs_fp32"] >= QNN_MIN_COSINE:
            return (
                f"QNN {name.upper()} logits cosine {graph['logits_cosine_vs_fp32']} vs FP32 is under {QNN_MIN_COSINE}"
            )
    return None


def _model_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.glob("model.onnx*"))


def ppl_problem(fp32: float, int4: float, max_rise: float) -> str | None:
    """Why the INT4 perplexity is not acceptable, or None (NaN never passes)."""
    rise = int4 / fp32 - 1
    if rise <= max_rise:
        return None
    return f"INT4 perplexity {int4:.2f} vs FP32 {fp32:.2f} ({rise:+.1%}) exceeds the allowed +{max_rise:.0%}"


def _gate(record: dict, options: GgufOptions) -> str | None:
    judged = record["judged"]
    if not judged:
        return None
    judged["perplexity_rise"] = judged["perplexity_int4"] / judged["perplexity_fp32"] - 1
    return ppl_problem(judged["perplexity_fp32"], judged["perplexity_int4"], options.max_ppl_rise)
