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
        exactly_one(self, "npz", "callable", "text", "corpus")
        if (self.corpus == "pydoc-topics") != (self.split is not None):
            raise ValueError("'split' goes with corpus pydoc-topics (train, calibration or evaluation), only")
        return self
