"""Import a `module:callable` or `path/file.py:callable` named in a recipe.

A factory named in a recipe is code the user chose to run; nothing else in a build executes code.
"""

from __future__ import annotations

import contextvars
import hashlib
import importlib
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from exporter.errors import UsageError

# Set only by an explicit `--trust-code` on the command line (or `sources.trusting_code()` from
# Python): code-carrying checkpoints (TorchScript) are otherwise refused. The manifest records it.
TRUST_CODE: contextvars.ContextVar[bool] = contextvars.ContextVar("edgex_trust_code", default=False)


def load_callable(spec: str, base_dir: Path, where: Path, field: str) -> Callable[..., Any]:
    target, _, attr = spec.rpartition(":")
    if target.endswith(".py"):
        file = Path(target)
        file = file if file.is_absolute() else base_dir / file
        if not file.is_file():
            raise UsageError(
                f"Python file '{target}' not found",
                path=where,
                field=field,
                fix="give a path relative to the recipe, e.g. models.py:build",
            )
        name = "edgex_user_" + hashlib.sha256(str(file.resolve()).encode()).hexdigest()[:12]
        module = sys.modules.get(name)
        if module is None:
            module_spec = importlib.util.spec_from_file_location(name, file)
            assert module_spec is not None and module_spec.loader is not None
            module = importlib.util.module_from_spec(module_spec)
            sys.modules[name] = module
            try:
                module_spec.loader.exec_module(module)
            except Exception as exc:
                del sys.modules[name]
                raise UsageError(
                    f"importing '{target}' failed: {type(exc).__name__}: {exc}",
                    path=where,
                    field=field,
                    fix="fix the error in that file",
                ) from None
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as exc:
            raise UsageError(
                f"cannot import module '{target}' ({exc})",
                path=where,
                field=field,
                fix="install it or use path/file.py:callable",
            ) from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise UsageError(
            f"'{attr}' is not a callable in '{target}'",
            path=where,
            field=field,
            fix="name a function defined in that module",
        )
    return fn


def call_user(spec: str, base_dir: Path, where: Path, field: str, what: str, fix: str) -> Any:
    """Import and call a recipe's callable; its exception becomes a one-line error naming the field."""
    fn = load_callable(spec, base_dir, where, field)
    try:
        return fn()
    except Exception as exc:
        raise UsageError(f"the {what} raised {type(exc).__name__}: {exc}", path=where, field=field, fix=fix) from None
