"""The recipe's `inputs:` section: what each model input is and where its values come from.

Three kinds of input, because models exported elsewhere take more than data:
- data (the default): the calibration/evaluation data hold an array for it;
- state (`state: {output: stateN, initial: 0.0}`): carried from the named output of the previous
  chunk of a sequence, starting from `initial` (Silero VAD's recurrent state);
- constant (`value: 16000`): the same value in every query (Silero VAD's sample rate `sr`).
edgex fills state and constant inputs itself; runtime.json tells the app to do the same.
Shapes are the ones every build step uses (export, reference, calibration, timing): never a guessed 1.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field, model_validator

from exporter.schema_base import Strict

DType = Literal["float32", "float16", "int64", "int32", "uint8", "int8", "bool"]
Shape = list[int]


class StateSpec(Strict):
    """An input carried across the chunks of a sequence: the previous chunk's `output`, or
    `initial` (every element) at a sequence's first chunk."""

    output: str = Field(description="The model output whose value this input takes at the next chunk.")
    initial: float = Field(default=0.0, description="Value of every element at the first chunk of a sequence.")
    batch_axis: int | None = Field(
        default=None,
        ge=0,
        description="The axis holding the batch (Silero's [2, batch, 128]: 1). Default: the only axis "
        "whose size is the data inputs' batch; none for a state without a batch axis (batch 1 only).",
    )


class InputSpec(Strict):
    """One model input. A data input (neither `state` nor `value`) is batch first and its arrays
    come from the data; rank 0 (`shape: []`) is for scalars, which must be `state` or `value`."""

    name: str
    shape: Shape = Field(
        description="The shape every build step uses (export, reference, calibration, timing): batch "
        "first for data inputs; [] for a scalar."
    )
    dtype: DType = "float32"
    dynamic_axes: dict[int, str] = Field(
        default_factory=dict, description="Axis index -> name, kept dynamic where the target allows."
    )
    state: StateSpec | None = Field(
        default=None, description="Carried from an output of the previous chunk: {output: NAME, initial: 0.0}."
    )
    value: float | int | bool | list | None = Field(
        default=None,
        description="A constant fed with every query (e.g. 16000 for a sample rate); a number fills the "
        "shape, a nested list gives it whole. The data hold no array for it.",
    )
    per_profile: dict[str, Shape] = Field(
        default_factory=dict, description="Profile id -> this input's shape where a device needs its own."
    )

    @property
    def kind(self) -> str:
        """'data', 'state' or 'constant'."""
        return "state" if self.state is not None else "constant" if self.value is not None else "data"

    @model_validator(mode="after")
    def _consistent(self) -> InputSpec:
        for axis in self.dynamic_axes:
            if not 0 <= axis < len(self.shape):
                raise ValueError(f"dynamic axis {axis} is outside a shape of rank {len(self.shape)}")
        for shape in [self.shape, *self.per_profile.values()]:
            if any(d <= 0 for d in shape):
                raise ValueError(f"every dimension must be a positive integer (got {shape})")
        for pid, shape in self.per_profile.items():
            if len(shape) != len(self.shape):
                raise ValueError(f"per_profile {pid}: rank {len(shape)} differs from the shape's {len(self.shape)}")
        if self.state is not None and self.value is not None:
            raise ValueError("an input is either 'state' or 'value', not both")
        if self.kind == "data" and not self.shape:
            raise ValueError("a data input needs at least its batch axis; give a scalar 'value:' or 'state:'")
        if self.value is not None:
            constant_array(self)  # raises ValueError when the value does not fit
        return self


def constant_array(spec: InputSpec, shape: Shape | None = None) -> np.ndarray:
    """The value of a constant input in its declared (or the given) shape and dtype."""
    shape = list(spec.shape if shape is None else shape)
    try:
        raw = np.asarray(spec.value)
    except ValueError as exc:  # ragged nested lists
        raise ValueError(f"value is not a regular array ({exc})") from None
    if raw.dtype.kind not in "biuf":
        raise ValueError(f"value must be numbers or booleans, got {raw.dtype}")
    target = np.dtype(spec.dtype)
    if target.kind in "iub" and raw.dtype.kind == "f" and not np.all(raw == np.round(raw)):
        raise ValueError(f"value {spec.value} is not a whole number but the input is {spec.dtype}")
    if raw.ndim and list(raw.shape) != shape:
        raise ValueError(f"value has shape {list(raw.shape)}, the input {shape}")
    return np.array(np.broadcast_to(raw, shape), dtype=target)  # a copy; rank 0 stays rank 0


def state_batch_axis(spec: InputSpec, batch: int, shape: Shape | None = None) -> int | None:
    """The axis of a state input that holds the batch: the declared one, else the only axis of the
    batch's size; None for a state with no such axis (it can only run at batch 1).

    Raises ValueError (with the fix) when the declared axis does not hold the batch or two axes could.
    """
    assert spec.state is not None
    shape = list(spec.shape if shape is None else shape)
    axis = spec.state.batch_axis
    if axis is not None:
        if axis >= len(shape) or shape[axis] != batch:
            raise ValueError(f"batch_axis {axis} of shape {shape} does not hold the batch of {batch}")
        return axis
    candidates = [i for i, d in enumerate(shape) if d == batch]
    if len(candidates) == 1:
        return candidates[0]
    if not candidates and batch == 1:
        return None
    if not candidates:
        raise ValueError(f"no axis of shape {shape} holds the data inputs' batch of {batch}")
    raise ValueError(f"axes {candidates} of shape {shape} could each hold the batch of {batch}; set state.batch_axis")


def inputs_problem(
    inputs: list[InputSpec], outputs: list[str] | None, shapes: dict[str, Shape] | None = None
) -> tuple[str, str, str] | None:
    """The first thing wrong across the inputs (field, problem, fix), or None.

    `outputs`: the model's output names when known (the recipe's `outputs:` or the loaded model's);
    `shapes`: the shapes in use when they differ from the declared ones (a profile's own).
    """
    shape_of = {s.name: list(s.shape) for s in inputs} | (shapes or {})
    names = [s.name for s in inputs]
    for i, spec in enumerate(inputs):
        if names.count(spec.name) > 1:
            return f"inputs[{i}].name", f"input '{spec.name}' is declared twice", "declare each input once"
    data = [(i, s) for i, s in enumerate(inputs) if s.kind == "data"]
    if not data:
        return "inputs", "every input is a state or a constant", "declare the input the data feed (no state/value)"
    batch = shape_of[data[0][1].name][0]
    for i, spec in data[1:]:
        if shape_of[spec.name][0] != batch:
            return (
                f"inputs[{i}].shape",
                f"batch {shape_of[spec.name][0]} differs from '{data[0][1].name}''s {batch}",
                "give every data input the same first dimension",
            )
    fed_from: dict[str, str] = {}
    for i, spec in enumerate(inputs):
        if spec.state is None:
            continue
        field = f"inputs[{i}].state"
        if outputs is not None and spec.state.output not in outputs:
            return (
                f"{field}.output",
                f"'{spec.state.output}' is not an output of the model (outputs: {list(outputs)})",
                "name the output this state is carried from",
            )
        if spec.state.output in fed_from:
            return f"{field}.output", f"'{spec.state.output}' already feeds '{fed_from[spec.state.output]}'", ""
        fed_from[spec.state.output] = spec.name
        try:
            state_batch_axis(spec, batch, shape_of[spec.name])
        except ValueError as exc:
            return f"{field}.batch_axis", str(exc), "set batch_axis to the axis of the state that holds the batch"
    return None
