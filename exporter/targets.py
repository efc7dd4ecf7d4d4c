"""Runtime targets: one YAML declaration per execution provider under targets/.

A target owns the decisions that depend on the runtime, not on the device: its quantization
preset, opset range, whether shapes must be static and what file it ships. The declaration is
data so a new runtime is a new file; the preset's reasons live as comments in each YAML.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from exporter.errors import UsageError
from exporter.resources import shipped_dir
from exporter.schema_base import Strict, parse, read_yaml

QuantType = Literal["uint8", "int8", "uint16", "int16"]


class OpsetRange(Strict):
    min: int = Field(ge=7)
    max: int = Field(ge=7)
    export: int = Field(ge=7, description="Opset the exporter writes for this target.")

    @model_validator(mode="after")
    def _ordered(self) -> OpsetRange:
        if not self.min <= self.export <= self.max:
            raise ValueError(f"export opset {self.export} must lie in [{self.min}, {self.max}]")
        return self


class QuantPreset(Strict):
    """Static INT8 settings handed to onnxruntime.quantization.quantize_static."""

    format: Literal["qdq", "qoperator"] = "qdq"
    activation_type: QuantType = "uint8"
    weight_type: QuantType = "int8"
    per_channel: bool = True
    activation_symmetric: bool = False
    weight_symmetric: bool = True
    op_types: list[str] | None = Field(
        default=None, description="Op types to quantize; null means every op type onnxruntime can quantize."
    )
    precisions: list[Literal["fp32", "fp16", "int8", "int4"]] = Field(
        default_factory=lambda: ["fp32", "int8"], description="Precisions this runtime can execute."
    )
    transformer_op_types: list[str] | None = Field(
        default=None, description="Op types to quantize in transformer graphs; null: same as op_types."
    )
    fallback: Literal["float", "uint16"] = Field(
        default="float",
        description="Where the accuracy search puts a tensor INT8 cannot hold: float, or 16-bit for integer-only NPUs.",
    )
    dynamic: bool = Field(default=False, description="The runtime executes dynamic INT8 (offered beside static).")
    int4_format: Literal["qoperator", "qdq"] = Field(
        default="qoperator", description="qoperator: MatMulNBits/GatherBlockQuantized; qdq: int4 DequantizeLinear."
    )


class OpSupport(Strict):
    """Where the operator table for preflight comes from (null: every op, i.e. the CPU provider)."""

    table: str | None = Field(
        default=None, description="'onnxruntime:<file>' (shipped with onnxruntime) or a path under targets/."
    )
    require_fixed_input_sizes: bool = False
    max_rank: int = Field(default=999, ge=1)


class Target(Strict):
    schema_version: Literal[1] = 1
    id: str = Field(pattern=r"^[a-z0-9][a-z0-9-]*$")
    name: str
    execution_provider: str
    opset: OpsetRange
    static_shapes: bool = Field(description="Runtime needs every dimension fixed (NPUs, NNAPI, CoreML).")
    package_format: Literal["onnx", "ort"]
    channel_multiple: int = Field(default=1, ge=1, description="Channel count the kernels prefer.")
    shape_profiles: bool = Field(
        default=False, description="Dynamic inputs get min/opt/max shape bounds in runtime.json (TensorRT)."
    )
    float_compute: Literal["fp32", "fp16"] = Field(
        default="fp32", description="Precision the runtime computes float graphs in (device estimates)."
    )
    contrib_ops: bool = Field(
        default=False, description="Runtime executes onnxruntime's com.microsoft ops (fused Attention, Gelu...)."
    )
    quantization: QuantPreset
    op_support: OpSupport = Field(default_factory=OpSupport)
    provider_options: dict[str, str | int | float | bool] = Field(
        default_factory=dict, description="Options an app passes to the execution provider (runtime.json)."
    )
    ort_optimization_style: Literal["runtime", "fixed"] = Field(
        default="runtime", description="ORT-format conversion style; 'runtime' lets the device EP claim nodes."
    )
    notes: str = ""
    source: str = Field(description="Where the runtime's requirements are documented.")

    def refuse_precision(self, precision: str, where: Path | str, profile: str = "") -> None:
        """A target refuses what it cannot run, before any work is done."""
        if precision not in self.quantization.precisions:
            who = f"profile '{profile}' (target '{self.id}')" if profile else f"target '{self.id}'"
            field = "quantize.precision" if precision != "fp32" else "quantize.enabled"
            fix = f"use one of {', '.join(self.quantization.precisions)}"
            if precision == "fp32":
                fix = f"enable quantization: this runtime executes only {', '.join(self.quantization.precisions)}"
            raise UsageError(f"{who} cannot run {precision}", path=where, field=field, fix=fix)


def load_target_file(path: Path) -> Target:
    target = parse(Target, read_yaml(path, "target"), path, "target")
    if target.id != path.stem:
        raise UsageError(
            f"id '{target.id}' differs from the file name",
            path=path,
            field="id",
            fix=f"rename the file to {target.id}.yaml or set id: {path.stem}",
        )
    return target


@cache
def all_targets() -> dict[str, Target]:
    folder = shipped_dir("targets")
    return {p.stem: load_target_file(p) for p in sorted(folder.glob("*.yaml"))}


def get_target(target_id: str, where: Path | str = "targets") -> Target:
    targets = all_targets()
    if target_id not in targets:
        import difflib

        guess = difflib.get_close_matches(target_id, list(targets), n=1)
        fix = f"did you mean '{guess[0]}'?" if guess else f"known targets: {', '.join(targets)}"
        raise UsageError(f"unknown target '{target_id}'", path=where, field="target", fix=fix)
    return targets[target_id]
