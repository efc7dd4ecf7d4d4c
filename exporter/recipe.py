"""The recipe: the one file a user writes. Version 1, strict, paths relative to the recipe."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, model_validator

from exporter.errors import UsageError
from exporter.schema_base import Strict, parse, read_yaml

DType = Literal["float32", "float16", "int64", "int32", "uint8", "int8", "bool"]
CALLABLE_PATTERN = r"^[^:]+:[A-Za-z_][A-Za-z0-9_]*$"


class TorchSource(Strict):
    """A PyTorch module built by a factory the user chose to run, weights from safetensors."""

    source: Literal["torch"]
    factory: str = Field(pattern=CALLABLE_PATTERN, description="module:callable or path/file.py:callable")
    checkpoint: str | None = Field(default=None, description="A .safetensors file (or .pt loaded weights_only).")


class OnnxSource(Strict):
    source: Literal["onnx"]
    path: str


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
        if (self.folder is None) == (self.folder_from is None):
            raise ValueError("give exactly one of 'folder' or 'folder_from'")
        return self


ModelSource = Annotated[TorchSource | OnnxSource | HFSource, Field(discriminator="source")]


class InputSpec(Strict):
    name: str
    shape: list[int] = Field(min_length=1, description="The benchmark/export shape, batch first.")
    dtype: DType = "float32"
    dynamic_axes: dict[int, str] = Field(
        default_factory=dict, description="Axis index -> name, kept dynamic where the target allows."
    )

    @model_validator(mode="after")
    def _axes_in_range(self) -> InputSpec:
        for axis in self.dynamic_axes:
            if not 0 <= axis < len(self.shape):
                raise ValueError(f"dynamic axis {axis} is outside a shape of rank {len(self.shape)}")
        if any(d <= 0 for d in self.shape):
            raise ValueError("every dimension must be a positive integer")
        return self


class DataSource(Strict):
    """Exactly one of npz, callable, text or corpus (text kinds need a model with a tokenizer)."""

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
    limit: int | None = Field(default=None, ge=1, description="Use at most this many samples.")

    @model_validator(mode="after")
    def _one_of(self) -> DataSource:
        given = [k for k in ("npz", "callable", "text", "corpus") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of 'npz', 'callable', 'text' or 'corpus'")
        if (self.corpus == "pydoc-topics") != (self.split is not None):
            raise ValueError("'split' goes with corpus pydoc-topics (train, calibration or evaluation), only")
        return self


class DataSection(Strict):
    calibration: DataSource
    evaluation: DataSource


class CallableMetric(Strict):
    """fn(output, labels, reference) -> float, computed on the first output over the evaluation set."""

    callable: str = Field(pattern=CALLABLE_PATTERN)
    name: str = "custom"
    higher_is_better: bool = Field(default=True, description="False for error rates (WER, MSE...).")


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
    int4: Int4Settings = Field(default_factory=Int4Settings)

    @property
    def precisions(self) -> list[str]:
        return [self.precision] if isinstance(self.precision, str) else list(dict.fromkeys(self.precision))


class PruneGoal(Strict):
    """How far to prune: exactly one of a MAC or parameter fraction to keep, or a latency."""

    macs: float | None = Field(default=None, gt=0, lt=1, description="Keep at most this fraction of the MACs.")
    params: float | None = Field(default=None, gt=0, lt=1, description="Keep at most this fraction of parameters.")
    latency: Literal["budget"] | None = Field(
        default=None,
        description="'budget': prune per profile until onnxruntime meets the profile's latency budget on this host.",
    )

    @model_validator(mode="after")
    def _one_goal(self) -> PruneGoal:
        if sum(v is not None for v in (self.macs, self.params, self.latency)) != 1:
            raise ValueError("give exactly one of 'macs', 'params' or 'latency'")
        return self


class PruneStep(Strict):
    """Structured pruning: whole channels (CNNs, via Torch-Pruning's dependency graph) or attention
    heads, FFN neurons and layers (BERT-style encoders), so the model stays dense."""

    goal: PruneGoal
    criterion: Literal["l1", "l2", "bn_scale", "taylor", "activation"] | None = Field(
        default=None,
        description="null: l2 for CNNs, activation for transformers. taylor/bn_scale: CNNs; activation: transformers.",
    )
    scope: Literal["global", "per_layer"] = Field(
        default="per_layer", description="Rank channels across the whole model or within each layer."
    )
    protect: list[str] = Field(default_factory=list, description="Module names never pruned (the output layer always).")
    align: int | None = Field(
        default=None, ge=1, le=256, description="Channel/neuron multiple; null: the strictest of the profiles' targets."
    )
    steps: int = Field(
        default=40, ge=1, le=400, description="Iterative pruning steps (importance re-ranked each step)."
    )
    max_layer_ratio: float = Field(default=0.8, gt=0, lt=1, description="Never remove more of one layer than this.")
    heads: bool = Field(default=True, description="Transformers: prune attention heads.")
    ffn: bool = Field(default=True, description="Transformers: prune feed-forward neurons (same count per layer).")
    drop_layers: list[int] = Field(default_factory=list, description="Transformers: encoder layers removed whole.")
    reconstruct: bool = Field(
        default=True,
        description="Transformers: refit each pruned output projection to the unpruned outputs (least squares).",
    )
    accuracy_floor: float | None = Field(
        default=None, ge=0, description="Stop pruning (before distillation) once the drop in PyTorch exceeds this."
    )


class DistillStep(Strict):
    """Knowledge distillation from the uncompressed model (the teacher) into the compressed one."""

    epochs: int = Field(default=10, ge=1, le=1000)
    batch_size: int = Field(default=32, ge=1, le=4096)
    lr: float = Field(default=1e-3, gt=0, lt=1)
    weight_decay: float = Field(default=1e-4, ge=0)
    loss: Literal["auto", "kd", "cosine", "mse"] = Field(
        default="auto", description="auto: kd for classifiers (top1), cosine for embeddings, mse otherwise."
    )
    temperature: float = Field(default=4.0, gt=0, le=100)
    alpha: float = Field(default=0.7, ge=0, le=1, description="KD weight; 1 - alpha goes to the hard-label loss.")
    hidden_states: float = Field(
        default=0.0, ge=0, description="Weight of an MSE between matching encoder layers' hidden states (transformers)."
    )
    data: DataSource | None = Field(
        default=None,
        description="Training inputs (labels optional); null: the calibration set (pydoc-topics train for text).",
    )
    augment: bool = Field(
        default=True, description="Images: random shifts of up to 2 px; text: random spans of half the sentences."
    )
    dropout: bool = Field(default=False, description="Keep the model's dropout active while training.")
    validation_fraction: float = Field(default=0.1, gt=0, lt=0.5, description="Held out of the training data.")
    patience: int = Field(
        default=5, ge=1, description="Epochs without a better validation loss before stopping (second half only)."
    )
    threads: int = Field(default=2, ge=1, le=256, description="torch threads while training (fixed for repeatability).")


class LowrankGoal(Strict):
    """How far to factorise: a fraction of the MACs to keep, or the singular-value energy each layer keeps."""

    macs: float | None = Field(
        default=None,
        gt=0,
        lt=1,
        description="Keep at most this fraction of the MACs (encoder layers for transformers).",
    )
    energy: float | None = Field(
        default=None, gt=0, le=1, description="Keep this fraction of each layer's squared singular values."
    )

    @model_validator(mode="after")
    def _one_goal(self) -> LowrankGoal:
        if (self.macs is None) == (self.energy is None):
            raise ValueError("give exactly one of 'macs' or 'energy'")
        return self


class LowrankStep(Strict):
    """Low-rank factorisation: Linear and convolution layers replaced by two thinner dense layers
    from a truncated SVD, only where that is cheaper (r < mn/(m+n))."""

    goal: LowrankGoal
    criterion: Literal["svd", "activation"] = Field(
        default="activation",
        description="svd: plain truncated SVD of the weights; activation: SVD whitened by the layer's inputs on the "
        "calibration data (minimises the output error; Linear, 1x1 and channel-mode convolutions).",
    )
    conv: Literal["spatial", "channel"] = Field(
        default="spatial", description="k x k convolutions: (k x 1)(1 x k) pair, or a k x k into r channels then 1 x 1."
    )
    layers: list[str] = Field(
        default_factory=list, description="Module-name patterns (fnmatch) that may be factorised; empty: all."
    )
    protect: list[str] = Field(default_factory=list, description="Module-name patterns never factorised.")
    align: int | None = Field(default=None, ge=1, le=256, description="Rank multiple; null: the targets' strictest.")


class StudentStep(Strict):
    """A shallower student: some of the teacher's encoder layers (transformers), or a user-supplied
    architecture (PyTorch), to be trained by a following distill step."""

    layers: list[int] | None = Field(
        default=None, description="Transformers: the teacher's encoder layers the student keeps (its initialisation)."
    )
    depth: int | None = Field(
        default=None, ge=1, description="Transformers: keep this many layers, evenly spaced (first and last kept)."
    )
    factory: str | None = Field(
        default=None,
        pattern=CALLABLE_PATTERN,
        description="PyTorch: module:fn returning the student nn.Module (same inputs and outputs as the teacher).",
    )

    @model_validator(mode="after")
    def _one_of(self) -> StudentStep:
        if sum(v is not None for v in (self.layers, self.depth, self.factory)) != 1:
            raise ValueError("give exactly one of 'layers', 'depth' or 'factory'")
        return self


STEP_KINDS = ("prune", "lowrank", "student", "distill")


class CompressStep(Strict):
    """One item of `compress:`, a mapping with exactly one key: prune, lowrank, student or distill."""

    prune: PruneStep | None = None
    lowrank: LowrankStep | None = None
    student: StudentStep | None = None
    distill: DistillStep | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> CompressStep:
        if sum(getattr(self, k) is not None for k in STEP_KINDS) != 1:
            raise ValueError("each compress: item is exactly one of " + ", ".join(f"'{k}'" for k in STEP_KINDS))
        return self

    @property
    def kind(self) -> str:
        return next(k for k in STEP_KINDS if getattr(self, k) is not None)

    @property
    def settings(self) -> PruneStep | LowrankStep | StudentStep | DistillStep:
        return getattr(self, self.kind)


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
        default=None, min_length=1, description="Required for torch and onnx sources; derived for hf."
    )
    outputs: list[str] | None = Field(default=None, description="Output names; defaults to output_0..")
    data: DataSection
    metric: Literal["top1", "cosine", "mse"] | CallableMetric = "top1"
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


def compress_order_problem(kinds: list[str]) -> str | None:
    """Why an ordered list of compression steps cannot run, or None. A student defines the
    architecture the other steps shrink, so it comes first; distill recovers what the steps
    before it removed, so it comes last; a step twice would compress an already compressed layer."""
    for kind in ("student", "prune", "lowrank", "distill"):
        if kinds.count(kind) > 1:
            return f"'{kind}' appears {kinds.count(kind)} times in {kinds}; give it once"
    if "student" in kinds and kinds[0] != "student":
        return f"'student' must be the first step (got {kinds})"
    if "distill" in kinds and kinds[-1] != "distill":
        return f"'distill' must be the last step (got {kinds})"
    if kinds == ["distill"]:
        return "'distill' alone has nothing to recover: add a student, prune or lowrank step before it"
    return None


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
    return LoadedRecipe(recipe=recipe, path=path.resolve(), sha256=hashlib.sha256(path.read_bytes()).hexdigest())
