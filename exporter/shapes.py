"""Input shapes of a model the user gave: parsed from `--shape NAME=1x3x640x640`, resolved against
what the file declares, never guessed.

A fixed dimension in the file must match what the user says; a dynamic one (symbolic, unknown, or
declared -1) takes the user's value; a dynamic one without a value is a usage error naming the
file, the input, the axis and the flag to pass. No dimension is ever set to 1 silently: a batch
axis is dynamic like any other (timing a 1x1 image passed a 50 ms budget for a model that takes
~720 ms at 640x640). Rank-0 inputs (scalars) need no shape.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from exporter.errors import UsageError

if TYPE_CHECKING:  # onnx is imported where a model is read, not when the CLI parses its options
    import onnx

SHAPE_FLAG = "--shape"
SHAPE_HELP = (
    "Shape of an input as NAME=1x3x640x640 (repeatable): fixes its dynamic dimensions (batch included); "
    "required when the model declares any."
)
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,11}$")

Dim = int | str | None  # a fixed size, a symbolic name, or unknown


@dataclass(frozen=True)
class DeclaredInput:
    """One graph input as the file declares it (initializer-backed inputs excluded)."""

    name: str
    dims: tuple[Dim, ...]
    elem_type: int

    def dynamic_axes(self) -> list[int]:
        return [i for i, d in enumerate(self.dims) if not isinstance(d, int)]


def format_shape(dims: Iterable[int]) -> str:
    """[1, 3, 640, 640] -> '1x3x640x640' (a scalar is '' -> shown as 'scalar')."""
    text = "x".join(str(d) for d in dims)
    return text or "scalar"


def describe(shapes: dict[str, list[int]]) -> str:
    """'x=1x3x640x640, y=scalar': how every command prints the shapes it used."""
    return ", ".join(f"{name}={format_shape(dims)}" for name, dims in shapes.items()) or "no inputs"


def parse_shape_options(values: Iterable[str], field: str = SHAPE_FLAG) -> dict[str, list[int]]:
    """`NAME=1x3x640x640` strings (the last '=' splits, so names may contain '=') -> {name: dims}."""
    out: dict[str, list[int]] = {}
    fix = f"write {field} NAME=1x3x640x640 (positive sizes joined by x)"
    for raw in values:
        name, sep, dims_text = raw.rpartition("=")
        if not sep or not name:
            raise UsageError(f"cannot read '{raw}' as NAME=DIMS", field=field, fix=fix)
        if name in out:
            raise UsageError(f"input '{name}' is given twice", field=field, fix="give each input's shape once")
        parts = [p.strip() for p in dims_text.lower().split("x")] if dims_text.strip() else []
        if not all(p.isdigit() and int(p) > 0 for p in parts):
            raise UsageError(f"cannot read '{dims_text}' in '{raw}' as sizes", field=field, fix=fix)
        out[name] = [int(p) for p in parts]
    return out


VALUE_FLAG = "--value"
VALUE_HELP = (
    "NAME=NUMBER: feed this input the number (filling its shape) instead of seeded data — a constant "
    "that picks a branch, such as a sample rate (sr=16000), or a state's initial value. Repeatable."
)


def parse_value_options(values: Iterable[str], field: str = VALUE_FLAG) -> dict[str, int | float]:
    """`NAME=16000` strings -> {name: number}: an integer when written as one, else a float."""
    out: dict[str, int | float] = {}
    for raw in values:
        name, sep, text = raw.rpartition("=")
        try:
            number: int | float = int(text) if text.strip().lstrip("-").isdigit() else float(text)
        except ValueError:
            number = None  # type: ignore[assignment]
        if not sep or not name or number is None:
            raise UsageError(f"cannot read '{raw}' as NAME=NUMBER", field=field, fix=f"write {field} sr=16000")
        if name in out:
            raise UsageError(f"input '{name}' is given twice", field=field, fix="give each input's value once")
        out[name] = number
    return out


def declared_inputs(model: onnx.ModelProto) -> list[DeclaredInput]:
    """The inputs a caller feeds: graph inputs that are not initializers, with their declared dims."""
    inits = {i.name for i in model.graph.initializer}
    found = []
    for inp in model.graph.input:
        if inp.name in inits:
            continue
        t = inp.type.tensor_type
        dims: list[Dim] = []
        for d in t.shape.dim:
            if d.HasField("dim_value") and d.dim_value > 0:
                dims.append(int(d.dim_value))
            elif d.HasField("dim_param") and d.dim_param:
                dims.append(d.dim_param)
            else:
                dims.append(None)
        found.append(DeclaredInput(inp.name, tuple(dims), t.elem_type))
    return found


def _axis_words(dim: Dim) -> str:
    return f"'{dim}'" if isinstance(dim, str) else "unnamed"


def _placeholder(axis: int, dim: Dim, prefix: str) -> str:
    if isinstance(dim, int):
        return str(dim)
    if isinstance(dim, str) and _IDENT.match(dim) and dim.lower() != "x":
        return dim.upper()
    return f"{prefix}{axis}"


def template(inp: DeclaredInput, prefix: str = "D") -> str:
    """`x=D0x3xD2xD3`: the flag's value with each dynamic size left for the user to fill in (a
    symbolic name in capitals, else `prefix` + the axis)."""
    return f"{inp.name}=" + "x".join(_placeholder(i, d, prefix) for i, d in enumerate(inp.dims))


RECORDED_SHAPES = "edgex.input_shapes"  # metadata_props key: the shapes an edgex build judged the file at


def recorded_shapes(model: onnx.ModelProto) -> dict[str, list[int]]:
    """The shapes an edgex build stamped into a file it shipped ({} for any other file)."""
    import json

    for prop in model.metadata_props:
        if prop.key == RECORDED_SHAPES:
            try:
                found = json.loads(prop.value)
            except ValueError:
                return {}
            return {k: v for k, v in found.items() if isinstance(v, list) and all(isinstance(d, int) for d in v)}
    return {}


def _fits(shape: list[int] | None, dims: list) -> bool:
    return (
        shape is not None
        and len(shape) == len(dims)
        and all(not isinstance(d, int) or d == s for d, s in zip(dims, shape, strict=True))
    )


def resolve_shapes(
    model: onnx.ModelProto, given: dict[str, list[int]] | None, path: Path | str, field: str = SHAPE_FLAG
) -> dict[str, list[int]]:
    """The concrete shape of every declared input: the file's fixed sizes, the user's for dynamic ones.

    `field` names where shapes come from in messages (the flag, or a recipe's field)."""
    given = dict(given or {})
    inputs = declared_inputs(model)
    names = [i.name for i in inputs]
    unknown = [n for n in given if n not in names]
    if unknown:
        raise UsageError(
            f"the model has no input named '{unknown[0]}'",
            path=path,
            field=field,
            fix=f"its inputs are: {', '.join(names) or 'none'}",
        )
    shapes: dict[str, list[int]] = {}
    missing: list[DeclaredInput] = []
    recorded = recorded_shapes(model)
    for inp in inputs:
        dims = inp.dims
        if inp.name not in given and inp.dynamic_axes() and _fits(recorded.get(inp.name), dims):
            shapes[inp.name] = list(recorded[inp.name])  # declared by the edgex build that made the file
        elif inp.name in given:
            want = given[inp.name]
            if len(want) != len(dims):
                raise UsageError(
                    f"input '{inp.name}' has rank {len(dims)} ({format_declared(dims)}), "
                    f"{field} gives {len(want)} sizes ({format_shape(want)})",
                    path=path,
                    field=field,
                    fix=f"give {len(dims)} sizes, e.g. {field} {template(inp)}",
                )
            for axis, (d, w) in enumerate(zip(dims, want, strict=True)):
                if isinstance(d, int) and d != w:
                    raise UsageError(
                        f"input '{inp.name}' axis {axis} is fixed at {d} in the model, {field} gives {w}",
                        path=path,
                        field=field,
                        fix=f"give {d} there ({template(inp)})",
                    )
            shapes[inp.name] = list(want)
        elif inp.dynamic_axes():
            missing.append(inp)
        else:
            shapes[inp.name] = [int(d) for d in dims]  # fully fixed (or a scalar): the file says it all
    if missing:
        first = missing[0]
        axes = first.dynamic_axes()
        axis = axes[0]
        rest = axes[1:]
        also = f" (so {'is axis' if len(rest) == 1 else 'are axes'} {', '.join(map(str, rest))})" if rest else ""
        more = [repr(m.name) for m in missing[1:]]
        others = f"; {'input' if len(more) == 1 else 'inputs'} {', '.join(more)} too" if more else ""
        # One input: D + axis; several: A0, B1... so unnamed sizes of different inputs do not look alike.
        prefixes = (
            ["D"] if len(missing) == 1 else [chr(ord("A") + k) if k < 26 else f"I{k}_" for k in range(len(missing))]
        )
        values = [template(m, p) for m, p in zip(missing, prefixes, strict=False)]
        if field == SHAPE_FLAG:
            fix = f"pass {' '.join(f'{field} {v}' for v in values)} with each placeholder the size to use"
        else:
            fix = f"give every size in {field} ({', '.join(values)}, each placeholder the size to use)"
        raise UsageError(
            f"input '{first.name}' axis {axis} ({_axis_words(first.dims[axis])}) is dynamic{also}{others}",
            path=path,
            fix=fix,
        )
    return shapes


def format_declared(dims: Iterable[Dim]) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in dims) + "]"


def fixed_copy(model: onnx.ModelProto, shapes: dict[str, list[int]]) -> onnx.ModelProto:
    """A copy whose inputs declare the given shapes; a symbol tied to one size is replaced by it in
    the declared outputs and intermediate shapes too (as onnxruntime's make_input_shape_fixed does)."""
    fixed = type(model)()
    fixed.CopyFrom(model)
    symbols: dict[str, set[int]] = {}
    for inp in fixed.graph.input:
        if inp.name not in shapes:
            continue
        dims = inp.type.tensor_type.shape.dim
        for d, size in zip(dims, shapes[inp.name], strict=False):
            if d.HasField("dim_param") and d.dim_param:
                symbols.setdefault(d.dim_param, set()).add(size)
        inp.type.tensor_type.shape.ClearField("dim")
        for size in shapes[inp.name]:
            inp.type.tensor_type.shape.dim.add().dim_value = size
    known = {s: next(iter(v)) for s, v in symbols.items() if len(v) == 1 and s != "?"}
    for vi in list(fixed.graph.output) + list(fixed.graph.value_info):
        for d in vi.type.tensor_type.shape.dim:
            if d.HasField("dim_param") and d.dim_param in known:
                d.dim_value = known[d.dim_param]
    return fixed
