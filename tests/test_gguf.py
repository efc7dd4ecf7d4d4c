"""GGUF decoders: INT4 on the source's own grid, judged on text (a tiny Llama GGUF built here)."""

from __future__ import annotations

import json
import platform
import sys

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from conftest import ROOT
from gguf_tiny import write_tiny_gguf

from exporter.cli import cli
from exporter.errors import GateFailure, UsageError
from exporter.llm import decode, gguf_grid, source_grid
from exporter.llm.gguf_build import GgufOptions, export_gguf, ppl_problem
from exporter.llm.gguf_source import export_with_past, load_gguf


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The tiny GGUF, its grid, the loaded model and its FP32 export with KV cache."""
    folder = tmp_path_factory.mktemp("gguf")
    path = write_tiny_gguf(folder / "tiny.gguf")
    grid, types = gguf_grid.read_grid(path)
    loaded = load_gguf(path, types)
    fp32 = export_with_past(loaded, folder / "fp32")
    return path, grid, types, loaded, fp32


def _logits(path, ids):
    session = decode.open_session(path)
    logits, _ = decode.run_step(session, ids, decode.empty_past(session), 0)
    return logits


def _rewritten(fp32, grid, tmp_path, level=0):
    model = onnx.load(str(fp32))
    record = source_grid.rewrite_on_grid(model, source_grid.grid_index(grid), accuracy_level=level)
    out = tmp_path / "int4.onnx"
    onnx.save(model, str(out))
    return out, record, model


IDS = np.array([[5, 17, 99, 3, 250, 42, 42, 7, 128, 64, 1, 2]], np.int64)


def test_every_quantized_weight_goes_on_its_source_grid(tiny, tmp_path):
    _, grid, types, _, fp32 = tiny
    assert types == {"Q8_0": 1, "F32": 5, "Q4_1": 13, "Q4_0": 1}
    _, record, model = _rewritten(fp32, grid, tmp_path)
    assert record.as_record()["kinds"] == {"Q4_1": 13, "Q4_0": 1, "Q8_0": 1}  # the tied lm_head via Transpose too
    assert record.kept_float == []
    ops = {n.op_type for n in model.graph.node}
    assert "MatMulNBits" in ops and not any(
        n.op_type == "MatMul"
        and n.input[1] in {i.name for i in model.graph.initializer}
        and not n.name.startswith("grid")
        for n in model.graph.node
    )


def test_float_compute_gives_the_fp32_logits(tiny, tmp_path):
    """Nothing re-rounded: in float compute the INT4 file is the dequantized GGUF."""
    _, grid, _, _, fp32 = tiny
    int4, _, _ = _rewritten(fp32, grid, tmp_path)
    want, got = _logits(fp32, IDS), _logits(int4, IDS)
    assert np.abs(got - want).max() < 1e-4 * np.abs(want).max()


def test_kv_cache_steps_match_one_full_pass(tiny, tmp_path):
    _, grid, _, _, fp32 = tiny
    int4, _, _ = _rewritten(fp32, grid, tmp_path, level=4)
    session = decode.open_session(int4)
    full, _ = decode.run_step(session, IDS, decode.empty_past(session), 0)
    _, past = decode.run_step(session, IDS[:, :8], decode.empty_past(session), 0)
    last, _ = decode.run_step(session, IDS[:, 8:], past, 8)
    assert np.allclose(last[0], full[0, 8:], atol=2e-3 * np.abs(full).max())


def test_a_misread_grid_is_never_shipped(tiny, tmp_path, monkeypatch):
    """Decoded in the wrong nibble order, no weight matches the model's: all stay float, and say so."""
    path, _, _, _, fp32 = tiny
    monkeypatch.setattr(
        gguf_grid, "_nibbles", lambda packed: np.stack([packed & 15, packed >> 4], -1).reshape(*packed.shape[:-1], -1)
    )
    grid, _ = gguf_grid.read_grid(path)
    _, record, _ = _rewritten(fp32, grid, tmp_path)
    assert record.as_record()["kinds"] == {"Q8_0": 1}
    assert len(record.kept_float) == 14


def test_a_mispacked_file_fails_the_float_compute_check(tiny, tmp_path, monkeypatch):
    path = tiny[0]
    monkeypatch.setattr(source_grid, "_pack4", lambda codes: _swap_nibbles(codes))
    with pytest.raises(GateFailure, match="differ from PyTorch"):
        export_gguf(path, tmp_path / "out", GgufOptions(eval_sentences=4))
    assert not (tmp_path / "out").exists()


def _swap_nibbles(codes):
    n, k = codes.shape
    pairs = codes.reshape(n, k // 32, 16, 2)
    return (pairs[..., 1] | (pairs[..., 0] << 4)).astype(np.uint8)


def test_perplexity_is_pytorchs(tiny):
    import torch

    _, _, _, loaded, fp32 = tiny
    seqs = [[5, 17, 99, 3, 250, 42], [1, 2, 3, 4, 5, 6, 7, 8, 9]]
    ppl, count = decode.perplexity(decode.open_session(fp32), seqs)
    nll = 0.0
    with torch.no_grad():
        for seq in seqs:
            ids = torch.tensor([seq])
            nll += float(loaded.model(ids, labels=ids).loss) * (len(seq) - 1)
    assert count == 13
    assert ppl == pytest.approx(np.exp(nll / count), rel=1e-4)


def test_the_perplexity_gate():
    assert ppl_problem(50.0, 53.0, 0.10) is None
    assert "+30.0%" in ppl_problem(50.0, 65.0, 0.10)
    assert ppl_problem(50.0, float("nan"), 0.10) is not None


def test_cli_writes_both_files_and_the_record(tiny, tmp_path):
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["gguf", str(tiny[0]), "--out", str(out), "--eval-sentences", "8", "--json"])
    assert result.exit_code == 0, result.output
    record = json.loads((out / "record.json").read_text())
    assert record["ok"] and record["int4"]["on_source_grid"] == 15
    assert record["int4_float_compute_logit_diff"] < 1e-3
    judged = record["judged"]
    assert judged["eval_sentences"] == 8 and judged["eval_tokens"] > 100
    assert np.isfinite(judged["perplexity_fp32"]) and len(judged["prompts"]) == 5
    for p in judged["prompts"]:
        assert len(p["fp32_tokens"]) == len(p["int4_tokens"]) == 20
        assert p["agree"] == decode.agreement(p["int4_tokens"], p["fp32_tokens"])
    assert (out / "tokenizer" / "tokenizer.json").is_file()
    from transformers import AutoTokenizer

    reloaded = AutoTokenizer.from_pretrained(out / "tokenizer")  # the repair survives a save and a reload
    assert reloaded("Hello there")["input_ids"][0] != 0
    assert record["kv_cache"]["bytes_per_token"] == 2 * 2 * 2 * 16 * 4  # layers x k,v x kv heads x head 16 x fp32
    timing = record["host_timing"]
    assert timing["prompt_tokens"] == 128 and timing["fp32"]["decode_tok_s"] > 0 and timing["int4"]["ttft_ms"] > 0
    assert sorted(p.name for p in out.iterdir()) == ["fp32", "int4", "record.json", "tokenizer"]


def test_the_tokenizer_is_put_back_as_the_gguf_describes(tiny):
    """transformers rebuilds a GPT-2 vocabulary with byte fallback, a SentencePiece decoder and a BOS
    the GGUF does not ask for; the repaired tokenizer adds no BOS and decodes what it encodes."""
    loaded = tiny[3]
    assert len(loaded.tokenizer_repairs) == 4, loaded.tokenizer_repairs
    ids = loaded.tokenizer("Hello there, the end.")["input_ids"]
    assert ids[0] != 0 and -1 not in ids
    assert loaded.tokenizer.decode(ids) == "Hello there, the end."
    assert loaded.tokenizer.eos_token_id == 1


GENAI_PYTHON = ROOT / ".venv-genai" / "bin" / "python"


@pytest.mark.slow
def test_genai_folder_from_the_builder_graph(tiny, tmp_path):
    """onnxruntime-genai's builder graph (its own environment, `make genai-builder`), put on the grid,
    written as genai folders that onnxruntime-genai loads: its tokenizer round-trips every text and
    its greedy tokens are edgex's loop's on the same file."""
    assert GENAI_PYTHON.is_file(), "run `make genai-builder` (make test does)"
    out = tmp_path / "out"
    record = export_gguf(tiny[0], out, GgufOptions(eval_sentences=8, genai_python=GENAI_PYTHON))
    assert record["graph"] == "onnxruntime-genai builder"
    assert record["int4"]["kinds"]["Q8_0"] == 1 and record["int4"]["on_source_grid"] >= 9  # q/k/v packed
    assert record["int4"]["kept_float"] == []
    assert record["int4_float_compute_logit_diff"] < 1e-3
    for folder in ("fp32", "int4"):
        assert (out / folder / "genai_config.json").is_file()
    judged = record["judged"]
    assert judged["genai_tokenizer"]["mismatched"] == 0 and judged["genai_tokenizer"]["texts"] == 13
    assert all(p["genai_is_loop"] for p in judged["prompts"])


def test_a_perplexity_rise_fails_with_the_files_written(tiny, tmp_path, monkeypatch):
    """The gate seen failing: scales tripled after the float-compute check, so INT4 reads wrongly."""
    from exporter.llm import gguf_build

    def corrupt(model, level):
        source_grid.set_accuracy_level(model, level)
        for init in model.graph.initializer:
            if init.name.endswith("_scales"):
                init.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(init) * 3, init.name))

    monkeypatch.setattr(gguf_build, "set_accuracy_level", corrupt)
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["gguf", str(tiny[0]), "--out", str(out), "--eval-sentences", "8"])
    assert result.exit_code == 1, result.output
    assert "FAILED: INT4 perplexity" in result.output
    record = json.loads((out / "record.json").read_text())
    assert record["ok"] is False and record["judged"]["perplexity_rise"] > 0.10


def test_a_gguf_without_tokenizer_is_exported_but_not_judged(tmp_path):
    path = write_tiny_gguf(tmp_path / "bare.gguf", tokenizer=False)
    result = CliRunner().invoke(cli, ["gguf", str(path), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "not judged on text: the GGUF carries no tokenizer" in result.output
    assert json.loads((tmp_path / "out" / "record.json").read_text())["judged"] is None


def test_a_gguf_with_nothing_on_a_carried_grid_is_refused(tmp_path):
    import gguf

    writer = gguf.GGUFWriter(str(tmp_path / "f32.gguf"), "llama")
    writer.add_tensor("blk.0.attn_q.weight", np.ones((64, 64), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    result = CliRunner().invoke(cli, ["gguf", str(tmp_path / "f32.gguf"), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    assert "no tensor in a block format" in result.output and "F32" in result.output
    assert not (tmp_path / "out").exists()


def test_a_non_empty_out_is_refused_before_any_work(tiny, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    result = CliRunner().invoke(cli, ["gguf", str(tiny[0]), "--out", str(out)])
    assert result.exit_code == 2 and "choose an empty or new folder" in result.output
    assert (out / "mine.txt").read_text() == "keep"


QNN_OK = sys.platform.startswith("linux") and platform.machine() == "x86_64"  # where the HTP emulator ships


@pytest.fixture(scope="module")
def qnn_record(tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("qnn") / "out"
    options = GgufOptions(eval_sentences=8, qnn_soc=SA8295P, qnn_prompt_tokens=16, qnn_context=64)
    return export_gguf(tiny[0], out, options), out


SA8295P = {"soc_model": 39, "htp_arch": 68}


@pytest.mark.skipif(not QNN_OK, reason="the QNN HTP emulator ships for linux x86_64 only")
def test_qnn_prompt_and_token_graphs_run_whole_on_the_htp(qnn_record):
    """AR-16 and AR-1 over a 64-position context, W8A16: every node on the HTP, loaded with CPU
    fallback disabled, close to FP32 (AR-1 emulated), compiled to context binaries."""
    record, out = qnn_record
    assert record["ok"], record["problem"]
    for name in ("ar16", "ar1"):
        graph = record["qnn"]["graphs"][name]
        assert graph["assignment"]["supported_nodes"] == graph["assignment"]["nodes"]
        assert graph["loads_without_cpu_fallback"] and len(graph["mask_fills_made_finite"]) >= 1
        assert graph["logits_cosine_vs_fp32"] >= 0.98 and graph["top1_agreement_vs_fp32"] >= 0.9
    names = {p.name for p in (out / "qnn").iterdir()}
    assert names == {"ar16.qdq.onnx", "ar16_ctx.onnx", "ar1.qdq.onnx", "ar1_ctx.onnx"}
    ar1, ar16 = record["qnn"]["graphs"]["ar1"], record["qnn"]["graphs"]["ar16"]
    assert ar1["logits_from"] == "emulated HTP" and ar1["positions_compared"] == 8
    assert ar1["calibration_windows"] == 16 and ar16["positions_compared"] == 16


@pytest.mark.skipif(not QNN_OK, reason="the QNN HTP emulator ships for linux x86_64 only")
def test_an_infinite_mask_fill_fails_the_qnn_pair(tiny, tmp_path, monkeypatch):
    """The gate seen failing: with the export's -inf mask fill left in, uint16 calibration breaks
    the graph (the HTP refuses it, or its logits are far from FP32), and the command says so."""
    from exporter import qnn_htp
    from exporter.llm import qnn_decoder

    assert qnn_htp.unavailable_reason() is None  # else the failure below would be the missing backend's
    monkeypatch.setattr(qnn_decoder, "MASK_FILL", float("inf"))
    options = GgufOptions(eval_sentences=8, qnn_soc=SA8295P, qnn_prompt_tokens=16, qnn_context=64)
    record = export_gguf(tiny[0], tmp_path / "out", options)
    assert record["ok"] is False and record["problem"].startswith("QNN AR16")
    ar16 = record["qnn"]["graphs"]["ar16"]
    refused = not ar16["loads_without_cpu_fallback"] and "compose" in ar16["refusal"]
    assert refused or ar16["logits_cosine_vs_fp32"] < 0.98


def test_qnn_profile_must_be_a_qnn_profile(tiny, tmp_path):
    result = CliRunner().invoke(
        cli, ["gguf", str(tiny[0]), "--out", str(tmp_path / "o"), "--qnn-profile", "raspberry-pi-5-cpu"]
    )
    assert result.exit_code == 2 and "targets cpu, not qnn" in result.output


@pytest.mark.parametrize("content", [None, b"not a gguf at all"])
def test_bad_input_is_one_line_exit_2(tmp_path, content):
    path = tmp_path / "model.gguf"
    if content is not None:
        path.write_bytes(content)
    result = CliRunner().invoke(cli, ["gguf", str(path), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    assert "model.gguf" in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_the_qnn_pair_needs_a_tokenizer_before_any_work(tmp_path):
    path = write_tiny_gguf(tmp_path / "bare.gguf", tokenizer=False)
    with pytest.raises(UsageError, match="no tokenizer"):
        export_gguf(path, tmp_path / "out", GgufOptions(qnn_soc=SA8295P))
    assert not (tmp_path / "out").exists()
