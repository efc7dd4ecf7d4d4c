"""The quantized weights of a GGUF file as llama.cpp stored them: codes, scales and mins per block.

A GGUF model was already quantized by its publisher; quantizing its dequantized weights again onto
another grid (onnxruntime's RTN, HQQ) adds a second rounding on top of the first, which is what cost
onnxruntime's INT4 14-26% perplexity on SmolLM2 (benchmarks/LLM.md). Reading the blocks lets the INT4 file carry the
publisher's grid itself. Only the block formats that map onto onnxruntime's MatMulNBits are read;
a MatMul whose weight matches none stays float and is listed by the rewrite (`kept_float`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from exporter.errors import UsageError

BLOCK = 32  # Q4_0, Q4_1 and Q8_0 all quantize blocks of 32 weights along the input dimension
# bytes per block: Q4_0 = fp16 scale + 16 code bytes; Q4_1 = fp16 scale + fp16 min + 16; Q8_0 = fp16 scale + 32
BLOCK_BYTES = {"Q4_0": 18, "Q4_1": 20, "Q8_0": 34}


@dataclass(frozen=True)
class GridWeight:
    """One weight [N out, K in] as w = scale * (code - offset) + min, per block of 32 along K."""

    name: str
    kind: str  # Q4_0 | Q4_1 | Q8_0 (one per part, joined by "+", for a packed weight)
    codes: np.ndarray  # [N, K] uint8: 0..15 (4-bit) or 0..255 (8-bit, int8 code + 128)
    scales: np.ndarray  # [N, K/32] float32
    mins: np.ndarray | None  # [N, K/32] float32 (Q4_1 only)

    @property
    def bits(self) -> int:
        return 8 if self.kind.startswith("Q8") else 4

    def dequantized(self) -> np.ndarray:
        offset = 128 if self.bits == 8 else (0 if self.mins is not None else 8)
        n, k = self.codes.shape
        blocks = (self.codes.reshape(n, k // BLOCK, BLOCK).astype(np.float32) - offset) * self.scales[..., None]
        if self.mins is not None:
            blocks = blocks + self.mins[..., None]
        return blocks.reshape(n, k)


def _half(block: np.ndarray, at: int) -> np.ndarray:
    return block[..., at : at + 2].copy().view(np.float16)[..., 0].astype(np.float32)


def _nibbles(packed: np.ndarray) -> np.ndarray:
    """ggml packs element j in the low nibble and element j+16 in the high nibble of byte j."""
    return np.concatenate([packed & 0x0F, packed >> 4], axis=-1)


def decode_blocks(kind: str, raw: np.ndarray, n: int, k: int) -> GridWeight:
    """Split a tensor's raw bytes [N, K/32 * block bytes] into codes, scales and mins."""
    blocks = np.ascontiguousarray(raw, dtype=np.uint8).reshape(n, k // BLOCK, BLOCK_BYTES[kind])
    if kind == "Q8_0":
        codes = (blocks[..., 2:].copy().view(np.int8).astype(np.int16) + 128).astype(np.uint8)
        return GridWeight("", kind, codes.reshape(n, k), _half(blocks, 0), None)
    start = 4 if kind == "Q4_1" else 2
    codes = _nibbles(blocks[..., start:]).reshape(n, k)
    mins = _half(blocks, 2) if kind == "Q4_1" else None
    return GridWeight("", kind, codes, _half(blocks, 0), mins)


def _llama_row_order(rows: int, heads: int) -> np.ndarray:
    """llama.cpp's converter interleaves the rotary halves of q and k rows; transformers undoes it
    on load, so the grid's rows are put back in transformers' order to match the exported weights."""
    half = rows // heads // 2
    return np.arange(rows).reshape(heads, half, 2).swapaxes(2, 1).reshape(rows)


def _gguf():
    try:
        import gguf
    except ImportError:
        raise UsageError(
            "reading GGUF files needs the gguf package", field="gguf", fix="pip install 'edgex[llm]'"
        ) from None
    return gguf


def tokenizer_facts(path: Path) -> dict:
    """What the GGUF says about its tokenizer: model kind, whether a BOS is added, the EOS id."""
    fields = _gguf().GGUFReader(str(path)).fields

    def value(key: str):
        return fields[key].contents() if key in fields else None

    return {
        "model": value("tokenizer.ggml.model"),
        "add_bos_token": value("tokenizer.ggml.add_bos_token"),
        "eos_token_id": value("tokenizer.ggml.eos_token_id"),
    }


def read_grid(path: Path) -> tuple[dict[tuple[int, int], list[GridWeight]], dict[str, int]]:
    """Every 2-D tensor in a block format MatMulNBits can carry, keyed by its [N, K] shape, and a
    count of all the file's tensor types (the source's quantization, recorded). A file that cannot
    be read, or holds no such tensor, is refused (exit 2): its "INT4" file would be all float."""
    gguf = _gguf()
    if not path.is_file():
        raise UsageError("no such file", path=path, fix="give the path of a .gguf model file")
    try:
        grid, types = _read(gguf.GGUFReader(str(path)))
    except Exception as exc:  # the reader raises OSError, ValueError, KeyError, IndexError on bad files
        raise UsageError(
            f"not a readable GGUF file ({type(exc).__name__}: {exc})", path=path, fix="give a .gguf model file"
        ) from None
    if not grid:
        raise UsageError(
            f"no tensor in a block format edgex carries into MatMulNBits (Q4_0, Q4_1, Q8_0); the file holds {types}",
            path=path,
            fix="give a Q4_0, Q4_1 or Q8_0 GGUF (llama.cpp's quantize tool writes them)",
        )
    return grid, types


def _read(reader) -> tuple[dict[tuple[int, int], list[GridWeight]], dict[str, int]]:
    arch_field = reader.fields.get("general.architecture")
    arch = arch_field.contents() if arch_field is not None else None

    def meta(key: str) -> int | None:
        field = reader.fields.get(f"{arch}.{key}")
        return int(field.contents()) if field is not None else None

    heads, kv_heads = (meta("attention.head_count"), meta("attention.head_count_kv")) if arch == "llama" else (0, 0)
    types: dict[str, int] = {}
    grid: dict[tuple[int, int], list[GridWeight]] = {}
    for tensor in reader.tensors:
        kind = tensor.tensor_type.name
        types[kind] = types.get(kind, 0) + 1
        if kind not in BLOCK_BYTES or len(tensor.shape) != 2:
            continue
        k, n = int(tensor.shape[0]), int(tensor.shape[1])  # GGUF lists dimensions innermost first
        weight = decode_blocks(kind, np.asarray(tensor.data), n, k)
        rows = None
        if ".attn_q." in tensor.name and heads and kv_heads:
            rows = _llama_row_order(n, heads)
        elif ".attn_k." in tensor.name and kv_heads:
            rows = _llama_row_order(n, kv_heads)
        if rows is not None:
            mins = weight.mins[rows] if weight.mins is not None else None
            weight = GridWeight("", kind, weight.codes[rows], weight.scales[rows], mins)
        grid.setdefault((n, k), []).append(GridWeight(tensor.name, kind, weight.codes, weight.scales, weight.mins))
    return grid, types
