"""Model source `hf`: a local transformers or sentence-transformers folder.

Loaded with remote code disabled and from safetensors only unless the recipe opts in; the
canonical ONNX export (optimum, dynamic axes) is made once here, and each target derives its
file from it (fixed shapes, fusions).
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import onnx

from exporter import hf as _offline  # noqa: F401  (sets the offline environment first)
from exporter.callables import call_user
from exporter.errors import UsageError
from exporter.loaded_model import LoadedModel
from exporter.recipe import HFSource, InputSpec, LoadedRecipe

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "merges.txt",
    "sentencepiece.bpe.model",
    "spiece.model",
    "added_tokens.json",
)
_TASKS = {  # recipe task -> (optimum task, library, the output a user wants)
    "sentence-embedding": ("feature-extraction", "sentence_transformers", "sentence_embedding"),
    "feature-extraction": ("feature-extraction", "transformers", "last_hidden_state"),
    "sequence-classification": ("text-classification", "transformers", "logits"),
}


@dataclass
class HFModel:
    folder: Path
    task: str
    tokenizer: object
    tokenizer_files: list[Path]
    canonical_onnx: Path
    output_name: str
    inputs: list[InputSpec]
    _workdir: tempfile.TemporaryDirectory = field(repr=False, default=None)


def resolve_folder(spec: HFSource, loaded: LoadedRecipe) -> Path:
    if spec.folder_from:
        folder = Path(
            call_user(
                spec.folder_from,
                loaded.path.parent,
                loaded.path,
                "model.folder_from",
                "folder callable",
                "fix the function so it returns the model folder",
            )
        )
    else:
        folder = loaded.resolve(spec.folder or "")
    if not (folder / "config.json").is_file():
        raise UsageError(
            f"'{folder}' is not a Hugging Face model folder (no config.json)",
            path=loaded.path,
            field="model.folder",
            fix="point at the folder holding config.json, weights and tokenizer",
        )
    return folder


def check_folder_safety(folder: Path, spec: HFSource, where: Path) -> None:
    """Refuse pickled weights and remote code unless the recipe explicitly opts in."""
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    if config.get("auto_map") and not spec.trust_remote_code:
        raise UsageError(
            "the model folder asks to run its own Python code (auto_map in config.json)",
            path=where,
            field="model.trust_remote_code",
            fix="review that code, then set trust_remote_code: true",
        )
    if not list(folder.glob("*.safetensors")):
        pickled = [p.name for p in folder.glob("*.bin")] + [p.name for p in folder.glob("*.pt")]
        if not pickled:
            raise UsageError(
                "no weights (*.safetensors) in the model folder",
                path=where,
                field="model.folder",
                fix="save the model with save_pretrained(safe_serialization=True)",
            )
        if not spec.allow_pickle:
            raise UsageError(
                f"only pickled weights ({', '.join(sorted(pickled))}), which can run code when loaded",
                path=where,
                field="model.allow_pickle",
                fix="convert to safetensors, or set allow_pickle: true for a folder you trust",
            )


def _reference_module(folder: Path, spec: HFSource, names: list[str]):
    """The FP32 PyTorch model every variant is judged against, called with the ONNX inputs in
    graph order (`names`, which may be set after the export that fixes them)."""
    import torch

    if spec.task == "sentence-embedding":
        from sentence_transformers import SentenceTransformer

        model = SentenceTransformer(
            str(folder), device="cpu", trust_remote_code=spec.trust_remote_code, local_files_only=True
        )

        def pick(m, features: dict) -> torch.Tensor:
            return m(features)["sentence_embedding"]
    else:
        from transformers import AutoModel, AutoModelForSequenceClassification

        cls = AutoModelForSequenceClassification if spec.task == "sequence-classification" else AutoModel
        model = cls.from_pretrained(
            str(folder),
            trust_remote_code=spec.trust_remote_code,
            local_files_only=True,
            use_safetensors=not spec.allow_pickle or None,
        )
        key = "logits" if spec.task == "sequence-classification" else "last_hidden_state"

        def pick(m, features: dict) -> torch.Tensor:
            return getattr(m(**features), key)

    class ByName(torch.nn.Module):
        """Positional graph inputs -> the wanted output; calls self.model, so a deep copy (the
        student of a compression) runs its own weights."""

        def __init__(self):
            super().__init__()
            self.model = model
            self.names = list(names)

        def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
            return pick(self.model, dict(zip(self.names, tensors, strict=True)))

    return ByName().eval()


def export_canonical(
    folder: Path, spec: HFSource, out_dir: Path, opset: int, where: Path, model=None
) -> tuple[Path, str]:
    """optimum's exporter, offline, dynamic axes; keeps only the output the user wants. `model`:
    export this loaded model instead of the folder's (an architecture its config cannot describe,
    such as low-rank factorised projections)."""
    from optimum.exporters.onnx import main_export, onnx_export_from_model

    task, library, wanted = _TASKS[spec.task]
    quiet = [logging.getLogger(n) for n in ("optimum", "transformers", "sentence_transformers")]
    levels = [q.level for q in quiet]
    for q in quiet:
        q.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if model is not None:
                onnx_export_from_model(model, str(out_dir), opset=opset, task=task, device="cpu", do_validation=False)
            else:
                main_export(
                    str(folder),
                    output=str(out_dir),
                    task=task,
                    library_name=library,
                    opset=opset,
                    device="cpu",
                    do_validation=False,
                    trust_remote_code=spec.trust_remote_code,
                )
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise UsageError(
            f"optimum could not export the model: {first}",
            path=where,
            field="model.task",
            fix="check the task matches the model (sentence-embedding, feature-extraction, sequence-classification)",
        ) from None
    finally:
        for q, level in zip(quiet, levels):
            q.setLevel(level)
    path = out_dir / "model.onnx"
    model = onnx.load(str(path))
    names = [o.name for o in model.graph.output]
    if wanted not in names:
        raise UsageError(
            f"the export has outputs {names}, not '{wanted}'",
            path=where,
            field="model.task",
            fix="choose the task that matches the model",
        )
    keep = [o for o in model.graph.output if o.name == wanted]
    del model.graph.output[:]
    model.graph.output.extend(keep)
    onnx.save(model, str(path))
    return path, wanted


def load_hf(spec: HFSource, loaded: LoadedRecipe, transform=None):
    """`transform(model)`: changes the loaded model in place before it is exported and used as
    the reference (compression restores a factorised student this way)."""
    folder = resolve_folder(spec, loaded)
    check_folder_safety(folder, spec, loaded.path)
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(
            str(folder), trust_remote_code=spec.trust_remote_code, local_files_only=True
        )
    except Exception as exc:
        raise UsageError(
            f"cannot load the tokenizer ({type(exc).__name__})",
            path=loaded.path,
            field="model.folder",
            fix="the folder needs the tokenizer files saved with the model",
        ) from None
    workdir = tempfile.TemporaryDirectory(prefix="edgex-hf-")
    module = None
    if transform is not None:
        module = _reference_module(folder, spec, [])
        transform(module.model)
    canonical, output = export_canonical(
        folder, spec, Path(workdir.name), 18, loaded.path, model=None if module is None else module.model
    )
    graph_inputs = [i.name for i in onnx.load(str(canonical), load_external_data=False).graph.input]
    if module is None:
        module = _reference_module(folder, spec, graph_inputs)
    module.names = graph_inputs
    inputs = [
        InputSpec(
            name=n, shape=[spec.batch, spec.sequence_length], dtype="int64", dynamic_axes={0: "batch", 1: "sequence"}
        )
        for n in graph_inputs
    ]
    files = [folder / name for name in TOKENIZER_FILES if (folder / name).is_file()]
    info = HFModel(
        folder=folder,
        task=spec.task,
        tokenizer=tokenizer,
        tokenizer_files=files,
        canonical_onnx=canonical,
        output_name=output,
        inputs=inputs,
        _workdir=workdir,
    )
    return LoadedModel(kind="hf", module=module, hf=info, weights_sha256=_weights_digest(folder))


def _weights_digest(folder: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    for path in sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin")):
        h.update(path.name.encode())
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def copy_tokenizer(info: HFModel, dest: Path) -> list[str]:
    dest.mkdir(parents=True, exist_ok=True)
    for path in info.tokenizer_files:
        shutil.copyfile(path, dest / path.name)
    return sorted(p.name for p in info.tokenizer_files)
