"""The recipe: the one file a user writes. Version 1, strict, paths relative to the recipe."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

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


ModelSource = Annotated[TorchSource | OnnxSource, Field(discriminator="source")]


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
    """Exactly one of npz or callable."""

    npz: str | None = Field(default=None, description="Arrays named after the inputs (+ optional 'labels').")
    callable: str | None = Field(default=None, pattern=CALLABLE_PATTERN)
    limit: int | None = Field(default=None, ge=1, description="Use at most this many samples.")

    @model_validator(mode="after")
    def _one_of(self) -> DataSource:
        if (self.npz is None) == (self.callable is None):
            raise ValueError("give exactly one of 'npz' or 'callable'")
        return self


class DataSection(Strict):
    calibration: DataSource
    evaluation: DataSource


class CallableMetric(Strict):
    callable: str = Field(pattern=CALLABLE_PATTERN)
    name: str = "custom"


class QuantizeSection(Strict):
    enabled: bool = True
    precision: Literal["int8"] = "int8"
    calibration_method: Literal["minmax", "entropy", "percentile", "distribution"] = "minmax"
    calibration_samples: int = Field(default=128, ge=1, le=100_000)


class BenchSection(Strict):
    warmup_runs: int = Field(default=10, ge=0)
    min_runs: int = Field(default=100, ge=1)
    min_seconds: float = Field(default=1.0, ge=0)
    max_seconds: float = Field(default=10.0, gt=0)


class Recipe(Strict):
    version: Literal[1]
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    model: ModelSource
    inputs: list[InputSpec] = Field(min_length=1)
    outputs: list[str] | None = Field(default=None, description="Output names; defaults to output_0..")
    data: DataSection
    metric: Literal["top1", "cosine", "mse"] | CallableMetric = "top1"
    compress: list[dict[str, Any]] = Field(
        default_factory=list, description="Ordered compression steps (prune, lowrank, distill): reserved."
    )
    quantize: QuantizeSection = Field(default_factory=QuantizeSection)
    bench: BenchSection = Field(default_factory=BenchSection)
    profiles: list[str] = Field(min_length=1)
    max_accuracy_drop: float | None = Field(default=None, ge=0, description="Overrides every profile's budget.")
    output: str = "build"
    seed: int = 0


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
    if recipe.compress:
        step = next(iter(recipe.compress[0]), "?")
        raise UsageError(
            f"compression step '{step}' is not available in this version",
            path=path,
            field="compress",
            fix="remove the compress: steps (prune/lowrank/distill arrive later)",
        )
    return LoadedRecipe(recipe=recipe, path=path.resolve(), sha256=hashlib.sha256(path.read_bytes()).hexdigest())
