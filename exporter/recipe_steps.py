"""The recipe's `compress:` steps, one config class per step kind; the compress stage registers one
handler per class (exporter/compress/steps.py), so a new step is a class here and a handler there."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from exporter.recipe_parts import CALLABLE_PATTERN, DataSource, exactly_one
from exporter.schema_base import Strict


class PruneGoal(Strict):
    """How far to prune: exactly one of a MAC or parameter fraction to keep, or a latency."""

    macs: float | None = Field(default=None, gt=0, lt=1, description="Keep at most this fraction of the MACs.")
    params: float | None = Field(default=None, gt=0, lt=1, description="Keep at most this fraction of parameters.")
    latency: Literal["budget"] | float | None = Field(
        default=None,
        description=(
            "'budget': prune per profile until onnxruntime meets the profile's latency budget on this host "
            "(PyTorch models). A fraction such as 0.64 (transformers, criterion fisher): keep at most this share "
            "of the encoder's onnxruntime time, predicted by a head/neuron latency table timed on this host."
        ),
    )

    @model_validator(mode="after")
    def _one_goal(self) -> PruneGoal:
        exactly_one(self, "macs", "params", "latency")
        if isinstance(self.latency, float) and not 0 < self.latency < 1:
            raise ValueError("latency: a fraction of the unpruned time must be between 0 and 1 (or 'budget')")
        return self


class PruneStep(Strict):
    """Structured pruning: whole channels (CNNs, via Torch-Pruning's dependency graph) or attention
    heads, FFN neurons and layers (BERT-style encoders), so the model stays dense."""

    goal: PruneGoal
    criterion: Literal["l1", "l2", "bn_scale", "taylor", "activation", "fisher"] | None = Field(
        default=None,
        description=(
            "null: l2 for CNNs, activation for transformers. taylor/bn_scale: CNNs; activation: transformers; "
            "fisher: transformers, heads and neurons scored by the Fisher information of their masks and "
            "allocated across layers under the goal (layers keep different counts)."
        ),
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
    ffn: bool = Field(
        default=True, description="Transformers: prune feed-forward neurons (same count per layer unless fisher)."
    )
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
        exactly_one(self, "macs", "energy")
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
        exactly_one(self, "layers", "depth", "factory")
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
