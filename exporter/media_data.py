"""Data as users have it: a folder of photos or WAV recordings, with the preprocessing the app applies.

Packing calibration images into an .npz by hand is where a deployment's preprocessing silently
drifts from the app's (BGR vs RGB, stretch vs letterbox, a forgotten mean). Here the recipe states
it once (`preprocess:`), the same function prepares calibration and evaluation, and runtime.json
carries it to the app. Ground truth lives in one JSON file beside the data, keyed by file name, and
is mapped through the same geometry: boxes in the photo's pixels become boxes in the input's pixels.
"""

from __future__ import annotations

import json
import wave
from pathlib import Path

import numpy as np

from exporter.errors import UsageError
from exporter.recipe import InputSpec
from exporter.recipe_parts import AudioPreprocess, DataSource, ImagePreprocess

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")


def _files(folder: Path, suffixes: tuple[str, ...], where: Path, field: str) -> list[Path]:
    if not folder.is_dir():
        raise UsageError("folder not found", path=folder, field=field, fix="give a folder beside the recipe")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in suffixes and p.is_file())
    if not files:
        raise UsageError(
            f"no {'/'.join(suffixes)} files in the folder", path=folder, field=field, fix="add files or fix the path"
        )
    return files


def _target(
    pre: ImagePreprocess | AudioPreprocess | None, specs: list[InputSpec], where: Path, field: str
) -> InputSpec:
    name = pre.input if pre is not None else None
    if name is None:
        if len(specs) != 1:
            names = ", ".join(s.name for s in specs)
            raise UsageError(
                f"the model has data inputs {names}", path=where, field=f"{field}.preprocess.input", fix="name one"
            )
        return specs[0]
    found = next((s for s in specs if s.name == name), None)
    if found is None:
        raise UsageError(f"no data input '{name}'", path=where, field=f"{field}.preprocess.input")
    return found


def read_labels(path: Path, where: Path, field: str) -> dict[str, object]:
    """{file name: label} from JSON (never pickle)."""
    try:
        found = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError("labels file not found", path=path, field=f"{field}.labels") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UsageError(f"labels file is not JSON ({exc})", path=path, field=f"{field}.labels") from None
    if not isinstance(found, dict):
        raise UsageError("labels must map file names to labels", path=path, field=f"{field}.labels", fix='{"a.jpg": 3}')
    return found


def prepare_image(path: Path, pre: ImagePreprocess, size: tuple[int, int]) -> tuple[np.ndarray, tuple[float, ...]]:
    """One photo as the model's sample (CHW or HWC float32) and the (scale x, scale y, pad x, pad y) mapping
    the photo's pixels onto the input's."""
    from PIL import Image

    with Image.open(path) as img:
        rgb = img.convert("RGB")
    h, w = size
    if pre.resize == "stretch":
        pixels = np.asarray(rgb.resize((w, h), Image.Resampling.BILINEAR), np.float32)
        geometry = (w / rgb.width, h / rgb.height, 0.0, 0.0)
    else:
        r = min(w / rgb.width, h / rgb.height)
        nw, nh = round(rgb.width * r), round(rgb.height * r)
        left, top = (w - nw) // 2, (h - nh) // 2
        canvas = np.full((h, w, 3), pre.pad_value, np.float32)
        canvas[top : top + nh, left : left + nw] = np.asarray(rgb.resize((nw, nh), Image.Resampling.BILINEAR))
        pixels, geometry = canvas, (r, r, float(left), float(top))
    if pre.channels == "bgr":
        pixels = pixels[..., ::-1]
    x = (pixels * pre.scale - np.asarray(pre.mean, np.float32)) / np.asarray(pre.std, np.float32)
    return (x.transpose(2, 0, 1) if pre.layout == "nchw" else x).astype(np.float32), geometry


def _boxes(rows: object, geometry: tuple[float, ...], name: str, where: Path, field: str) -> np.ndarray:
    arr = np.asarray(rows, np.float32).reshape(-1, 5) if rows else np.zeros((0, 5), np.float32)
    if arr.ndim != 2 or arr.shape[1] != 5:
        raise UsageError(f"boxes of '{name}' are not [[class, x0, y0, x1, y1], ...]", path=where, field=field)
    sx, sy, px, py = geometry
    return np.column_stack(
        [arr[:, 0], arr[:, 1] * sx + px, arr[:, 2] * sy + py, arr[:, 3] * sx + px, arr[:, 4] * sy + py]
    )


def _image_labels(values: list[object], geometries: list, names: list[str], where: Path, field: str) -> np.ndarray:
    """Class indices, strings, or boxes NaN-padded to [N, K, 5] (mapped into the input's pixels)."""
    if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        return np.asarray(values, np.int64)
    if all(isinstance(v, str) for v in values):
        return np.asarray(values, dtype=object)
    if all(isinstance(v, list) for v in values):
        boxes = [_boxes(v, g, n, where, field) for v, g, n in zip(values, geometries, names)]
        out = np.full((len(boxes), max(1, *(len(b) for b in boxes)), 5), np.nan, np.float32)
        for i, b in enumerate(boxes):
            out[i, : len(b)] = b
        return out
    raise UsageError("labels mix kinds", path=where, field=field, fix="one kind for all files: class, string or boxes")


def read_images(
    source: DataSource, folder: Path, labels_path: Path | None, specs: list[InputSpec], where: Path, field: str
) -> dict[str, np.ndarray]:
    pre = source.preprocess if isinstance(source.preprocess, ImagePreprocess) else ImagePreprocess()
    spec = _target(pre, specs, where, field)
    dims = spec.shape[2:4] if pre.layout == "nchw" else spec.shape[1:3]
    size = pre.size or (tuple(dims) if len(dims) == 2 and all(isinstance(d, int) for d in dims) else None)
    if size is None:
        raise UsageError(
            f"input '{spec.name}' has no fixed height and width", path=where, field=f"{field}.preprocess.size",
            fix="give size: [height, width]",
        )  # fmt: skip
    files = _files(folder, IMAGE_SUFFIXES, where, f"{field}.images")[: source.limit]
    samples, geometries = [], []
    for path in files:
        try:
            x, geometry = prepare_image(path, pre, size)
        except OSError as exc:
            raise UsageError(f"unreadable image ({exc})", path=path, field=f"{field}.images") from None
        samples.append(x)
        geometries.append(geometry)
    arrays: dict[str, np.ndarray] = {spec.name: np.stack(samples)}
    if labels_path is not None:
        table = read_labels(labels_path, where, field)
        missing = [p.name for p in files if p.name not in table]
        if missing:
            raise UsageError(
                f"no label for {len(missing)} file(s), e.g. {missing[0]}", path=labels_path, field=f"{field}.labels"
            )
        names = [p.name for p in files]
        arrays["labels"] = _image_labels([table[n] for n in names], geometries, names, labels_path, f"{field}.labels")
    return arrays


def _read_wav(path: Path, rate: int, field: str) -> np.ndarray:
    """Mono float32 in [-1, 1] at `rate` (PCM 8/16/32-bit; other rates resampled with a polyphase filter)."""
    try:
        with wave.open(str(path), "rb") as w:
            width, channels, file_rate = w.getsampwidth(), w.getnchannels(), w.getframerate()
            raw = w.readframes(w.getnframes())
    except (OSError, EOFError, wave.Error) as exc:
        raise UsageError(f"unreadable WAV ({exc})", path=path, field=field, fix="PCM WAV files only") from None
    kinds = {1: (np.uint8, 128.0, 128.0), 2: (np.int16, 0.0, 32768.0), 4: (np.int32, 0.0, 2147483648.0)}
    if width not in kinds:
        raise UsageError(f"{8 * width}-bit samples", path=path, field=field, fix="use 8, 16 or 32-bit PCM")
    dtype, offset, full = kinds[width]
    x = (np.frombuffer(raw, dtype).astype(np.float64) - offset) / full
    x = x.reshape(-1, channels).mean(axis=1)
    if file_rate != rate:
        from math import gcd

        from scipy.signal import resample_poly

        g = gcd(rate, file_rate)
        x = resample_poly(x, rate // g, file_rate // g)
    return x.astype(np.float32)


def read_audio(
    source: DataSource, folder: Path, labels_path: Path | None, specs: list[InputSpec], where: Path, field: str
) -> dict[str, np.ndarray]:
    """[files, chunks, *sample] arrays (each file one sequence of chunks) and [files, chunks] speech labels
    (1 when over half the chunk lies inside a labelled segment)."""
    pre = source.preprocess
    assert isinstance(pre, AudioPreprocess)  # the recipe's validator guarantees it
    spec = _target(pre, specs, where, field)
    files = _files(folder, (".wav",), where, f"{field}.audio")[: source.limit]
    signals = [_read_wav(p, pre.sample_rate, f"{field}.audio") for p in files]
    if pre.seconds is not None:
        n = int(round(pre.seconds * pre.sample_rate))
        signals = [np.pad(s[:n], (0, max(0, n - len(s)))) for s in signals]
    lengths = {len(s) for s in signals}
    if len(lengths) > 1:
        raise UsageError(
            f"the files have {len(lengths)} different lengths", path=folder, field=f"{field}.preprocess.seconds",
            fix="give seconds: N to cut or pad every file to one length",
        )  # fmt: skip
    chunks = -(-lengths.pop() // pre.chunk)
    width = pre.chunk + pre.context
    sample = [d for d in spec.shape[1:]]
    if int(np.prod(sample)) != width:
        raise UsageError(
            f"a chunk of {pre.chunk} + {pre.context} context samples does not fill input '{spec.name}' {spec.shape}",
            path=where, field=f"{field}.preprocess.chunk",
        )  # fmt: skip
    out = np.zeros((len(files), chunks, *sample), np.float32)
    for i, s in enumerate(signals):
        padded = np.concatenate(
            [np.zeros(pre.context, np.float32), s, np.zeros(chunks * pre.chunk - len(s), np.float32)]
        )
        for c in range(chunks):
            out[i, c] = padded[c * pre.chunk : c * pre.chunk + width].reshape(sample)
    arrays = {spec.name: out}
    if labels_path is not None:
        table = read_labels(labels_path, where, field)
        labels = np.zeros((len(files), chunks), np.int64)
        for i, p in enumerate(files):
            speech = np.zeros(chunks * pre.chunk, bool)
            for seg in table.get(p.name, []):
                a, b = (int(round(t * pre.sample_rate)) for t in seg)
                speech[max(a, 0) : max(b, 0)] = True
            labels[i] = speech.reshape(chunks, pre.chunk).mean(axis=1) > 0.5
        arrays["labels"] = labels
    return arrays
