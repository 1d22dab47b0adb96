"""Column roles: what each column of a labeled file is for, inferred from the data (``init``).

Every column gets one role and a one-line reason; the rules, in the order they apply:

1. **Overrides** (``--id``, ``--time``, ``--ignore``, ``--categorical``, ``--numeric``) win. Each
   must name a column of the file (else the error lists the columns) and at most one role.
   An explicit id must be non-null and unique (the error names duplicated values); an explicit
   time must parse (the error names values that do not); ``--numeric`` needs numeric values.
2. **Ignore** a column with no values at all, or only one distinct value (nulls aside): it
   carries no information. Reported, kept in the data, never a feature.
3. **Time**: a datetime column; or text whose values (nearly all containing a digit, so day and
   month names are not dates) parse as times for at least ``TIME_PARSE_SHARE`` of a sample
   (``pipelines.timecol``: ISO, day- or month-first); or whole numbers in the epoch-seconds or
   milliseconds range whose name says time (``created_at``, ``ts``, ``date``...). The first
   such column is the time column; a later one is ignored (only one is supported; choose with
   ``--time``). Compact dates without separators (``20240105``) need ``--time``.
4. **Id**: values unique and non-null in every row, and either integers that are not a
   measurement (the name says id: ``id``, ``*_id``, ``key``, ``uuid``, ``code``, ``number``...,
   or the values are strictly increasing or consecutive), or strings without spaces of at
   most ``MAX_ID_LENGTH`` characters. Floats and booleans are never ids. The first candidate
   (one named like an id first) is the id; any other is ignored as a second identifier, and
   unique free text (with spaces) is ignored too: a value per row teaches a model nothing.
5. **Categorical**: booleans, and text with at most ``categorical_limit(rows)`` distinct values
   (20, or 5 % of the rows up to 100: one-hot encoded, an unseen value is a new category).
   **High cardinality**: text with more distinct values (frequency-capped by training, new
   values are not quarantined).
6. **Numeric**: everything else.

The target: every row needs a label and two distinct values at least. A numeric target with
non-integer values, or with more than ``MAX_CLASSES_NUMERIC`` distinct values that are also
more than 5 % of the rows, is **continuous: regression** (``schema.task: regression``, no
classes); anything else is classification (``--task`` overrides: a numeric target with few
integer values may be regressed, a fractional or text one cannot be classes or numbers). A
regression target's plausible range (``schema.target_range``, bounding imported labels) is the
observed [min, max] widened by half its width on each side, rounded outwards to two
significant digits of the width, and not below 0 for a target that was never negative and
whose name says amount or count (``pipelines.profile.is_count_or_amount``: ``price``...).
A classification target is **imbalanced** when its rarest class has a share below
``IMBALANCE_SHARE`` / classes (0.2 for a binary target, 0.1 for four classes): such classes
are "rare".

Gate defaults (``gate_defaults``): the metric is balanced accuracy on an imbalanced target,
else macro-F1; the candidate must beat a most-frequent-class baseline by ``MIN_LIFT`` on that
metric; each rare class gets a recall floor of ``RARE_RECALL_FLOOR``. For regression: R²,
beating the mean baseline by ``MIN_LIFT``; a random forest regressor, the shadow comparison on
absolute errors, and no margin rule for edge cases (``margin`` is the confidence there).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

import numpy as np
import pandas as pd

from edgeloop.core.errors import EdgeloopError
from pipelines.profile import is_count_or_amount
from pipelines.timecol import epoch_unit, parse_share, parse_time

Role = Literal["id", "time", "numeric", "categorical", "high_cardinality", "ignore"]
Task = Literal["classification", "regression"]

#: Text parses as times when at least this share of a sample does.
TIME_PARSE_SHARE = 0.95
#: Values sampled (evenly) to decide whether text is a time column.
TIME_SAMPLE = 500
#: A string id has no spaces and at most this many characters.
MAX_ID_LENGTH = 64
#: A numeric target with more distinct values (and more than 5 % of the rows) is continuous.
MAX_CLASSES_NUMERIC = 20
#: Imbalanced: the rarest class's share is below this divided by the number of classes.
IMBALANCE_SHARE = 0.4
#: Gate defaults written by init.
MIN_LIFT = 0.05
RARE_RECALL_FLOOR = 0.2
#: The regression target's plausible range: the observed one widened by this share of its
#: width on each side.
RANGE_WIDENING = 0.5
REGRESSOR = "sklearn.ensemble.RandomForestRegressor"

_ID_WORDS = {"id", "ids", "key", "uuid", "guid", "code", "number", "num", "no", "ref"}
_TIME_WORDS = {
    "time", "date", "datetime", "timestamp", "ts", "epoch", "at", "created", "updated",
    "modified", "day", "when",
}  # fmt: skip


@dataclass(frozen=True)
class Overrides:
    """Roles the user chose (``init`` flags); each names columns of the file."""

    id: str | None = None
    time: str | None = None
    ignore: tuple[str, ...] = ()
    categorical: tuple[str, ...] = ()
    numeric: tuple[str, ...] = ()

    @classmethod
    def of(
        cls,
        id: str | None = None,
        time: str | None = None,
        ignore: str | Iterable[str] = (),
        categorical: str | Iterable[str] = (),
        numeric: str | Iterable[str] = (),
    ) -> Overrides:
        """From strings or lists (a string is one column)."""

        def names(v: str | Iterable[str]) -> tuple[str, ...]:
            return (v,) if isinstance(v, str) else tuple(v)

        return cls(id, time, names(ignore), names(categorical), names(numeric))


class ColumnRole(NamedTuple):
    """One column's role, and why (one line, printed by ``init``)."""

    column: str
    role: Role
    reason: str


@dataclass(frozen=True)
class Roles:
    """Every column's role and reason, the target's classes and balance."""

    target: str
    id: str | None
    time: str | None
    features: tuple[str, ...]
    categorical: tuple[str, ...]
    high_cardinality: tuple[str, ...]
    ignore: tuple[str, ...]
    classes: tuple[int | str, ...]
    #: One per column but the target, in the file's order.
    columns: tuple[ColumnRole, ...]
    #: (class, share of rows) in class order.
    class_shares: tuple[tuple[str, float], ...]
    imbalanced: bool
    rare_classes: tuple[str, ...] = field(default=())
    task: Task = "classification"
    #: Regression: ``[low, high]`` (``schema.target_range``), and the observed min and max.
    target_range: tuple[float, float] | None = None
    observed: tuple[float, float] | None = None
    #: Why the task is what it is (one line, printed by ``init``).
    task_reason: str = ""

    @property
    def is_regression(self) -> bool:
        return self.task == "regression"

    def schema(self) -> dict[str, Any]:
        """The ``schema`` section of the config (``SchemaSettings`` fields)."""
        out: dict[str, Any] = {
            "features": list(self.features),
            "categorical": list(self.categorical),
            "target": self.target,
            "classes": list(self.classes),
            "id": self.id,
            "time": self.time,
            "ignore": list(self.ignore),
            "high_cardinality": list(self.high_cardinality),
        }
        if self.is_regression:
            out["task"] = "regression"
            out["target_range"] = list(self.target_range) if self.target_range else None
        return out

    def other_defaults(self) -> dict[str, dict[str, Any]]:
        """Config sections besides schema, training and gates that depend on the task:
        regression compares champion and challenger on absolute errors, and has no margin
        rule (its margin is the confidence, already the ``min_confidence`` rule)."""
        if not self.is_regression:
            return {}
        return {"shadow": {"metric": "abs_error"}, "edge_cases": {"min_margin": 0.0}}

    def gate_defaults(self) -> dict[str, Any]:
        """Gates that mean something on this target (see the module docstring)."""
        if self.is_regression:
            return {"metric": "r2", "min_lift_over_baseline": MIN_LIFT, "baseline": "mean"}
        return {
            "metric": "balanced_accuracy" if self.imbalanced else "macro_f1",
            "min_lift_over_baseline": MIN_LIFT,
            "baseline": "most_frequent",
            "class_recall_floors": {c: RARE_RECALL_FLOOR for c in self.rare_classes},
        }

    def training_defaults(self) -> dict[str, Any]:
        """Dated data is evaluated on its most recent rows (``training.split: time``); on an
        imbalanced target the default random forest weighs classes by their rarity and stops
        at leaves of 5 rows, so the rare class is learned rather than outvoted (on a 10 %
        churn-like target: balanced accuracy 0.61 -> 0.71 in our tests)."""
        out: dict[str, Any] = {"split": "time"} if self.time else {}
        if self.is_regression:
            out["estimator"] = REGRESSOR
            out["params"] = {"n_estimators": 200, "n_jobs": -1}
        elif self.imbalanced:
            out["params"] = {
                "n_estimators": 200,
                "n_jobs": -1,
                "class_weight": "balanced_subsample",
                "min_samples_leaf": 5,
            }
        return out

    def summary(self) -> str:
        """What was inferred, one line per column, then the target and the gates."""
        width = max(len(c.column) for c in (*self.columns, ColumnRole(self.target, "id", "")))
        lines = ["columns:"]
        lines += [f"  {c.column:<{width}}  {c.role:<16}  {c.reason}" for c in self.columns]
        if self.is_regression:
            return "\n".join([*lines, *self._regression_summary(width)])
        shares = ", ".join(f"{c} {s:.1%}" for c, s in self.class_shares)
        balance = (
            f"imbalanced (rare: {', '.join(self.rare_classes)})" if self.imbalanced else "balanced"
        )
        lines.append(f"  {self.target:<{width}}  {'target':<16}  {len(self.classes)} classes")
        lines.append(f"target: {self.target}: {shares}; {balance}")
        g = self.gate_defaults()
        floors = ", ".join(f"{c} >= {v}" for c, v in g["class_recall_floors"].items())
        lines.append(
            f"gates: metric {g['metric']}, beat the {g['baseline']} baseline by"
            f" {g['min_lift_over_baseline']}" + (f", recall floors {floors}" if floors else "")
        )
        if self.time:
            lines.append(f"holdout: the most recent rows by {self.time} (training.split: time)")
        if self.imbalanced:
            lines.append(
                "model: random forest with class_weight balanced_subsample, min_samples_leaf 5"
            )
        return "\n".join(lines)

    def _regression_summary(self, width: int) -> list[str]:
        low, high = self.observed or (math.nan, math.nan)
        bounds = self.target_range or (math.nan, math.nan)
        lines = [
            f"  {self.target:<{width}}  {'target':<16}  continuous: regression",
            f"target: {self.target}: continuous: regression ({self.task_reason});"
            f" observed {_num(low)} to {_num(high)}, labels accepted in"
            f" [{_num(bounds[0])}, {_num(bounds[1])}] (schema.target_range)",
        ]
        g = self.gate_defaults()
        lines.append(
            f"gates: metric {g['metric']}, beat the {g['baseline']} baseline by"
            f" {g['min_lift_over_baseline']}"
        )
        if self.time:
            lines.append(f"holdout: the most recent rows by {self.time} (training.split: time)")
        lines.append("model: random forest regressor; shadow: paired absolute errors")
        return lines


def _num(v: float) -> str:
    return f"{v:g}" if abs(v) < 1e15 else f"{v:.6g}"


def target_range(values: pd.Series, name: str) -> tuple[float, float]:
    """The plausible range of a regression target (module docstring)."""
    lo, hi = float(values.min()), float(values.max())
    width = hi - lo
    if not width > 0:
        width = max(abs(hi), 1.0)
    low, high = lo - RANGE_WIDENING * width, hi + RANGE_WIDENING * width
    # Two significant digits of the width: [-200, 1000], not [-213.57, 1004.12].
    step = 10.0 ** (math.floor(math.log10(width)) - 1)
    low, high = math.floor(low / step) * step, math.ceil(high / step) * step
    if lo >= 0 and is_count_or_amount(name):
        low = max(low, 0.0)
    # Rounding by a power of ten leaves float noise (0.30000000000000004): clean it.
    digits = max(0, 1 - math.floor(math.log10(width)))
    return float(round(low, digits)), float(round(high, digits))


def categorical_limit(rows: int) -> int:
    """Most distinct values a text column may have to be one-hot categorical."""
    return max(20, min(100, int(0.05 * rows)))


def infer_roles(
    df: pd.DataFrame,
    target: str,
    overrides: Overrides | None = None,
    task: Task | None = None,
) -> Roles:
    """Each column's role (module docstring), the task and the target's classes or range;
    ``task`` overrides the inferred one. Raises on bad input."""
    ov = overrides or Overrides()
    names = [str(c) for c in df.columns]
    if target not in names:
        raise EdgeloopError(f"no column {target!r} (columns: {', '.join(names)})")
    inferred, task_why = _task(df[target], target, task)
    classes: tuple[int | str, ...] = ()
    shares: tuple[tuple[str, float], ...] = ()
    observed: tuple[float, float] | None = None
    bounds: tuple[float, float] | None = None
    if inferred == "regression":
        values = pd.to_numeric(df[target])
        observed = (float(values.min()), float(values.max()))
        bounds = target_range(values, target)
    else:
        classes, shares = _target(df[target], target)
    assigned = _check_overrides(df, target, ov, names)

    roles: dict[str, ColumnRole] = {}
    for col, role in assigned.items():
        roles[col] = ColumnRole(col, role, _override_reason(df[col], role))
    time, ident = ov.time, ov.id
    for col in names:
        if col == target or col in roles:
            continue
        s = df[col]
        found = _constant(s)
        if found:
            roles[col] = ColumnRole(col, "ignore", found)
            continue
        why = _time_like(s, col)
        if why:
            if time is None:
                time = col
                roles[col] = ColumnRole(col, "time", why)
            else:
                roles[col] = ColumnRole(col, "ignore", f"{why}, but {time!r} is the time column")
            continue
        why = _id_like(s, col)
        if why:
            roles[col] = ColumnRole(col, "id", why)
            continue
        roles[col] = _feature(s, col, len(df))
    # One id: named like one first, else the first candidate; other candidates are ignored.
    candidates = [c for c in names if c in roles and roles[c].role == "id" and c != ov.id]
    if ident is None and candidates:
        named = [c for c in candidates if _words(c) & _ID_WORDS]
        ident = (named or candidates)[0]
    for col in candidates:
        if col != ident:
            roles[col] = ColumnRole(
                col, "ignore", f"{roles[col].reason}, but {ident!r} is the id column"
            )

    ordered = tuple(roles[c] for c in names if c != target)
    features = tuple(
        r.column for r in ordered if r.role in ("numeric", "categorical", "high_cardinality")
    )
    if not features:
        raise EdgeloopError(
            f"no feature columns left (every column but {target!r} is an id, a time or ignored);"
            " use --numeric or --categorical"
        )
    k = max(len(classes), 1)
    rare = tuple(c for c, share in shares if share < IMBALANCE_SHARE / k)
    return Roles(
        target=target,
        id=ident,
        time=time,
        features=features,
        categorical=tuple(
            r.column for r in ordered if r.role in ("categorical", "high_cardinality")
        ),
        high_cardinality=tuple(r.column for r in ordered if r.role == "high_cardinality"),
        ignore=tuple(r.column for r in ordered if r.role == "ignore"),
        classes=classes,
        columns=ordered,
        class_shares=shares,
        imbalanced=bool(rare),
        rare_classes=rare,
        task=inferred,
        target_range=bounds,
        observed=observed,
        task_reason=task_why,
    )


# ---------------------------------------------------------------------- the target
def _task(s: pd.Series, name: str, wanted: Task | None) -> tuple[Task, str]:
    """Classification or regression, and why (the module docstring's rule; ``wanted`` wins
    where the values allow it)."""
    if s.isna().any():
        rows = s.index[s.isna()].tolist()[:5]
        raise EdgeloopError(f"column {name!r} has missing labels (rows {rows}...)")
    distinct = int(s.nunique())
    if distinct < 2:
        value = s.iloc[0] if len(s) else None
        raise EdgeloopError(
            f"target column {name!r} has one class only ({value!r}): a model needs two values"
        )
    if not _is_number(s):
        if wanted == "regression":
            examples = s.astype("str").unique()[:3].tolist()
            raise EdgeloopError(
                f"--task regression: target column {name!r} is not numeric (e.g. {examples})"
            )
        return "classification", f"{distinct} non-numeric values"
    v = pd.to_numeric(s)
    fractional = not bool((v % 1 == 0).all())
    many = distinct > MAX_CLASSES_NUMERIC and distinct > 0.05 * len(s)
    if wanted == "classification":
        if fractional:
            raise EdgeloopError(
                f"--task classification: target column {name!r} has non-integer values"
                f" ({distinct} distinct): they cannot be classes"
            )
        return "classification", "set by --task"
    if wanted == "regression":
        return "regression", "set by --task"
    if fractional or many:
        what = "non-integer values" if fractional else "too many integers to be classes"
        return "regression", f"{distinct} distinct values, {what}"
    return "classification", f"{distinct} integer values"


def _target(s: pd.Series, name: str) -> tuple[tuple[int | str, ...], tuple[tuple[str, float], ...]]:
    """A classification target's classes and their shares (``_task`` checked the values)."""
    labels = sorted(s.unique().tolist(), key=str)
    classes: tuple[int | str, ...] = tuple(
        int(v) if isinstance(v, (int, float, np.integer)) and float(v).is_integer() else str(v)
        for v in labels
    )
    counts = s.astype("str").value_counts()
    total = len(s)
    shares = tuple((str(c), float(counts.get(str(c), 0)) / total) for c in classes)
    return classes, shares


# ---------------------------------------------------------------------- overrides
def _check_overrides(
    df: pd.DataFrame, target: str, ov: Overrides, names: list[str]
) -> dict[str, Role]:
    wanted: list[tuple[str, Role, str]] = []
    if ov.id is not None:
        wanted.append((ov.id, "id", "--id"))
    if ov.time is not None:
        wanted.append((ov.time, "time", "--time"))
    wanted += [(c, "ignore", "--ignore") for c in ov.ignore]
    wanted += [(c, "categorical", "--categorical") for c in ov.categorical]
    wanted += [(c, "numeric", "--numeric") for c in ov.numeric]
    out: dict[str, Role] = {}
    for col, role, flag in wanted:
        if col not in names:
            raise EdgeloopError(f"{flag} {col}: no such column (columns: {', '.join(names)})")
        if col == target:
            raise EdgeloopError(f"{flag} {col}: that is the target column")
        if col in out and out[col] != role:
            raise EdgeloopError(f"column {col!r} is given two roles ({out[col]} and {role})")
        out[col] = role
    if ov.id is not None:
        _check_id(df[ov.id], ov.id)
    if ov.time is not None:
        _check_time(df[ov.time], ov.time)
    for col in ov.numeric:
        if not pd.api.types.is_numeric_dtype(df[col]):  # booleans may be 0/1 numbers
            examples = df[col].dropna().astype("str").unique()[:3].tolist()
            raise EdgeloopError(
                f"--numeric {col}: values are not numbers (dtype {df[col].dtype}, e.g. {examples})"
            )
    for col in ov.categorical:
        if _is_high_cardinality(df[col], len(df)):
            out[col] = "high_cardinality"
    return out


def _check_id(s: pd.Series, name: str) -> None:
    if s.isna().any():
        rows = s.index[s.isna()].tolist()[:5]
        raise EdgeloopError(f"--id {name}: {int(s.isna().sum())} rows have no id (rows {rows})")
    dup = s[s.duplicated(keep=False)]
    if len(dup):
        values = dup.astype("str").unique().tolist()
        shown = ", ".join(values[:5]) + ("..." if len(values) > 5 else "")
        raise EdgeloopError(
            f"--id {name}: not unique: {len(values)} value(s) occur more than once ({shown})"
        )


def _check_time(s: pd.Series, name: str) -> None:
    present = s.dropna()
    if present.empty:
        raise EdgeloopError(f"--time {name}: the column has no values")
    parsed = parse_time(present)
    share = float(parsed.notna().mean())
    if share < TIME_PARSE_SHARE:
        bad = present[parsed.isna()].astype("str").unique()[:5].tolist()
        raise EdgeloopError(
            f"--time {name}: {1 - share:.0%} of the values do not parse as times"
            f" (e.g. {', '.join(map(repr, bad))})"
        )


def _override_reason(s: pd.Series, role: Role) -> str:
    if role == "high_cardinality":
        return f"--categorical; {s.nunique()} distinct values: frequency-capped"
    return f"set by --{role.replace('_', '-')}"


# ---------------------------------------------------------------------- inference
def _words(name: str) -> set[str]:
    """``CustomerID`` -> {customer, id}; ``created_at`` -> {created, at}."""
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1 \2", re.sub(r"([A-Z]+)([A-Z][a-z])", r"\1 \2", name))
    return {w.lower() for w in re.split(r"[^A-Za-z0-9]+", spaced) if w}


def _is_number(s: pd.Series) -> bool:
    return bool(pd.api.types.is_numeric_dtype(s)) and not pd.api.types.is_bool_dtype(s)


def _is_text(s: pd.Series) -> bool:
    return not pd.api.types.is_numeric_dtype(s) and not pd.api.types.is_datetime64_any_dtype(s)


def _constant(s: pd.Series) -> str:
    if s.isna().all():
        return "all values are null"
    if s.nunique() == 1:
        return f"constant (every value is {s.dropna().iloc[0]!r})"
    return ""


def _time_like(s: pd.Series, name: str) -> str:
    if pd.api.types.is_datetime64_any_dtype(s):
        return "datetime values"
    if _is_number(s):
        unit = epoch_unit(s)
        if unit and _words(name) & _TIME_WORDS:
            return f"epoch {'seconds' if unit == 's' else 'milliseconds'}, named like a time"
        return ""
    if pd.api.types.is_bool_dtype(s):
        return ""
    text = s.dropna().astype("str")
    if len(text) > TIME_SAMPLE:
        text = text.iloc[np.linspace(0, len(text) - 1, TIME_SAMPLE).astype(int)]
    if float(text.str.contains(r"\d", regex=True).mean()) < TIME_PARSE_SHARE:
        return ""
    share = parse_share(text)
    if share >= TIME_PARSE_SHARE:
        return f"text that parses as dates/times ({share:.0%} of a sample)"
    return ""


def _id_like(s: pd.Series, name: str) -> str:
    if s.isna().any() or not s.is_unique or len(s) < 2:
        return ""
    if pd.api.types.is_integer_dtype(s) and not pd.api.types.is_bool_dtype(s):
        if _words(name) & _ID_WORDS:
            return "unique integers named like an id"
        v = s.to_numpy(dtype=np.int64)
        if bool((np.diff(v) > 0).all()):
            return "unique, strictly increasing integers (a row counter)"
        if int(v.max()) - int(v.min()) + 1 == len(v):
            return "unique, consecutive integers"
        return ""
    if _is_text(s) and not pd.api.types.is_bool_dtype(s):
        text = s.astype("str")
        if (
            not bool(text.str.contains(r"\s", regex=True).any())
            and int(text.str.len().max()) <= MAX_ID_LENGTH
        ):
            return "unique strings without spaces"
    return ""


def _is_high_cardinality(s: pd.Series, rows: int) -> bool:
    return int(s.nunique()) > categorical_limit(rows)


def _feature(s: pd.Series, name: str, rows: int) -> ColumnRole:
    if pd.api.types.is_bool_dtype(s):
        return ColumnRole(name, "categorical", "booleans")
    if _is_number(s):
        return ColumnRole(name, "numeric", f"numbers ({s.nunique()} distinct)")
    distinct = int(s.nunique())
    if s.notna().all() and s.is_unique:
        return ColumnRole(name, "ignore", "free text, unique per row: nothing to learn from")
    limit = categorical_limit(rows)
    if distinct > limit:
        return ColumnRole(
            name,
            "high_cardinality",
            f"text, {distinct} distinct values (> {limit}): frequency-capped",
        )
    return ColumnRole(name, "categorical", f"text, {distinct} distinct values (<= {limit})")
