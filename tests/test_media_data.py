"""Folders of photos and WAV files as data sources, with the preprocessing the app applies."""

from __future__ import annotations

import json
import re
import wave

import numpy as np
import pytest
import yaml
from PIL import Image

from exporter.data import load_dataset
from exporter.errors import UsageError
from exporter.recipe import InputSpec, load_recipe
from exporter.recipe_parts import DataSource
from tests.conftest import run_cli, write_tiny_project

SPEC = [InputSpec(name="images", shape=[1, 3, 64, 64])]


class _Loaded:
    """The recipe facts load_dataset reads: where relative paths start."""

    def __init__(self, folder):
        self.path = folder / "recipe.yaml"

    def resolve(self, relative: str):
        return self.path.parent / relative


def _photo(path, size, box, colour=(250, 10, 10)):
    img = Image.new("RGB", size, (20, 20, 20))
    img.paste(colour, box)
    img.save(path)


def test_letterboxed_photos_and_their_boxes_land_on_the_same_pixels(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    _photo(folder / "a.png", (128, 64), (32, 16, 64, 48))  # wide: letterboxed with bars above and below
    _photo(folder / "b.jpg", (64, 64), (0, 0, 16, 16))
    labels = {"a.png": [[2, 32, 16, 64, 48]], "b.jpg": [[0, 0, 0, 16, 16], [1, 40, 40, 50, 50]]}
    (tmp_path / "boxes.json").write_text(json.dumps(labels))
    source = DataSource(images="photos", labels="boxes.json", preprocess={"resize": "letterbox"})
    data = load_dataset(source, SPEC, _Loaded(tmp_path), "data.evaluation")
    x = data.inputs["images"]
    assert x.shape == (2, 3, 64, 64) and x.dtype == np.float32
    assert np.isclose(x[0, 0, 0, 0], 114 / 255)  # the bar above the wide photo
    assert data.labels.shape == (2, 2, 5) and np.isnan(data.labels[0, 1]).all()
    cls, x0, y0, x1, y1 = data.labels[0, 0]
    assert cls == 2 and (x0, y0, x1, y1) == (16, 24, 32, 40)  # halved, shifted down by the 16-px bar
    inside = x[0, 0, int(y0) + 2 : int(y1) - 2, int(x0) + 2 : int(x1) - 2]
    assert inside.min() > 0.9  # the red square is where its box says


def test_channels_scale_mean_std_and_layout_are_applied(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.new("RGB", (8, 8), (255, 0, 0)).save(folder / "red.png")
    pre = {"channels": "bgr", "scale": 1.0, "mean": [1, 2, 3], "std": [2, 2, 2], "layout": "nhwc"}
    spec = [InputSpec(name="images", shape=[1, 8, 8, 3])]
    x = load_dataset(DataSource(images="photos", preprocess=pre), spec, _Loaded(tmp_path), "f").inputs["images"]
    assert x.shape == (1, 8, 8, 3)
    assert np.allclose(x[0, 0, 0], [(0 - 1) / 2, (0 - 2) / 2, (255 - 3) / 2])  # B, G, R


def test_class_and_string_labels_and_a_stable_digest(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("x.png", "y.png"):
        Image.new("RGB", (64, 64)).save(folder / name)
    (tmp_path / "cls.json").write_text(json.dumps({"x.png": 3, "y.png": 1}))
    (tmp_path / "text.json").write_text(json.dumps({"x.png": "hello", "y.png": "world"}))
    cls = load_dataset(DataSource(images="photos", labels="cls.json"), SPEC, _Loaded(tmp_path), "f")
    assert cls.labels.tolist() == [3, 1]
    first = load_dataset(DataSource(images="photos", labels="text.json"), SPEC, _Loaded(tmp_path), "f")
    again = load_dataset(DataSource(images="photos", labels="text.json"), SPEC, _Loaded(tmp_path), "f")
    assert first.labels.tolist() == ["hello", "world"] and first.digest == again.digest


@pytest.mark.parametrize(
    ("labels", "words"),
    [({"x.png": 1}, "no label for 1 file(s), e.g. y.png"), ({"x.png": 1, "y.png": "a"}, "labels mix kinds")],
)
def test_labels_that_do_not_fit_are_one_line_errors(tmp_path, labels, words):
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("x.png", "y.png"):
        Image.new("RGB", (64, 64)).save(folder / name)
    (tmp_path / "l.json").write_text(json.dumps(labels))
    with pytest.raises(UsageError, match=re.escape(words)):
        load_dataset(DataSource(images="photos", labels="l.json"), SPEC, _Loaded(tmp_path), "f")


def test_recipe_refuses_preprocess_without_media_and_audio_without_chunk():
    with pytest.raises(ValueError, match="go with 'images' or 'audio'"):
        DataSource(npz="a.npz", preprocess={"resize": "stretch"})
    with pytest.raises(ValueError, match="audio needs preprocess"):
        DataSource(audio="wavs")


def _wav(path, rate, seconds, tone=440.0):
    t = np.arange(int(rate * seconds)) / rate
    pcm = (0.5 * np.sin(2 * np.pi * tone * t) * 32767).astype(np.int16)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())


def test_wav_files_become_sequences_of_chunks_with_context_and_speech_labels(tmp_path):
    folder = tmp_path / "wavs"
    folder.mkdir()
    _wav(folder / "a.wav", 16000, 0.5)
    _wav(folder / "b.wav", 8000, 0.6)  # another rate: resampled; longer: cut by `seconds`
    (tmp_path / "speech.json").write_text(json.dumps({"a.wav": [[0.0, 0.25]], "b.wav": []}))
    spec = [InputSpec(name="input", shape=[1, 576])]
    pre = {"sample_rate": 16000, "chunk": 512, "context": 64, "seconds": 0.5}
    data = load_dataset(DataSource(audio="wavs", preprocess=pre, labels="speech.json"), spec, _Loaded(tmp_path), "f")
    x = data.inputs["input"]
    chunks = -(-8000 // 512)
    assert x.shape == (2 * chunks, 576)  # no state in this model: every chunk is a sample
    assert np.all(x[0, :64] == 0) and np.allclose(x[1, :64], x[0, 512:576])  # context = last 64 samples
    assert abs(np.abs(x[chunks + 1]).max() - 0.5) < 0.02  # the 8 kHz tone at its amplitude after resampling
    assert data.labels.tolist() == [1] * 8 + [0] * (chunks - 8) + [0] * chunks  # 4000 samples: chunk 7 is 81% speech


def test_wav_files_of_different_lengths_need_seconds(tmp_path):
    folder = tmp_path / "wavs"
    folder.mkdir()
    _wav(folder / "a.wav", 16000, 0.5)
    _wav(folder / "b.wav", 16000, 0.3)
    spec = [InputSpec(name="input", shape=[1, 512])]
    with pytest.raises(UsageError, match="different lengths"):
        load_dataset(DataSource(audio="wavs", preprocess={"chunk": 512}), spec, _Loaded(tmp_path), "f")


def test_a_build_from_a_photo_folder_writes_its_preprocess_into_runtime_json(tmp_path):
    rng = np.random.default_rng(0)
    for split, n in (("calib", 12), ("eval", 10)):
        (tmp_path / split).mkdir()
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (24, 20, 3), dtype=np.uint8)).save(tmp_path / split / f"{i}.png")
    pre = {"resize": "stretch", "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}
    recipe = write_tiny_project(
        tmp_path,
        data={
            "calibration": {"images": "calib", "preprocess": pre},
            "evaluation": {"images": "eval", "preprocess": pre},
        },
        profiles=["raspberry-pi-5-cpu"],
        quantize={"calibration_samples": 8, "search": {"enabled": False}},
    )
    assert load_recipe(recipe).recipe.data.evaluation.images == "eval"
    done = run_cli("build", str(recipe), "--out", str(tmp_path / "out"))
    assert done.returncode in (0, 1), done.stderr
    runtime = json.loads((tmp_path / "out" / "raspberry-pi-5-cpu" / "runtime.json").read_text())
    assert runtime["preprocess"]["mean"] == [0.5, 0.5, 0.5] and runtime["preprocess"]["resize"] == "stretch"
    manifest = yaml.safe_load((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["profiles"][0]["variants"][0]["metric"]["value"] > 0.99  # FP32 against itself
