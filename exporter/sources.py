"""Model sources: a registry of small loaders keyed by the recipe's `model.source`.

Weights are data and never execute: safetensors first, `.pt` only with weights_only=True,
anything else refused.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import cache
from os import PathLike
from pathlib import Path
from typing import Any

from exporter.callables import TRUST_CODE, call_user
from exporter.digest import sha256_file
from exporter.errors import UsageError
from exporter.loaded_model import LoadedModel
from exporter.recipe import LoadedRecipe, OnnxSource, TorchSource
from exporter.targets import Target


@contextmanager
def trusting_code(trust: bool = True) -> Iterator[None]:
    """Within this block, TorchScript checkpoints are loaded (their code runs): only for files you trust."""
    token = TRUST_CODE.set(trust)
    try:
        yield
    finally:
        TRUST_CODE.reset(token)


def _load_state_dict(path: Path, where: Path) -> dict[str, Any]:
    import torch

    if not path.is_file():
        raise UsageError(f"checkpoint '{path}' not found", path=where, field="model.checkpoint", fix="check the path")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as exc:
            raise UsageError(
                f"'{path.name}' is not a readable safetensors file ({exc})",
                path=where,
                field="model.checkpoint",
                fix="re-save it with safetensors.torch.save_file",
            ) from None
    if path.suffix in (".pt", ".pth", ".bin"):
        if _is_torchscript(path):
            if not TRUST_CODE.get():
                raise UsageError(
                    f"'{path.name}' is a TorchScript archive: it carries code, which edgex does not run",
                    path=where,
                    field="model.checkpoint",
                    fix="save its state_dict with safetensors.torch.save_file, or pass --trust-code if you trust it",
                )
            return _torchscript_state(path, where)
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise UsageError(
                f"'{path.name}' cannot be loaded safely ({type(exc).__name__}); it may carry code",
                path=where,
                field="model.checkpoint",
                fix="convert it to .safetensors from a trusted environment",
            ) from None
        if not isinstance(state, dict):
            raise UsageError(
                f"'{path.name}' does not hold a state_dict",
                path=where,
                field="model.checkpoint",
                fix="save model.state_dict(), preferably as .safetensors",
            )
        return state
    raise UsageError(
        f"unsupported checkpoint format '{path.suffix}'",
        path=where,
        field="model.checkpoint",
        fix="use .safetensors (or a .pt state_dict)",
    )


def _torchscript_state(path: Path, where: Path) -> dict[str, Any]:
    """--trust-code: the archive is loaded with torch.jit.load (its code runs) and only its weights are kept."""
    import torch

    from exporter import log

    log.info(f"loading TorchScript '{path.name}' because --trust-code was given: its code runs")
    try:
        return dict(torch.jit.load(str(path), map_location="cpu").state_dict())
    except Exception as exc:
        raise UsageError(
            f"'{path.name}' is not a loadable TorchScript archive ({type(exc).__name__})",
            path=where,
            field="model.checkpoint",
            fix="re-save it with torch.jit.save, or as .safetensors",
        ) from None


def _is_torchscript(path: Path) -> bool:
    """TorchScript zips hold a `code/` folder; torch.load would hand them to torch.jit.load."""
    import zipfile

    if not zipfile.is_zipfile(path):
        return False
    try:
        with zipfile.ZipFile(path) as zf:
            return any("/code/" in n or n.startswith("code/") or n.endswith("constants.pkl") for n in zf.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def load_torch(spec: TorchSource, loaded: LoadedRecipe, targets: Sequence[Target] = ()) -> LoadedModel:
    module = call_user(
        spec.factory,
        loaded.path.parent,
        loaded.path,
        "model.factory",
        "factory",
        "fix the factory so it returns the model",
    )
    import torch

    if not isinstance(module, torch.nn.Module):
        raise UsageError(
            f"factory returned {type(module).__name__}, not a torch.nn.Module",
            path=loaded.path,
            field="model.factory",
            fix="return the model instance",
        )
    digest = None
    if spec.checkpoint:
        ckpt = loaded.resolve(spec.checkpoint)
        state = _load_state_dict(ckpt, loaded.path)
        try:
            result = module.load_state_dict(state, strict=False)
        except RuntimeError as exc:
            detail = " ".join(str(exc).split())[:240]
            raise UsageError(
                f"checkpoint does not fit the model ({detail})",
                path=loaded.path,
                field="model.checkpoint",
                fix="use the checkpoint saved from this architecture",
            ) from None
        if result.missing_keys or result.unexpected_keys:
            raise UsageError(
                f"checkpoint does not fit the model (missing {result.missing_keys[:3]}, unexpected "
                f"{result.unexpected_keys[:3]})",
                path=loaded.path,
                field="model.checkpoint",
                fix="use the checkpoint saved from this architecture",
            )
        digest = sha256_file(ckpt)
    from exporter.numerics import check_state

    check_state(module.state_dict(), loaded.path, "model.checkpoint" if spec.checkpoint else "model.factory")
    module.eval()
    return LoadedModel(kind="torch", module=module, weights_sha256=digest)


def onnx_file(spec: OnnxSource, loaded: LoadedRecipe) -> Path:
    """`path:` relative to the recipe, or `file_from:` a callable that returns the file (a model a
    package ships, e.g. a wheel's data folder, which a recipe cannot name portably)."""
    if spec.path is not None:
        return loaded.resolve(spec.path)
    from exporter.callables import call_user

    found = call_user(
        spec.file_from, loaded.path.parent, loaded.path, "model.file_from", "model file callable", "fix the callable"
    )
    if not isinstance(found, (str, PathLike)) or not Path(found).is_file():
        raise UsageError(
            f"{spec.file_from} returned {found!r}, not an existing .onnx file",
            path=loaded.path,
            field="model.file_from",
            fix="return the path of the model file",
        )
    return Path(found)


def load_onnx(spec: OnnxSource, loaded: LoadedRecipe, targets: Sequence[Target] = ()) -> LoadedModel:
    """A given ONNX file, checked, run once in the sandbox, then ingested for the build's targets
    (opset converted, Constant weights promoted: `exporter.ingest`); the ingested graph is written
    to a per-process folder and is what the build exports and takes its FP32 reference from."""
    from exporter.onnx_io import check_onnx_file

    path = onnx_file(spec, loaded)
    model = check_onnx_file(path, where=loaded.path, field="model.path")
    initializers = {i.name for i in model.graph.initializer}
    graph_inputs = [i.name for i in model.graph.input if i.name not in initializers]
    declared = [s.name for s in loaded.recipe.inputs]
    if sorted(graph_inputs) != sorted(declared):
        raise UsageError(
            f"the recipe declares inputs {declared} but the model's inputs are {graph_inputs}",
            path=loaded.path,
            field="inputs",
            fix="name the recipe's inputs after the model's",
        )
    from exporter.numerics import check_initializers
    from exporter.sandbox_jobs import probe

    check_initializers(model, loaded.path, "model.path")
    # Not built here: it must load and run once in the limited child before any session in this process.
    # Constants and initial states fed as declared: a random `sr` would take a branch the model never runs.
    from exporter.feeding import fixed_values

    probe(
        path,
        field="model.path",
        shapes={s.name: list(s.shape) for s in loaded.recipe.inputs},
        shapes_field="inputs",
        values=fixed_values(list(loaded.recipe.inputs)),
    )
    digest = sha256_file(path)
    if not targets:
        return LoadedModel(kind="onnx", onnx_path=path, weights_sha256=digest)
    from exporter.ingest import ingest
    from exporter.recipe_inputs import constant_array

    shapes = {s.name: list(s.shape) for s in loaded.recipe.inputs}
    constants = {s.name: constant_array(s) for s in loaded.recipe.inputs if s.kind == "constant"}
    seed = loaded.recipe.seed
    ingested, record = ingest(
        path, targets, shapes, constants=constants, seed=seed, where=path, field_name="model.path"
    )
    if not record.changed:
        return LoadedModel(kind="onnx", onnx_path=path, weights_sha256=digest, ingest=record.as_dict())
    from exporter import log
    from exporter.onnx_io import save_model

    log.info(f"[{loaded.recipe.name}] ingest {path.name}: {record.summary()}")
    check_initializers(ingested, loaded.path, "model.path")  # promoted Constant weights are weights too
    out = _ingest_folder() / f"{digest[:16]}-op{record.opset_to}.onnx"
    save_model(ingested, out)
    return LoadedModel(
        kind="onnx",
        onnx_path=out,
        weights_sha256=digest,
        ingest={**record.as_dict(), "source": str(path), "summary": record.summary()},
    )


@cache
def _ingest_folder() -> Path:
    """One folder per process for ingested graphs, removed at exit (a build stages its outputs elsewhere)."""
    import atexit
    import shutil
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="edgex-ingest-"))
    atexit.register(shutil.rmtree, folder, True)
    return folder


def load_hf(spec: Any, loaded: LoadedRecipe, targets: Sequence[Target] = ()) -> LoadedModel:
    try:
        from exporter.hf.source import load_hf as _load
    except ImportError as exc:
        raise UsageError(
            f"Hugging Face support is not installed ({exc.name} missing)",
            path=loaded.path,
            field="model.source",
            fix="pip install 'edgex[hf]'",
        ) from None
    return _load(spec, loaded)


SOURCES: dict[str, Callable[..., LoadedModel]] = {"torch": load_torch, "onnx": load_onnx, "hf": load_hf}


def load_model(loaded: LoadedRecipe, targets: Sequence[Target] = ()) -> LoadedModel:
    """targets: the build's (one per chosen profile); a given ONNX file is ingested for them."""
    spec = loaded.recipe.model
    return SOURCES[spec.source](spec, loaded, targets)
