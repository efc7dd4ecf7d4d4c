"""The step registry: one handler per `compress:` config class (as torchao registers a handler per
quantization config), owning the step's check, its cache-key facts, its run and its
post-conditions (as onnx_ir passes declare requires/ensures and return a result record).

A new step is a config class in exporter/recipe_steps.py, a handler module here decorated with
`@register_step(ItsConfig)`, and one import line in exporter/compress/__init__.py.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar


@dataclass
class State:
    """What the steps share while they run: the teacher's context and the student they shrink."""

    ctx: Any  # exporter.pipeline.Context (duck-typed: the pipeline is a layer above)
    student: Any  # torch.nn.Module
    align: int
    latency: dict | None
    records: list[dict] = field(default_factory=list)
    kept_layers: list[int] | None = None  # teacher encoder layers the student still has (None: all)

    @property
    def kind(self) -> str:
        """The loaded model's kind, "torch" or "hf" (an ONNX file is refused before any step)."""
        return self.ctx.model.kind

    def drop_layers(self, dropped: list[int]) -> None:
        """Remember which teacher layers remain, so hidden-state distillation pairs the right ones."""
        from exporter.compress.encoder import find_encoder

        remaining = len(find_encoder(self.student).encoder.layer)
        current = self.kept_layers or list(range(len(dropped) + remaining))
        self.kept_layers = [t for i, t in enumerate(current) if i not in set(dropped)]


@dataclass
class StepResult:
    """What one step did, for the manifest's `compression` record; `dropped_layers` are encoder
    layers it removed whole (their teacher counterparts leave the distillation pairs)."""

    info: dict
    dropped_layers: list[int] = field(default_factory=list)


class StepHandler:
    """One compress step. `run` dispatches on the loaded model's kind to `run_torch` / `run_hf`,
    so the per-kind code of a step sits side by side in its handler."""

    kind: ClassVar[str]  # the step's key in a `compress:` item

    def requires(self, ctx: Any, step: Any, where: str) -> None:
        """Refuse, before any work, a step this model cannot take (a one-line UsageError)."""

    def key(self, ctx: Any, step: Any) -> dict[str, Any]:
        """Facts beyond the step's settings that decide its result; each name becomes a list in the
        cache key, present only when some step gives it (so other recipes' keys stay as they were)."""
        return {}

    def run(self, state: State, step: Any, where: str) -> StepResult:
        return {"torch": self.run_torch, "hf": self.run_hf}[state.kind](state, step, where)

    def run_torch(self, state: State, step: Any, where: str) -> StepResult:
        raise NotImplementedError

    def run_hf(self, state: State, step: Any, where: str) -> StepResult:
        raise NotImplementedError

    def ensures(self, state: State, step: Any, result: StepResult) -> StepResult:
        """Post-conditions on the student the run left; may add what it finds to the record."""
        return result

    def replay(self, ctx: Any, student: Any, recorded: dict, index: int) -> Any:
        """Rebuild a PyTorch student's architecture from this step's record (weights come after)."""
        return student

    def apply(self, state: State, step: Any, where: str) -> StepResult:
        return self.ensures(state, step, self.run(state, step, where))


HANDLERS: dict[type, StepHandler] = {}
H = TypeVar("H", bound=type[StepHandler])


def register_step(config: type) -> Callable[[H], H]:
    """Class decorator: the handler of the steps configured by `config`."""

    def register(handler: H) -> H:
        if config in HANDLERS:
            raise ValueError(f"{config.__name__} already has a handler ({type(HANDLERS[config]).__name__})")
        HANDLERS[config] = handler()
        return handler

    return register


def handler_for(step: Any) -> StepHandler:
    return HANDLERS[type(step)]
