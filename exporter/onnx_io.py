"""Reading and writing ONNX files safely and reproducibly.

Files from other hands are checked before any onnxruntime session sees them; files we write
have exporter debug metadata (stack traces with local paths) stripped so rebuilds are
byte-identical across checkouts.
"""

from __future__ import annotations

import os
from pathlib import Path

import onnx

from exporter.errors import UsageError

LFS_POINTER = b"version https://git-lfs"


def check_onnx_file(path: Path, where: Path | str | None = None, field: str = "model") -> onnx.ModelProto:
    """Load an ONNX file, refusing truncated files, LFS pointers and external data outside its folder."""
    where = where if where is not None else path
    if not path.is_file():
        raise UsageError(f"ONNX file '{path}' not found", path=where, field=field, fix="check the path")
    head = path.read_bytes()[:64]
    if head.startswith(LFS_POINTER):
        raise UsageError(
            f"'{path.name}' is a Git LFS pointer, not a model",
            path=where,
            field=field,
            fix="run `git lfs pull` to fetch the real file",
        )
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise UsageError(
            f"'{path.name}' is not a readable ONNX model ({type(exc).__name__})",
            path=where,
            field=field,
            fix="re-export the model; the file may be truncated",
        ) from None
    folder = path.parent.resolve()
    for tensor in _all_tensors(model):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        entries = {e.key: e.value for e in tensor.external_data}
        unknown = set(entries) - {"location", "offset", "length", "checksum"}
        location = entries.get("location", "")
        target = folder / location
        if (
            unknown
            or not location
            or os.path.isabs(location)
            or ".." in Path(location).parts
            or target.is_symlink()
            or not target.resolve().is_relative_to(folder)
            or not target.is_file()
        ):
            raise UsageError(
                f"external data '{location}' of tensor '{tensor.name}' is not a file inside the model's own folder",
                path=where,
                field=field,
                fix="keep external data files beside the model, referenced by plain relative names",
            )
        size = target.stat().st_size
        end = int(entries.get("offset", 0) or 0) + int(entries.get("length", 0) or 0)
        if end > size:
            raise UsageError(
                f"external data of tensor '{tensor.name}' points past the end of '{location}'",
                path=where,
                field=field,
                fix="re-export the model",
            )
    try:
        onnx.checker.check_model(str(path))
    except Exception as exc:
        msg = str(exc).splitlines()[0][:200]
        raise UsageError(
            f"'{path.name}' fails the ONNX checker ({msg})", path=where, field=field, fix="re-export the model"
        ) from None
    return model


def _all_tensors(model: onnx.ModelProto):
    yield from model.graph.initializer
    for node in model.graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR:
                yield attr.t


def strip_debug_metadata(model: onnx.ModelProto) -> onnx.ModelProto:
    """Drop exporter stack traces and fx node dumps: they embed local paths and vary by checkout."""

    def clean_graph(graph: onnx.GraphProto) -> None:
        graph.doc_string = ""
        del graph.metadata_props[:]
        for vi in list(graph.input) + list(graph.output) + list(graph.value_info):
            vi.doc_string = ""
            del vi.metadata_props[:]
        for init in graph.initializer:
            del init.metadata_props[:]
        for node in graph.node:
            node.doc_string = ""
            del node.metadata_props[:]
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    clean_graph(attr.g)
                for g in attr.graphs:
                    clean_graph(g)

    clean_graph(model.graph)
    model.doc_string = ""
    return model


def save_model(model: onnx.ModelProto, path: Path, metadata: dict[str, str] | None = None) -> Path:
    """Save with sorted metadata and no debug info; small models stay a single file."""
    strip_debug_metadata(model)
    if metadata:
        existing = {p.key: p.value for p in model.metadata_props}
        existing.update(metadata)
        del model.metadata_props[:]
        for key in sorted(existing):
            model.metadata_props.add(key=key, value=existing[key])
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(model, str(path))
    return path
