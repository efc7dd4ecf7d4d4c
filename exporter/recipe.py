"""The recipe: the one file a user writes. Version 1, strict, paths relative to the recipe."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, model_validator

from exporter.errors import UsageError
from exporter.recipe_inputs import InputSpec, inputs_problem
from exporter.recipe_parts import CALLABLE_PATTERN, DataSource, exactly_one
from exporter.recipe_steps import CompressStep, compress_order_problem
from exporter.schema_base import Strict, parse, read_yaml


class TorchSource(Strict):
    """A PyTorch module built by a factory the user chose to run, weights from safetensors."""

    source: Literal["torch"]
    factory: str = Field(pattern=CALLABLE_PATTERN, description="module:callable or path/file.py:callable")
    checkpoint: str | None = Field(default=None, description="A .safetensors file (or .pt loaded weights_only).")


class OnnxSource(Strict):
    source: Literal["onnx"]
    path: str | None = Field(default=None, description="The .onnx file, relative to the recipe.")
    file_from: str | None = Field(
        default=None,
        pattern=CALLABLE_PATTERN,
        description="module:callable returning the .onnx file, e.g. a model a package ships.",
    )

    @model_validator(mode="after")
    def _one_file(self) -> OnnxSource:
        exactly_one(self, "path", "file_from")
        return self


class HFShape(Strict):
    sequence_length: int | None = Field(default=None, ge=1, le=8192)
    batch: int | None = Field(default=None, ge=1, le=1024)


class HFSource(Strict):
    """A local Hugging Face (or sentence-transformers) folder, exported through optimum; never the hub."""

    source: Literal["hf"]
    folder: str | None = Field(default=None, description="The model folder (config.json, *.safetensors, tokenizer).")
    folder_from: str | None = Field(
        default=None,
        pattern=CALLABLE_PATTERN,
        description="module:callable returning the folder, e.g. a model package.",
    )
    task: Literal["sentence-embedding", "feature-extraction", "sequence-classification"] = "sentence-embedding"
    sequence_length: int = Field(default=128, ge=1, le=8192, description="Tokens per query (padding/truncation).")
    batch: int = Field(default=1, ge=1, le=1024)
    per_profile: dict[str, HFShape] = Field(
        default_factory=dict, description="Profile id -> sequence_length/batch where a device needs its own shape."
    )
    trust_remote_code: bool = Field(default=False, description="Run Python code shipped in the folder (opt-in).")
    allow_pickle: bool = Field(default=False, description="Accept pickled *.bin weights when no safetensors exist.")

    @model_validator(mode="after")
    def _one_folder(self) -> HFSource:
        exactly_one(self, "folder", "folder_from")
        return self


ModelSource = Annotated[TorchSource | OnnxSource | HFSource, Field(discriminator="source")]


class DataSection(Strict):
    calibration: DataSource
    evaluation: DataSource


class CallableMetric(Strict):
    """fn(output, labels, reference) -> float, computed on the first output over the evaluation set."""

    callable: str = Field(pattern=CALLABLE_PATTERN)
    name: str = "custom"
    higher_is_better: bool = Field(default=True, description="False for error rates (WER, MSE...).")


TaskName = Literal["text-recognition", "text-detection", "detection", "voice-activity", "classification"]


class TaskMetric(Strict):
    """A built-in task metric with its post-processing (exporter/task_metrics.py: CTC decoding, DB boxes,
    YOLO decoding + NMS, VAD frames): judged against the evaluation labels when the data has them, else
    against the FP32 model's own post-processed output. The cosine of raw outputs hides what users see."""

    task: TaskName
    options: dict[str, float | int | str] = Field(default_factory=dict, description="The task's own settings.")
    charset_file: str | None = Field(default=None, description="text-recognition: one character per line.")
    charset_metadata: str | None = Field(
        default=None, description="text-recognition: the model's metadata key holding the charset (PP-OCR: character)."
    )


Precision = Literal["int8", "int4", "fp16"]
CalibrationMethod = Literal["minmax", "entropy", "percentile", "distribution"]


class SearchSettings(Strict):
    """Accuracy-aware static INT8: what the search may try before the budget is declared missed."""

    enabled: bool = True
    calibration_methods: list[CalibrationMethod] = Field(
        default_factory=lambda: ["minmax", "percentile"],
        description="Tried in order after calibration_method, each a full calibration; the best is kept.",
    )
    max_kept: int = Field(default=32, ge=0, le=4096, description="Most tensors kept in float (or 16-bit).")
    samples: int | None = Field(
        default=None, ge=1, description="Evaluation samples each search step is judged on (seeded subset); null: all."
    )


class Int4Settings(Strict):
    """Weight-only block-wise INT4 (MatMulNBits / GatherBlockQuantized, or QDQ int4 for QDQ targets)."""

    algorithm: Literal["rtn", "hqq", "gptq"] = "rtn"
    block_size: int = Field(default=16, ge=16, le=256, description="Power of two, 16..256; 16 measured best on MiniLM.")
    accuracy_level: Literal[0, 1, 2, 3, 4] = Field(
        default=4, description="onnxruntime MatMulNBits compute type: 4 = int8 activations, 0 = unset (fp32)."
    )
    symmetric: bool = False
    embeddings: bool = Field(default=True, description="Also quantize Gather tables (word embeddings).")

    @model_validator(mode="after")
    def _power_of_two(self) -> Int4Settings:
        if self.block_size & (self.block_size - 1):
            raise ValueError(f"block_size {self.block_size} is not a power of two (16, 32, 64, 128 or 256)")
        return self


class NpuSettings(Strict):
    """QNN variants judged as the NPU computes them: on onnxruntime-qnn's HTP backend, which runs the
    Hexagon NPU in emulation on x86 (~100 M MAC/s here, so large models are judged on a subset)."""

    samples: int | None = Field(
        default=None,
        ge=1,
        description="Evaluation samples (seeded subset) run on the emulated HTP; null: as many as about a "
        "minute of emulation allows (at least 16).",
    )
    context_binary: bool = Field(
        default=True, description="Compile the shipped QNN variant to an EPContext model for the profile's SoC."
    )


class QuantizeSection(Strict):
    enabled: bool = True
    precision: Precision | list[Precision] = Field(
        default="int8", description="One precision or a list; each becomes a variant (int8 = static QDQ)."
    )
    calibration_method: CalibrationMethod = "minmax"
    calibration_samples: int = Field(default=128, ge=1, le=100_000)
    calibration_memory_mb: int = Field(
        default=4096, ge=64, description="Histogram calibration holds every activation; fewer samples beyond this."
    )
    dynamic: bool = Field(
        default=True, description="Also offer dynamic INT8 (per-channel weights) where the target runs it (CPU)."
    )
    search: SearchSettings = Field(default_factory=SearchSettings)
    speed_guard: bool = Field(
        default=True, description="On CPU targets, re-quantize fewer op types when INT8 is >5% slower than FP32."
    )
    preset_race: bool = Field(
        default=True,
        description="On CPU targets whose profile names its instruction set (soc.isa), quantize with each static "
        "INT8 configuration that ISA runs, time those within budget side by side and start from the fastest.",
    )
    int4: Int4Settings = Field(default_factory=Int4Settings)
    npu: NpuSettings = Field(default_factory=NpuSettings)

    @property
    def precisions(self) -> list[str]:
        return [self.precision] if isinstance(self.precision, str) else list(dict.fromkeys(self.precision))


MLPERF_MIN_QUERIES, MLPERF_MIN_SECONDS = 1024, 60.0  # MLPerf Inference single-stream minimums


def run_cap(runs: int, seconds: float) -> float:
    """A time cap with room for `runs` queries of up to ~0.1 s beyond twice the minimum duration."""
    return 2 * seconds + 0.1 * runs


class BenchSection(Strict):
    warmup_runs: int = Field(default=10, ge=0)
    min_runs: int = Field(default=100, ge=1)
    min_seconds: float = Field(default=1.0, ge=0)
    max_seconds: float = Field(default=10.0, gt=0)
    mlperf: bool = Field(
        default=False,
        description="Apply MLPerf single-stream minimums (1024 queries and 60 s per variant); slow, for release runs.",
    )

    def effective(self) -> BenchSection:
        """The settings a run uses: with mlperf, the minimums are raised and the cap lifted above them
        (a cap below the minimum duration would cut every run short). A model too slow for 1024
        queries within the cap is still stopped there, and the build says so."""
        if not self.mlperf:
            return self
        runs, seconds = max(self.min_runs, MLPERF_MIN_QUERIES), max(self.min_seconds, MLPERF_MIN_SECONDS)
        cap = max(self.max_seconds, run_cap(runs, seconds))
        return self.model_copy(update={"min_runs": runs, "min_seconds": seconds, "max_seconds": cap})


class RuntimeNotes(Strict):
    """What an app must do around the model; copied into each package's runtime.json."""

    preprocessing: str = ""
    postprocessing: str = ""


class Recipe(Strict):
    version: Literal[1]
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    model: ModelSource
    inputs: list[InputSpec] | None = Field(
        default=None,
        min_length=1,
        description="Every model input with the shape the build uses (required for torch and onnx sources; "
        "derived for hf): data inputs, `state: {output: NAME, initial: 0.0}` inputs carried from the previous "
        "chunk, and `value:` constants such as a sample rate.",
    )
    outputs: list[str] | None = Field(default=None, description="Output names; defaults to output_0..")
    data: DataSection
    metric: Literal["top1", "cosine", "mse"] | CallableMetric | TaskMetric = "top1"
    compress: list[CompressStep] = Field(
        default_factory=list,
        description="Ordered compression steps: student, prune, lowrank, then distill to recover accuracy.",
    )
    quantize: QuantizeSection = Field(default_factory=QuantizeSection)
    bench: BenchSection = Field(default_factory=BenchSection)
    profiles: list[str] = Field(min_length=1)
    max_accuracy_drop: float | None = Field(default=None, ge=0, description="Overrides every profile's budget.")
    output: str = "build"
    seed: int = 0
    runtime_notes: RuntimeNotes | None = None
    labels_file: str | None = Field(default=None, description="Class names, one per line; shipped as labels.txt.")

    @model_validator(mode="after")
    def _inputs_where_needed(self) -> Recipe:
        if self.model.source != "hf" and self.inputs is None:
            raise ValueError("'inputs' is required for torch and onnx models")
        if self.model.source == "hf" and self.inputs is not None:
            raise ValueError("hf models derive their inputs from the tokenizer; remove 'inputs'")
        return self


@dataclass(frozen=True)
class LoadedRecipe:
    """A validated recipe with its location, so relative paths resolve against the recipe folder."""

    recipe: Recipe
    path: Path
    sha256: str

    def resolve(self, relative: str) -> Path:
        p = Path(relative)
        return p if p.is_absolute() else (self.path.parent / p)


def load_recipe(path: str | Path) -> LoadedRecipe:
    path = Path(path)
    data = read_yaml(path, "recipe")
    recipe = parse(Recipe, data, path, "recipe")
    problem = compress_order_problem([s.kind for s in recipe.compress])
    if problem is not None:
        raise UsageError(
            f"compress: {problem}",
            path=path,
            field="compress",
            fix="order: student (optional, first), prune and/or lowrank (each at most once), distill (at most once, last)",
        )
    problem = inputs_problem(recipe.inputs, recipe.outputs) if recipe.inputs else None
    if problem is not None:
        field, message, fix = problem
        raise UsageError(message, path=path, field=field, fix=fix or None)
    return LoadedRecipe(recipe=recipe, path=path.resolve(), sha256=hashlib.sha256(path.read_bytes()).hexdigest())
