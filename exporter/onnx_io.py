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
from exporter.limits import MEMORY_ENV, limits

LFS_POINTER = b"version https://git-lfs"


EXTERNAL_KEYS = {"location", "offset", "length", "checksum"}
# A protobuf file is capped at 2 GiB; larger models carry their weights as external data.
PROTO_LIMIT = 2**31 - 1
BITS_PER_ELEMENT = {  # onnx.TensorProto data type -> bits per element, for declared-size checks
    1: 32,  # FLOAT
    2: 8,  # UINT8
    3: 8,  # INT8
    4: 16,  # UINT16
    5: 16,  # INT16
    6: 32,  # INT32
    7: 64,  # INT64
    9: 8,  # BOOL
    10: 16,  # FLOAT16
    11: 64,  # DOUBLE
    12: 32,  # UINT32
    13: 64,  # UINT64
    14: 64,  # COMPLEX64
    15: 128,  # COMPLEX128
    16: 16,  # BFLOAT16
    17: 8,  # FLOAT8E4M3FN
    18: 8,
    19: 8,
    20: 8,
    21: 4,  # UINT4
    22: 4,  # INT4
    23: 4,  # FLOAT4E2M1
}


def _refuse(message: str, where: Path | str, field: str, fix: str) -> UsageError:
    return UsageError(message, path=where, field=field, fix=fix)


def check_onnx_file(path: Path, where: Path | str | None = None, field: str = "model") -> onnx.ModelProto:
    """Load an ONNX file, refusing truncated files, LFS pointers and external data outside its folder.

    Runs before any onnxruntime session: onnxruntime follows external-data locations and trusts
    declared sizes, so those are checked here (plain relative names inside the model's folder,
    no symlinks or hardlinks, offsets inside the file) and the graph is pre-scanned
    (`prescan`) for tensors too large to hold.
    """
    where = where if where is not None else path
    if not path.is_file():
        raise _refuse(f"ONNX file '{path}' not found", where, field, "check the path")
    with open(path, "rb") as f:
        head = f.read(64)
    if head.startswith(LFS_POINTER):
        raise _refuse(
            f"'{path.name}' is a Git LFS pointer, not a model",
            where,
            field,
            "run `git lfs pull` to fetch the real file",
        )
    if path.stat().st_size > PROTO_LIMIT:
        raise _refuse(
            f"'{path.name}' is larger than the 2 GiB protobuf limit",
            where,
            field,
            "save the weights as external data (onnx.save_model(..., save_as_external_data=True))",
        )
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise _refuse(
            f"'{path.name}' is not a readable ONNX model ({type(exc).__name__})",
            where,
            field,
            "re-export the model; the file may be truncated",
        ) from None
    folder = path.parent.resolve()
    for tensor in all_tensors(model):
        if tensor.data_location == onnx.TensorProto.EXTERNAL or tensor.external_data:
            _check_external(tensor, folder, where, field)
    try:
        onnx.checker.check_model(str(path))
    except Exception as exc:
        msg = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
        raise _refuse(f"'{path.name}' fails the ONNX checker ({msg})", where, field, "re-export the model") from None
    prescan(model, path, where, field)
    return model


def prescan(model: onnx.ModelProto, path: Path, where: Path | str, field: str) -> dict:
    """Declared sizes checked before any session: tensors whose bytes disagree with their shape,
    negative dimensions, and weights or fixed-shape values larger than the sandbox may hold.

    onnxruntime trusts what a file declares and allocates accordingly; a refusal here is one
    line naming the tensor, where a session would be an out-of-memory kill with no name."""
    budget = limits().memory_mb * 2**20
    fix = "re-export the model"
    total = 0
    for tensor in all_tensors(model):
        if any(d < 0 for d in tensor.dims):
            raise _refuse(f"tensor '{tensor.name}' declares a negative dimension", where, field, fix)
        count = 1
        for d in tensor.dims:
            count *= d
        bits = BITS_PER_ELEMENT.get(tensor.data_type)
        if bits is None:
            continue
        need = -(-count * bits // 8)
        external = {e.key: e.value for e in tensor.external_data}
        if external:
            held = int(external.get("length") or 0)
            if held and held != need:
                raise _refuse(
                    f"tensor '{tensor.name}' declares {need} bytes but its external data holds {held}",
                    where,
                    field,
                    fix,
                )
        elif tensor.HasField("raw_data") and len(tensor.raw_data) != need:
            raise _refuse(
                f"tensor '{tensor.name}' declares shape {list(tensor.dims)} ({need} bytes) but holds "
                f"{len(tensor.raw_data)} bytes",
                where,
                field,
                fix,
            )
        total += need
    if total > budget:
        raise _refuse(
            f"'{path.name}' declares {total / 2**20:.0f} MB of weights, over the sandbox memory limit "
            f"({budget // 2**20} MB)",
            where,
            field,
            f"raise {MEMORY_ENV} if the model is genuine",
        )
    graph = model.graph
    for value in list(graph.input) + list(graph.output) + list(graph.value_info):
        tt = value.type.tensor_type
        dims = [d.dim_value for d in tt.shape.dim if d.HasField("dim_value")]
        if not dims or len(dims) != len(tt.shape.dim) or any(d < 0 for d in dims):
            continue
        count = 1
        for d in dims:
            count *= d
        need = -(-count * BITS_PER_ELEMENT.get(tt.elem_type, 8) // 8)
        if need > budget:
            raise _refuse(
                f"value '{value.name}' declares shape {dims} ({need / 2**20:.0f} MB), over the sandbox memory "
                f"limit ({budget // 2**20} MB)",
                where,
                field,
                f"fix the declared shape, or raise {MEMORY_ENV} if it is genuine",
            )
    return {"weight_bytes": total}


def _check_external(tensor: onnx.TensorProto, folder: Path, where: Path | str, field: str) -> None:
    fix = "keep external data files beside the model, referenced by plain relative names"
    entries = {e.key: e.value for e in tensor.external_data}
    unknown = sorted(set(entries) - EXTERNAL_KEYS)
    if unknown:
        raise _refuse(f"external data of tensor '{tensor.name}' has unknown keys {unknown}", where, field, fix)
    location = entries.get("location", "")
    target = folder / location
    if (
        not location
        or "\\" in location
        or "\x00" in location
        or os.path.isabs(location)
        or ".." in Path(location).parts
        or any(p.is_symlink() for p in [target, *target.parents] if p.is_relative_to(folder) and p != folder)
        or not target.resolve().is_relative_to(folder)
        or not target.is_file()
    ):
        raise _refuse(
            f"external data '{location}' of tensor '{tensor.name}' is not a file inside the model's own folder",
            where,
            field,
            fix,
        )
    info = target.stat()
    if info.st_nlink > 1:
        raise _refuse(
            f"external data '{location}' of tensor '{tensor.name}' is a hardlink (it may alias a file elsewhere)",
            where,
            field,
            "copy the data file so it has a single link",
        )
    try:
        offset = int(entries.get("offset") or 0)
        length = int(entries.get("length") or 0)
    except ValueError:
        raise _refuse(
            f"external data of tensor '{tensor.name}' has a non-integer offset or length", where, field, fix
        ) from None
    if offset < 0 or length < 0 or offset + length > info.st_size:
        raise _refuse(
            f"external data of tensor '{tensor.name}' points past the end of '{location}'",
            where,
            field,
            "re-export the model",
        )


def all_tensors(model: onnx.ModelProto):
    """Every tensor of the model, subgraphs (If/Loop/Scan bodies) and sparse initializers included."""
    yield from _graph_tensors(model.graph)
    for fn in model.functions:
        for node in fn.node:
            yield from _node_tensors(node)


def _graph_tensors(graph: onnx.GraphProto):
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        yield from _node_tensors(node)


def _node_tensors(node: onnx.NodeProto):
    for attr in node.attribute:
        if attr.HasField("t"):
            yield attr.t
        yield from attr.tensors
        if attr.HasField("sparse_tensor"):
            yield attr.sparse_tensor.values
            yield attr.sparse_tensor.indices
        for sparse in attr.sparse_tensors:
            yield sparse.values
            yield sparse.indices
        if attr.HasField("g"):
            yield from _graph_tensors(attr.g)
        for g in attr.graphs:
            yield from _graph_tensors(g)


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


def save_model(
    model: onnx.ModelProto,
    path: Path,
    metadata: dict[str, str] | None = None,
    external_threshold: int = PROTO_LIMIT - 2**20,
) -> Path:
    """Save with sorted metadata and no debug info; small models stay a single file, models over
    2 GiB get `<name>.data` beside them."""
    strip_debug_metadata(model)
    if metadata:
        existing = {p.key: p.value for p in model.metadata_props}
        existing.update(metadata)
        del model.metadata_props[:]
        for key in sorted(existing):
            model.metadata_props.add(key=key, value=existing[key])
    path.parent.mkdir(parents=True, exist_ok=True)
    if model.ByteSize() > external_threshold:
        # Over the protobuf limit: weights go to one data file beside the model, named after it,
        # so the release folder stays self-contained (and `check_onnx_file` accepts it back).
        data = path.with_name(path.name + ".data")
        if data.exists():
            data.unlink()
        onnx.save_model(
            model,
            str(path),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=data.name,
            size_threshold=1024,
        )
    else:
        onnx.save_model(model, str(path))
    return path
