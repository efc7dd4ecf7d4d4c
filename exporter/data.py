"""Calibration and evaluation data: loaded from an .npz or a callable, then validated.

Bad data is caught here, before any export or calibration, with the file and array named:
a NaN in a calibration set otherwise surfaces much later as a meaningless quantization scale.

The data hold arrays for the data inputs only; state and constant inputs are filled by edgex
(`exporter.feeding`). For a model with state, each array is a sequence of chunks: shaped
[chunks, *input shape without the batch] (one sequence) or [sequences, chunks, *...] (equal
lengths); the dataset keeps them as samples in sequence order, `feeding.steps` chunks each.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from exporter.callables import call_user
from exporter.errors import UsageError
from exporter.feeding import Feeding, data_specs, feeding_of
from exporter.recipe import DataSource, InputSpec, LoadedRecipe


@dataclass(frozen=True)
class Dataset:
    """Arrays named after the model inputs, first axis = samples; labels optional.

    `feeding` (models with state or constant inputs): how samples become feeds. Once the state
    columns are filled (`with_states`, the FP32 model's carried states), every sample is a
    self-contained query and any subset of samples can be fed; until then only whole sequences."""

    inputs: dict[str, np.ndarray]
    labels: np.ndarray | None
    digest: str
    feeding: Feeding | None = None

    def __len__(self) -> int:
        return len(next(iter(self.inputs.values())))

    @property
    def filled(self) -> bool:
        """Every state input has its per-sample values (so samples need not run in sequence)."""
        return self.feeding is None or all(s.input in self.inputs for s in self.feeding.states)

    def with_states(self, states: dict[str, np.ndarray]) -> Dataset:
        """The same data with each state input's values per sample; the digest stays the data's."""
        return replace(self, inputs={**self.inputs, **states})

    def subset(self, idx: np.ndarray) -> Dataset:
        """These samples, in this order: no longer sequences, so states must be filled first."""
        if not self.filled:
            raise ValueError("a subset of chunks needs the state of each chunk; fill the states first")
        feeding = None if self.feeding is None else replace(self.feeding, steps=1)
        labels = None if self.labels is None else self.labels[idx]
        return replace(make_dataset({k: v[idx] for k, v in self.inputs.items()}, labels), feeding=feeding)

    def sequences(self, idx: np.ndarray) -> Dataset:
        """Whole sequences `idx` (each `feeding.steps` samples), still in chunk order."""
        steps = self.feeding.steps if self.feeding is not None else 1
        rows = (np.asarray(idx)[:, None] * steps + np.arange(steps)).reshape(-1)
        labels = None if self.labels is None else self.labels[rows]
        return replace(make_dataset({k: v[rows] for k, v in self.inputs.items()}, labels), feeding=self.feeding)

    def take(self, n: int, seed: int) -> Dataset:
        """A seeded subset, the same for the same seed, in the original order."""
        if n >= len(self):
            return self
        idx = np.sort(np.random.default_rng(seed).choice(len(self), size=n, replace=False))
        if self.feeding is None:
            return make_dataset(
                {k: v[idx] for k, v in self.inputs.items()}, None if self.labels is None else self.labels[idx]
            )
        return self.subset(idx)

    def feeds(self, batch: int, limit: int | None = None) -> list[dict[str, np.ndarray]]:
        """Whole queries in the model's own batch and shapes (a ragged tail is dropped), at most
        `limit`: what calibration reads. States come from the samples (filled first)."""
        if self.feeding is not None and not self.filled:
            raise ValueError("feeds of a model with state need the state of each chunk; fill the states first")
        batch = min(batch, self.feeding.max_batch() or batch) if self.feeding is not None else batch
        starts = list(range(0, len(self) - batch + 1, batch))[:limit]
        return [self.feed(i, i + batch) for i in starts]

    def feed(self, start: int, stop: int) -> dict[str, np.ndarray]:
        """Samples start..stop as one feed (constants added, states in their own layout)."""
        part = {k: v[start:stop] for k, v in self.inputs.items()}
        return part if self.feeding is None else self.feeding.feed(part)


def feed_digest(inputs: dict[str, np.ndarray], labels: np.ndarray | None) -> str:
    h = hashlib.sha256()
    for name in sorted(inputs):
        arr = np.ascontiguousarray(inputs[name])
        h.update(f"{name}|{arr.dtype.str}|{arr.shape}".encode())
        h.update(arr.tobytes())
    if labels is not None and labels.dtype == object:  # strings: their text, never the object pointers
        h.update("\x1f".join(map(str, labels.ravel())).encode())
    elif labels is not None:
        h.update(np.ascontiguousarray(labels).tobytes())
    return h.hexdigest()


def make_dataset(inputs: dict[str, np.ndarray], labels: np.ndarray | None) -> Dataset:
    return Dataset(inputs=inputs, labels=labels, digest=feed_digest(inputs, labels))


NPZ_MAX_MEMBERS = 1024
NPZ_MAX_BYTES = 8 * 2**30  # uncompressed; an .npz is a zip and a zip can be a bomb


def _check_npz_archive(path: Path, where: Path, field: str) -> None:
    """Member count and uncompressed sizes (as the zip declares them, and as each .npy header
    declares its array) capped before numpy allocates anything."""
    import zipfile

    if not zipfile.is_zipfile(path):
        return  # a bare .npy or garbage: np.load says which
    fix = "save fewer or smaller arrays with numpy.savez"
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
            if len(infos) > NPZ_MAX_MEMBERS:
                raise UsageError(f"'{path.name}' holds {len(infos)} arrays", path=where, field=field, fix=fix)
            total = sum(i.file_size for i in infos)
            for info in infos:
                with zf.open(info) as member:
                    version = np.lib.format.read_magic(member)
                    read = (
                        np.lib.format.read_array_header_1_0
                        if version == (1, 0)
                        else np.lib.format.read_array_header_2_0
                    )
                    shape, _, dtype = read(member)
                    declared = int(np.prod(shape, dtype=object)) * dtype.itemsize
                    if declared > info.file_size:
                        raise UsageError(
                            f"array '{info.filename}' declares {declared} bytes but holds {info.file_size}",
                            path=where,
                            field=field,
                            fix="re-save the data; the file is corrupt or hostile",
                        )
    except UsageError:
        raise
    except Exception as exc:
        raise _unreadable(path, exc, where, field) from None
    if total > NPZ_MAX_BYTES:
        raise UsageError(
            f"'{path.name}' expands to {total / 2**30:.1f} GiB (limit {NPZ_MAX_BYTES // 2**30} GiB)",
            path=where,
            field=field,
            fix=fix,
        )


def _read_npz(path: Path, where: Path, field: str) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise UsageError(f"data file '{path}' not found", path=where, field=field, fix="check the path")
    _check_npz_archive(path, where, field)
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
        raise _unreadable(path, exc, where, field) from None


def _unreadable(path: Path, exc: Exception, where: Path, field: str) -> UsageError:
    return UsageError(
        f"'{path.name}' is not a readable .npz ({type(exc).__name__})",
        path=where,
        field=field,
        fix="save arrays with numpy.savez",
    )


def _sentences(source: DataSource, loaded: LoadedRecipe, field: str) -> list[str] | None:
    """The sentences of a text source (file or bundled corpus); None for array sources."""
    if source.text is not None:
        from exporter.hf.text import read_lines

        return read_lines(loaded.resolve(source.text), loaded.path, f"{field}.text")
    if source.corpus == "stdlib-docstrings":
        from exporter.hf.text import stdlib_docstrings

        return list(stdlib_docstrings())
    if source.corpus is not None:
        from exporter.hf.text import corpus

        return list(corpus()[source.split or "evaluation"])
    return None


def _is_sentences(value: object) -> bool:
    return isinstance(value, (list, tuple)) and bool(value) and all(isinstance(x, str) for x in value)


def _call(source: DataSource, loaded: LoadedRecipe, field: str) -> object:
    return call_user(
        source.callable or "",
        loaded.path.parent,
        loaded.path,
        f"{field}.callable",
        "data callable",
        "fix the function so it returns the arrays",
    )


def load_dataset(
    source: DataSource, specs: list[InputSpec], loaded: LoadedRecipe, field: str, tokenizer: object | None = None
) -> Dataset:
    """Arrays from an .npz or a callable, or sentences (file, corpus, callable) tokenized for the model.

    Arrays are expected for the data inputs only (`specs` may include state and constant inputs)."""
    where = loaded.path
    feeding = feeding_of(specs)
    specs = data_specs(specs)
    sentences = _sentences(source, loaded, field)
    arrays: dict[str, object] = {}
    if source.npz is not None:
        arrays = _read_npz(loaded.resolve(source.npz), where, f"{field}.npz")
    elif source.images is not None or source.audio is not None:
        from exporter.media_data import read_audio, read_images

        read = read_images if source.images is not None else read_audio
        folder = loaded.resolve(source.images or source.audio or "")
        labels_path = loaded.resolve(source.labels) if source.labels is not None else None
        arrays = dict(read(source, folder, labels_path, specs, where, field))
        if source.audio is not None and (feeding is None or not feeding.carried):  # no state: chunks are samples
            arrays = {k: v.reshape(-1, *v.shape[2:]) for k, v in arrays.items()}
    elif sentences is None:
        result = _call(source, loaded, field)
        labels_given = None
        if isinstance(result, tuple) and len(result) == 2 and _is_sentences(result[0]):
            result, labels_given = result  # (sentences, labels)
        if _is_sentences(result):
            sentences = list(result)
            arrays = {} if labels_given is None else {"labels": labels_given}
        elif isinstance(result, tuple) and len(result) == 2:
            arrays = dict(result[0])
            arrays["labels"] = result[1]
        elif isinstance(result, dict):
            arrays = dict(result)
        else:
            raise UsageError(
                "the data callable must return a dict of arrays, (dict, labels) or a list of sentences",
                path=where,
                field=f"{field}.callable",
                fix="return {input_name: array, 'labels': array}, ['a sentence', ...] or (sentences, labels)",
            )
    if sentences is not None:
        if tokenizer is None:
            raise UsageError(
                "text data needs a model with a tokenizer", path=where, field=field, fix="use an hf model or array data"
            )
        if source.limit is not None:
            sentences = sentences[: source.limit]
        from exporter.hf.text import tokenize

        labels_kept = arrays.get("labels")
        arrays = tokenize(tokenizer, sentences, specs)
        if labels_kept is not None:
            arrays["labels"] = np.asarray(labels_kept)[: len(sentences)]
    labels = arrays.pop("labels", None)
    if feeding is not None and feeding.carried:
        if source.limit is not None:
            arrays = {k: np.asarray(v)[: source.limit] for k, v in arrays.items()}
            labels = None if labels is None else np.asarray(labels)[: source.limit]
        arrays, labels, steps = _flatten_sequences(arrays, labels, specs, where, field)
        feeding = replace(feeding, steps=steps)
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
    if source.limit is not None and source.limit < len(dataset) and (feeding is None or not feeding.carried):
        dataset = make_dataset(
            {k: v[: source.limit] for k, v in inputs.items()}, None if labels is None else labels[: source.limit]
        )
    return dataset if feeding is None else replace(dataset, feeding=feeding)


def _flatten_sequences(
    arrays: dict[str, object], labels: object, specs: list[InputSpec], where: Path | str, field: str
) -> tuple[dict[str, object], np.ndarray | None, int]:
    """[sequences, chunks, ...] or [chunks, ...] arrays -> samples in sequence order, and chunks per sequence."""
    flat: dict[str, object] = dict(arrays)
    seen: tuple[int, int] | None = None
    for spec in specs:
        if spec.name not in arrays:
            continue  # validate_arrays names the missing array
        arr = np.asarray(arrays[spec.name])
        rank = len(spec.shape)  # [chunks, *shape[1:]] has the input's rank
        if arr.ndim == rank + 1:
            count = (arr.shape[0], arr.shape[1])
        elif arr.ndim == rank:
            count = (1, arr.shape[0])
        else:
            sample = ", ".join(map(str, spec.shape[1:]))
            raise UsageError(
                f"array '{spec.name}' has shape {list(arr.shape)}; a model with state reads sequences of chunks",
                path=where,
                field=field,
                fix=f"give [chunks, {sample}] (one sequence) or [sequences, chunks, {sample}]",
            )
        if seen is not None and count != seen:
            raise UsageError(
                f"array '{spec.name}' holds {count[0]} sequences of {count[1]} chunks, another input {seen[0]} of {seen[1]}",
                path=where,
                field=field,
                fix="give every data input the same sequences and chunks",
            )
        seen = count
        flat[spec.name] = arr.reshape(count[0] * count[1], *arr.shape[arr.ndim - rank + 1 :])
    if seen is None:
        return flat, None if labels is None else np.asarray(labels), 1
    if labels is not None:
        labels = np.asarray(labels)
        if labels.ndim >= 2 and labels.shape[:2] == seen:
            labels = labels.reshape(seen[0] * seen[1], *labels.shape[2:])
    return flat, labels, seen[1]


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
