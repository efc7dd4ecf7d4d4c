"""What one cell (recipe x profile) depends on, as bytes: the files behind its cache key.

A key on configuration alone gives wrong hits (Olive #1936: two CLIP models shared an entry),
so every file the recipe reaches is hashed in full: the recipe, the model factory and
checkpoint (or ONNX file and its external data, or the whole Hugging Face folder), data files,
the output of data callables, metric callables and labels, then the profile and target YAMLs
(and the target's operator table), the tool versions and edgex's own code.
"""

from __future__ import annotations

import hashlib
import importlib.util
from functools import cache
from importlib import metadata
from pathlib import Path

import numpy as np

from exporter.callables import call_user
from exporter.digest import sha256_file
from exporter.errors import UsageError
from exporter.profiles import DeviceProfile, profile_dirs
from exporter.recipe import DataSource, LoadedRecipe
from exporter.resources import shipped_dir
from exporter.targets import Target, get_target
from exporter.versions import tool_versions

Input = dict  # {"role": str, "path": str | None, "sha256": str}


def _file(role: str, path: Path, where: Path, field: str) -> Input:
    if not path.is_file():
        raise UsageError(
            f"'{path}' not found", path=where, field=field, fix="give a path relative to the recipe's folder"
        )
    return {"role": role, "path": str(path), "sha256": sha256_file(path)}


def _folder(role: str, folder: Path) -> Input:
    """Every file of a folder, names and bytes, as one digest (a Hugging Face model folder)."""
    h = hashlib.sha256()
    for p in sorted(q for q in folder.rglob("*") if q.is_file()):
        h.update(p.relative_to(folder).as_posix().encode() + b"\0")
        h.update(bytes.fromhex(sha256_file(p)))
    return {"role": role, "path": str(folder), "sha256": h.hexdigest()}


def _callable_file(spec: str, loaded: LoadedRecipe, field: str) -> Input:
    """The source file of `file.py:fn` (relative to the recipe) or of `module:fn` (found, not imported)."""
    target = spec.rpartition(":")[0]
    if target.endswith(".py"):
        return _file(field, loaded.resolve(target), loaded.path, field)
    try:
        found = importlib.util.find_spec(target)
    except (ImportError, ValueError):
        found = None
    if found is None or not found.origin or not Path(found.origin).is_file():
        raise UsageError(
            f"cannot find module '{target}'", path=loaded.path, field=field, fix="install it or use path/file.py:fn"
        )
    return _file(field, Path(found.origin), loaded.path, field)


def _value_digest(value: object, h: hashlib._Hash) -> None:
    """Canonical bytes of what a data callable returned (arrays, sentences, dicts, tuples)."""
    if isinstance(value, dict):
        h.update(b"{")
        for k in sorted(value, key=str):
            h.update(str(k).encode() + b"\0")
            _value_digest(value[k], h)
        h.update(b"}")
    elif isinstance(value, str):
        h.update(b"s" + value.encode() + b"\0")
    elif isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
        h.update(b"S" + "\0".join(value).encode() + b"\1")
    elif isinstance(value, tuple | list) and not _numeric_list(value):
        h.update(b"(")
        for v in value:
            _value_digest(v, h)
        h.update(b")")
    else:
        a = np.ascontiguousarray(np.asarray(value))
        h.update(f"a{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())


def _numeric_list(value: list | tuple) -> bool:
    return all(isinstance(v, int | float | bool | np.number) for v in value)


def _data(source: DataSource, loaded: LoadedRecipe, field: str) -> list[Input]:
    if source.npz is not None:
        return [_file(f"{field}.npz", loaded.resolve(source.npz), loaded.path, f"{field}.npz")]
    if source.text is not None:
        return [_file(f"{field}.text", loaded.resolve(source.text), loaded.path, f"{field}.text")]
    if source.callable is not None:
        code = _callable_file(source.callable, loaded, f"{field}.callable")
        value = call_user(
            source.callable,
            loaded.path.parent,
            loaded.path,
            f"{field}.callable",
            "data callable",
            "fix the function so it returns the arrays",
        )
        h = hashlib.sha256()
        _value_digest(value, h)
        return [code, {"role": f"{field}.values", "path": None, "sha256": h.hexdigest()}]
    return []  # a bundled corpus: edgex's own code and version cover it


def _onnx_files(path: Path, loaded: LoadedRecipe) -> list[Input]:
    """The ONNX file and every external-data file it names (confined to its folder when loaded)."""
    import onnx

    out = [_file("model.path", path, loaded.path, "model.path")]
    model = onnx.load(str(path), load_external_data=False)
    names = sorted(
        {
            e.value
            for t in model.graph.initializer
            if t.data_location == onnx.TensorProto.EXTERNAL
            for e in t.external_data
            if e.key == "location"
        }
    )
    out += [_file("model.external_data", path.parent / n, loaded.path, "model.path") for n in names]
    return out


def recipe_inputs(loaded: LoadedRecipe) -> list[Input]:
    """Every file (or produced value) the recipe reaches, in a fixed order."""
    r = loaded.recipe
    found = [{"role": "recipe", "path": str(loaded.path), "sha256": loaded.sha256}]
    m = r.model
    if m.source == "torch":
        found.append(_callable_file(m.factory, loaded, "model.factory"))
        if m.checkpoint:
            found.append(_file("model.checkpoint", loaded.resolve(m.checkpoint), loaded.path, "model.checkpoint"))
    elif m.source == "onnx":
        from exporter.sources import onnx_file  # the file the build itself will load

        if m.file_from:
            found.append(_callable_file(m.file_from, loaded, "model.file_from"))
        found += _onnx_files(onnx_file(m, loaded), loaded)
    else:
        from exporter.hf.source import resolve_folder  # the folder the build itself will load

        if m.folder_from:
            found.append(_callable_file(m.folder_from, loaded, "model.folder_from"))
        folder = resolve_folder(m, loaded)
        found.append(_folder("model.folder", folder))
    found += _data(r.data.calibration, loaded, "data.calibration")
    found += _data(r.data.evaluation, loaded, "data.evaluation")
    for i, step in enumerate(r.compress):
        if step.distill is not None and step.distill.data is not None:
            found += _data(step.distill.data, loaded, f"compress[{i}].distill.data")
    if not isinstance(r.metric, str):
        found.append(_callable_file(r.metric.callable, loaded, "metric.callable"))
    if r.labels_file:
        found.append(_file("labels_file", loaded.resolve(r.labels_file), loaded.path, "labels_file"))
    return found


def profile_file(profile_id: str, extra: list[Path] | tuple[Path, ...]) -> Path:
    """The YAML a profile id resolves to: the last folder holding it wins, as in profiles.all_profiles."""
    hits = [d / f"{profile_id}.yaml" for d in profile_dirs(extra) if (d / f"{profile_id}.yaml").is_file()]
    return hits[-1]


def profile_inputs(profile: DeviceProfile, extra: list[Path] | tuple[Path, ...]) -> tuple[Target, list[Input]]:
    target = get_target(profile.target)
    found = [_file("profile", profile_file(profile.id, extra), Path(profile.id), "profile")]
    found.append(_file("target", shipped_dir("targets") / f"{target.id}.yaml", Path(target.id), "target"))
    table = target.op_support.table
    if table and not table.startswith("onnxruntime:"):  # onnxruntime's own tables: its version covers them
        found.append(_file("target.op_table", shipped_dir("targets") / table, Path(target.id), "op_support.table"))
    return target, found


@cache
def edgex_code_digest() -> str:
    """edgex's own source: a code change invalidates every cell, whatever the version string says."""
    root = Path(__file__).resolve().parent.parent
    h = hashlib.sha256()
    for p in sorted(root.rglob("*.py")):
        h.update(p.relative_to(root).as_posix().encode() + b"\0" + bytes.fromhex(sha256_file(p)))
    return h.hexdigest()


def toolchain() -> dict[str, str]:
    versions = dict(tool_versions())
    try:
        versions["torch-pruning"] = metadata.version("torch-pruning")
    except metadata.PackageNotFoundError:
        versions["torch-pruning"] = "not installed"
    versions["edgex-code"] = edgex_code_digest()
    return versions
