"""What a model source hands to the rest of the build, whichever source loaded it.

A module of its own so the sources (`exporter.sources`, `exporter.hf.source`) and the stages that
read a loaded model (export, compress, the pipeline) all depend on it and not on each other.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class LoadedModel:
    kind: str  # "torch" | "onnx" | "hf"
    module: Any = None  # torch.nn.Module in eval mode
    onnx_path: Path | None = None
    weights_sha256: str | None = None
    hf: Any = None  # exporter.hf.source.HFModel for Hugging Face folders
    ingest: dict | None = None  # exporter.ingest record of a given ONNX file (opset, promoted constants, parity)
