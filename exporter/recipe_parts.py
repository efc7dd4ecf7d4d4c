"""Schema pieces the recipe and its compress steps share, kept below both so neither imports the
other: the `module:callable` pattern, the exactly-one-of rule and where samples come from."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, model_validator

from exporter.schema_base import Strict

CALLABLE_PATTERN = r"^[^:]+:[A-Za-z_][A-Za-z0-9_]*$"


def exactly_one(model: BaseModel, *names: str) -> None:
    """Refuse a choice given twice or not at all, in the words every such choice uses."""
    if sum(getattr(model, n) is not None for n in names) != 1:
        quoted = [f"'{n}'" for n in names]
        raise ValueError(f"give exactly one of {', '.join(quoted[:-1])} or {quoted[-1]}")


class ImagePreprocess(Strict):
    """What the app does to a photo before the model sees it; applied to calibration and evaluation alike
    and written into runtime.json, so the numbers were measured on what the device will feed."""

    input: str | None = Field(default=None, description="The input fed; default: the only data input.")
    size: tuple[int, int] | None = Field(default=None, description="[height, width]; default: the input's shape.")
    resize: Literal["stretch", "letterbox"] = Field(
        default="stretch", description="letterbox keeps the aspect ratio and pads (YOLO), stretch does not."
    )
    pad_value: int = Field(default=114, ge=0, le=255, description="Letterbox padding, 0..255 before scaling.")
    channels: Literal["rgb", "bgr"] = "rgb"
    scale: float = Field(default=1 / 255, description="Multiplies the 0..255 pixel values first.")
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    layout: Literal["nchw", "nhwc"] = "nchw"


class AudioPreprocess(Strict):
    """WAV files cut the way the app streams them: each file one sequence of chunks."""

    input: str | None = Field(default=None, description="The input fed; default: the only data input.")
    sample_rate: int = Field(default=16000, ge=1000, description="Files at another rate are resampled (polyphase).")
    chunk: int = Field(ge=1, description="New samples per chunk (silero: 512 at 16 kHz).")
    context: int = Field(default=0, ge=0, description="Samples of the previous chunk fed before each chunk.")
    seconds: float | None = Field(default=None, gt=0, description="Cut or zero-pad every file to this length.")


class DataSource(Strict):
    """Exactly one of npz, callable, text, corpus, images or audio (text kinds need a model with a tokenizer)."""

    npz: str | None = Field(default=None, description="Arrays named after the inputs (+ optional 'labels').")
    callable: str | None = Field(
        default=None, pattern=CALLABLE_PATTERN, description="Returns {input: array, 'labels': array} or a list of str."
    )
    text: str | None = Field(default=None, description="A UTF-8 text file, one sentence per line.")
    corpus: Literal["pydoc-topics", "stdlib-docstrings"] | None = Field(
        default=None,
        description="Bundled English text: pydoc-topics (split by topic) or stdlib-docstrings (unlabelled, "
        "~14k sentences read with ast, none of pydoc-topics).",
    )
    split: Literal["train", "calibration", "evaluation"] | None = Field(
        default=None, description="Which topic-disjoint split of the corpus."
    )
    images: str | None = Field(default=None, description="A folder of .jpg/.jpeg/.png/.bmp files (sorted by name).")
    audio: str | None = Field(default=None, description="A folder of .wav files (PCM), one sequence each.")
    preprocess: ImagePreprocess | AudioPreprocess | None = Field(
        default=None, description="images/audio: what the app does before feeding the model."
    )
    labels: str | None = Field(
        default=None,
        description="images/audio: a JSON file {file name: label}: a class index, a string, boxes "
        "[[class, x0, y0, x1, y1], ...] in the file's pixels, or speech segments [[start_s, end_s], ...].",
    )
    limit: int | None = Field(default=None, ge=1, description="Use at most this many samples.")

    @model_validator(mode="after")
    def _one_of(self) -> DataSource:
        exactly_one(self, "npz", "callable", "text", "corpus", "images", "audio")
        media = self.images is not None or self.audio is not None
        if (self.preprocess is not None or self.labels is not None) and not media:
            raise ValueError("'preprocess' and 'labels' go with 'images' or 'audio'")
        if self.audio is not None and not isinstance(self.preprocess, AudioPreprocess):
            raise ValueError("audio needs preprocess: {chunk: N} (samples per chunk; sample_rate, context optional)")
        if self.images is not None and isinstance(self.preprocess, AudioPreprocess):
            raise ValueError("images take an image preprocess (size, resize, scale, mean, std, channels, layout)")
        if (self.corpus == "pydoc-topics") != (self.split is not None):
            raise ValueError("'split' goes with corpus pydoc-topics (train, calibration or evaluation), only")
        return self
