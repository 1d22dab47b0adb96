"""The ``schema`` section of the config: what a batch looks like and what the model predicts.

Re-exported by ``edgeloop.core.config`` (import it from there).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Frozen(BaseModel):
    # extra="forbid" turns a typo'd key into an error; strict=True refuses "3" for an int.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class SchemaSettings(_Frozen):
    """What a batch looks like: the role of each column, the target and its classes.

    Roles (``edgeloop init --data`` infers them and says why; docs/configuration.md):
    ``features`` feed the model (``categorical`` ones are one-hot encoded, ``high_cardinality``
    ones frequency-capped); ``id`` is a unique row identifier carried through scoring, edge cases
    and exports, never a feature; ``time`` is parsed as a datetime, never a category, and used for
    ordering, a time-based holdout and optional derived features; ``ignore`` columns are kept in
    the data but used for nothing (constant or all-null columns, or the user's choice).
    """

    features: Annotated[list[str], Field(min_length=1)]
    categorical: list[str] = Field(default_factory=list)
    target: str
    #: ``classification``: the target is one of ``classes``; ``regression``: a number
    #: (``classes`` stays empty; ``target_range`` bounds the labels annotators may give).
    task: Literal["classification", "regression"] = "classification"
    classes: list[int | str] = Field(default_factory=list)
    #: Regression only: ``[low, high]``, the plausible values of the target (labels outside
    #: it are rejected on import; ``init --data`` writes the observed range widened by half).
    target_range: Annotated[list[float], Field(min_length=2, max_length=2)] | None = None
    id: str | None = None
    time: str | None = None
    ignore: list[str] = Field(default_factory=list)
    #: Categorical features with many distinct values: the encoder keeps the most frequent
    #: ``training.max_categories`` and pools the rest (new values are not quarantined).
    high_cardinality: list[str] = Field(default_factory=list)
    #: Features derived from ``time`` (off by default): any of dayofweek, month, hour.
    time_features: list[Literal["dayofweek", "month", "hour"]] = Field(default_factory=list)

    @model_validator(mode="after")
    def _consistent(self) -> SchemaSettings:
        dupes = sorted({c for c in self.features if self.features.count(c) > 1})
        if dupes:
            raise ValueError(f"features lists {dupes} more than once")
        unknown = [c for c in self.categorical if c not in self.features]
        if unknown:
            raise ValueError(f"categorical names {unknown}, which are not in features")
        wide = [c for c in self.high_cardinality if c not in self.categorical]
        if wide:
            raise ValueError(f"high_cardinality names {wide}, which are not in categorical")
        if self.target in self.features:
            raise ValueError(f"target {self.target!r} is also listed in features")
        for role in ("id", "time"):
            column = getattr(self, role)
            if column is not None and (column in self.features or column == self.target):
                raise ValueError(f"{role} column {column!r} is also a feature or the target")
        if self.id is not None and self.id == self.time:
            raise ValueError(f"column {self.id!r} cannot be both the id and the time column")
        clash = [c for c in self.ignore if c in (*self.features, self.target, self.id, self.time)]
        if clash:
            raise ValueError(f"ignore names {clash}, which have another role")
        if self.time_features and self.time is None:
            raise ValueError("time_features need a time column (schema.time)")
        if len(set(map(str, self.classes))) != len(self.classes):
            raise ValueError("classes has duplicates")
        if self.task == "classification":
            if len(self.classes) < 2:
                raise ValueError("classes: a classification target needs at least 2 classes")
            if self.target_range is not None:
                raise ValueError("target_range is for regression (schema.task: regression)")
        else:
            if self.classes:
                raise ValueError("classes: a regression target has none (leave classes empty)")
            if self.target_range is not None and not self.target_range[0] < self.target_range[1]:
                raise ValueError(f"target_range {self.target_range} is not [low, high]")
        return self

    @property
    def is_regression(self) -> bool:
        return self.task == "regression"

    @property
    def numeric(self) -> list[str]:
        """Feature columns that are not categorical."""
        return [c for c in self.features if c not in self.categorical]

    @property
    def inputs(self) -> list[str]:
        """The columns the model reads: the features, and ``time`` when features derive from it."""
        return [*self.features, *([self.time] if self.time and self.time_features else [])]

    @property
    def columns(self) -> list[str]:
        """Every column a batch carries: features, id, time, ignored columns, then the target."""
        roles = [c for c in (self.id, self.time) if c is not None]
        return [*self.features, *roles, *self.ignore, self.target]
