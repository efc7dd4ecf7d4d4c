"""From a dataset's samples to a model's feeds, for models that take more than data.

A dataset holds samples first (axis 0 = samples, then one sample in its own layout). Data inputs
have the batch on axis 0, so a batch of samples is already a feed. A state input's batch may sit
on another axis (Silero VAD's [2, batch, 128]): its samples are stored with that axis removed and
put back when a feed is built. Constants are not stored at all; every feed gets them. Keeping
this in one place lets calibration, evaluation, parity and timing all build the same feeds.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from exporter.recipe_inputs import InputSpec, constant_array, state_batch_axis


@dataclass(frozen=True)
class StateLink:
    """A state input, the output it is carried from, and where its batch lies."""

    input: str
    output: str
    initial: float
    shape: tuple[int, ...]
    dtype: str
    batch_axis: int | None  # None: no batch axis (runs at batch 1 only)

    def initial_value(self, batch: int) -> np.ndarray:
        """The state at a sequence's first chunk, for `batch` sequences side by side."""
        shape = list(self.shape)
        if self.batch_axis is not None:
            shape[self.batch_axis] = batch
        return np.full(shape, self.initial, dtype=self.dtype)


@dataclass(frozen=True)
class Feeding:
    """What the data do not hold: constants, states and how samples chain into sequences."""

    constants: dict[str, np.ndarray] = field(default_factory=dict)
    states: tuple[StateLink, ...] = ()
    steps: int = 1  # chunks per sequence: samples s*steps .. s*steps+steps-1 are sequence s, in order

    @property
    def carried(self) -> bool:
        """True when outputs depend on earlier chunks, so evaluation must run sequences in order."""
        return bool(self.states)

    def max_batch(self) -> int | None:
        """1 when a state has no batch axis (samples cannot be stacked), else None (no limit)."""
        return 1 if any(s.batch_axis is None for s in self.states) else None

    def output_axes(self) -> dict[str, int | None]:
        """Batch axis of each output a state is carried from (other outputs: axis 0)."""
        return {s.output: s.batch_axis for s in self.states}

    def feed(self, samples: dict[str, np.ndarray], names: list[str] | None = None) -> dict[str, np.ndarray]:
        """One feed from a batch of samples (state samples included), in the model's own shapes."""
        axes = {s.input: s.batch_axis for s in self.states}
        out = {}
        for name, arr in samples.items():
            out[name] = to_batch(arr, axes[name]) if name in axes else arr
        out.update(self.constants)
        return out if names is None else {n: out[n] for n in names}


def to_batch(samples: np.ndarray, axis: int | None) -> np.ndarray:
    """Samples-first values -> one feed with the batch on `axis`."""
    if axis is None:
        if len(samples) != 1:
            raise ValueError(f"{len(samples)} samples of a state without a batch axis: it runs at batch 1")
        return samples[0]
    return np.moveaxis(samples, 0, axis) if axis else samples


def to_samples(value: np.ndarray, axis: int | None) -> np.ndarray:
    """One output (batch on `axis`) -> samples first."""
    if axis is None:
        return value[None]
    return np.moveaxis(value, axis, 0) if axis else value


def feeding_of(specs: list[InputSpec], steps: int = 1) -> Feeding | None:
    """The feeding of a recipe's inputs in these shapes, or None when every input is data."""
    if all(s.kind == "data" for s in specs):
        return None
    batch = next(s.shape[0] for s in specs if s.kind == "data")
    constants = {s.name: constant_array(s) for s in specs if s.kind == "constant"}
    states = tuple(
        StateLink(s.name, s.state.output, s.state.initial, tuple(s.shape), s.dtype, state_batch_axis(s, batch))
        for s in specs
        if s.state is not None
    )
    return Feeding(constants, states, steps)


def fixed_values(specs: list[InputSpec]) -> dict[str, np.ndarray]:
    """The values edgex feeds to state and constant inputs when it runs a model without data at
    hand (the load probe, ingest parity, a synthetic timing query): each constant's value and each
    state's initial value, in the declared shapes. A random `sr` picks a branch the model never runs."""
    values = {s.name: constant_array(s) for s in specs if s.kind == "constant"}
    for s in specs:
        if s.state is not None:
            values[s.name] = np.full(s.shape, s.state.initial, dtype=s.dtype)
    return values


def data_specs(specs: list[InputSpec]) -> list[InputSpec]:
    """The inputs the calibration and evaluation data hold arrays for."""
    return [s for s in specs if s.kind == "data"]
