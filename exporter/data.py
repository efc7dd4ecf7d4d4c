"""Calibration and evaluation data: loaded from an .npz or a callable, then validated.

Bad data is caught here, before any export or calibration, with the file and array named:
a NaN in a calibration set otherwise surfaces much later as a meaningless quantization scale.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from exporter.callables import load_callable
from exporter.errors import UsageError
from exporter.recipe import DataSource, InputSpec, LoadedRecipe


@dataclass(frozen=True)
class Dataset:
    """Arrays named after the model inputs, first axis = samples; labels optional."""

    inputs: dict[str, np.ndarray]
    labels: np.ndarray | None
    digest: str

    def __len__(self) -> int:
        return len(next(iter(self.inputs.values())))

    def take(self, n: int, seed: int) -> Dataset:
        """A seeded subset, the same for the same seed, in the original order."""
        if n >= len(self):
            return self
        idx = np.sort(np.random.default_rng(seed).choice(len(self), size=n, replace=False))
        inputs = {k: v[idx] for k, v in self.inputs.items()}
        labels = None if self.labels is None else self.labels[idx]
        return make_dataset(inputs, labels)


def _digest(inputs: dict[str, np.ndarray], labels: np.ndarray | None) -> str:
    h = hashlib.sha256()
    for name in sorted(inputs):
        arr = np.ascontiguousarray(inputs[name])
        h.update(f"{name}|{arr.dtype.str}|{arr.shape}".encode())
        h.update(arr.tobytes())
    if labels is not None:
        h.update(np.ascontiguousarray(labels).tobytes())
    return h.hexdigest()


def make_dataset(inputs: dict[str, np.ndarray], labels: np.ndarray | None) -> Dataset:
    return Dataset(inputs=inputs, labels=labels, digest=_digest(inputs, labels))


def _read_npz(path: Path, where: Path, field: str) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise UsageError(f"data file '{path}' not found", path=where, field=field, fix="check the path")
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except ValueError as exc:
        raise UsageError(
            f"'{path.name}' holds pickled objects ({exc})",
            path=where,
            field=field,
            fix="save plain numeric arrays with numpy.savez",
        ) from None
    except Exception as exc:  # zipfile.BadZipFile, OSError, EOFError...
        raise UsageError(
            f"'{path.name}' is not a readable .npz ({type(exc).__name__})",
            path=where,
            field=field,
            fix="save arrays with numpy.savez",
        ) from None


def load_dataset(source: DataSource, specs: list[InputSpec], loaded: LoadedRecipe, field: str) -> Dataset:
    where = loaded.path
    if source.npz is not None:
        arrays = _read_npz(loaded.resolve(source.npz), where, f"{field}.npz")
    else:
        fn = load_callable(source.callable or "", loaded.path.parent, where, f"{field}.callable")
        try:
            result = fn()
        except Exception as exc:
            raise UsageError(
                f"the data callable raised {type(exc).__name__}: {exc}",
                path=where,
                field=f"{field}.callable",
                fix="fix the function so it returns the arrays",
            ) from None
        if isinstance(result, tuple) and len(result) == 2:
            arrays = dict(result[0])
            arrays["labels"] = result[1]
        elif isinstance(result, dict):
            arrays = dict(result)
        else:
            raise UsageError(
                "the data callable must return a dict of arrays or (dict, labels)",
                path=where,
                field=f"{field}.callable",
                fix="return {input_name: array, 'labels': array}",
            )
    labels = arrays.pop("labels", None)
    inputs = validate_arrays(arrays, specs, where, field)
    n = len(next(iter(inputs.values())))
    if labels is not None:
        labels = np.asarray(labels)
        if labels.shape[:1] != (n,):
            raise UsageError(
                f"'labels' has {labels.shape[:1]} samples but the inputs have {n}",
                path=where,
                field=field,
                fix="give one label per sample",
            )
    dataset = make_dataset(inputs, labels)
    if source.limit is not None and source.limit < len(dataset):
        dataset = make_dataset(
            {k: v[: source.limit] for k, v in inputs.items()}, None if labels is None else labels[: source.limit]
        )
    return dataset


def validate_arrays(
    arrays: dict[str, object], specs: list[InputSpec], where: Path | str, field: str
) -> dict[str, np.ndarray]:
    """Names, per-sample shapes, dtypes and finiteness checked against the input spec."""
    expected = {s.name for s in specs}
    missing = sorted(expected - set(arrays))
    extra = sorted(set(arrays) - expected)
    if missing or extra:
        raise UsageError(
            f"arrays {sorted(arrays)} do not match the model inputs {sorted(expected)}",
            path=where,
            field=field,
            fix=f"name arrays after the inputs (missing {missing}, unexpected {extra})",
        )
    out: dict[str, np.ndarray] = {}
    count = None
    for spec in specs:
        arr = np.asarray(arrays[spec.name])
        if arr.dtype != np.dtype(spec.dtype):
            if np.can_cast(arr.dtype, spec.dtype, casting="same_kind"):
                arr = arr.astype(spec.dtype)
            else:
                raise UsageError(
                    f"array '{spec.name}' is {arr.dtype}, the input is {spec.dtype}",
                    path=where,
                    field=field,
                    fix=f"convert it to {spec.dtype}",
                )
        sample_shape = list(spec.shape[1:])
        got = list(arr.shape[1:])
        fixed = [i for i in range(len(sample_shape)) if (i + 1) not in spec.dynamic_axes]
        if arr.ndim != len(spec.shape) or any(got[i] != sample_shape[i] for i in fixed):
            raise UsageError(
                f"array '{spec.name}' has shape {list(arr.shape)}, expected [N, {', '.join(map(str, sample_shape))}]",
                path=where,
                field=field,
                fix="first axis = samples, then the input's own shape",
            )
        if arr.shape[0] == 0:
            raise UsageError(
                f"array '{spec.name}' has no samples", path=where, field=field, fix="give at least one sample"
            )
        if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
            bad = int((~np.isfinite(arr)).sum())
            raise UsageError(
                f"array '{spec.name}' contains {bad} NaN/Inf values",
                path=where,
                field=field,
                fix="clean the data; NaN/Inf make quantization scales meaningless",
            )
        if count is not None and arr.shape[0] != count:
            raise UsageError(
                f"array '{spec.name}' has {arr.shape[0]} samples, others {count}",
                path=where,
                field=field,
                fix="give every input the same number of samples",
            )
        count = arr.shape[0]
        out[spec.name] = np.ascontiguousarray(arr)
    return out
