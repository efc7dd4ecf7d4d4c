"""Strict pydantic base and the translation of validation errors into one-line user errors.

Recipes and profiles are written by hand: a typo must be an error that names the file, the
field and a likely fix ("did you mean"), never a silently ignored key.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from exporter.errors import UsageError


class Strict(BaseModel):
    """Frozen, unknown keys forbidden: the schema is the documentation."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


def read_yaml(path: Path, what: str) -> dict[str, Any]:
    """Read a YAML mapping with safe_load only; every failure is a UsageError naming the file."""
    if not path.is_file():
        raise UsageError(f"{what} file not found", path=path, field="(file)", fix="check the path")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark is not None else "YAML"
        raise UsageError(
            f"not valid YAML ({getattr(exc, 'problem', exc)})", path=path, field=where, fix="fix the YAML syntax"
        ) from None
    except UnicodeDecodeError:
        raise UsageError("not a UTF-8 text file", path=path, fix=f"give a YAML {what}") from None
    if not isinstance(data, dict):
        raise UsageError(
            f"a {what} must be a YAML mapping of keys to values",
            path=path,
            field="(top level)",
            fix=f"see `edgex schema {what}`",
        )
    return data


def _allowed_keys(model: type[BaseModel], loc: tuple) -> list[str]:
    """Walk the model along an error location to list the keys allowed at that level."""
    current: Any = model
    for part in loc[:-1]:
        if isinstance(part, int) or current is None:
            continue
        fields = getattr(current, "model_fields", None)
        if not fields or part not in fields:
            current = None
            break
        annotation = fields[part].annotation
        current = _first_model(annotation)
    if current is None or not hasattr(current, "model_fields"):
        return []
    names = []
    for name, info in current.model_fields.items():
        names.append(info.alias or name)
    return names


def _first_model(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _first_model(arg)
        if found is not None:
            return found
    return None


def parse(model: type[BaseModel], data: dict[str, Any], path: Path, what: str) -> Any:
    """Validate data against model; the first error becomes a one-line UsageError."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        # An unknown key is usually a misspelt one, which pydantic also reports as a missing key;
        # the unknown key (with its "did you mean") is the error that tells the user what to fix.
        errors = sorted(exc.errors(), key=lambda e: e["type"] != "extra_forbidden")
        err = errors[0]
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        field = ".".join(str(p) for p in loc) or "(top level)"
        if err["type"] == "extra_forbidden":
            allowed = _allowed_keys(model, loc)
            guess = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
            fix = f"did you mean '{guess[0]}'?" if guess else f"allowed keys: {', '.join(sorted(allowed))}"
            raise UsageError("unknown key", path=path, field=field, fix=fix) from None
        if err["type"] == "missing":
            raise UsageError(
                "required key is missing", path=path, field=field, fix=f"add it (see `edgex schema {what}`)"
            ) from None
        msg = err["msg"]
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        raise UsageError(msg, path=path, field=field, fix=f"see `edgex schema {what}`") from None
