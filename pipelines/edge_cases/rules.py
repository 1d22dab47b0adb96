"""Failure-trigger rules: parsed from the rules file's text, evaluated as one boolean mask each."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import yaml

from edgeloop.core.errors import RulesError
from pipelines.edge_cases.arrow import _arrow_strings, _arrow_text_equal

OPS = ("==", "!=", "<", "<=", ">", ">=", "in")
SCORE_COLUMNS = ("predicted", "confidence", "margin")


@dataclass(frozen=True)
class Condition:
    column: str
    op: str
    value: Any


@dataclass(frozen=True)
class Rule:
    """All conditions must hold (AND) for the rule to flag a row."""

    name: str
    description: str
    when: tuple[Condition, ...]


def parse_rules(text: str, path: str | Path, known_columns: list[str]) -> list[Rule]:
    """Parse and check the rules file's text (``path`` names it in errors); an unknown column or
    operator is an error naming both. ``edgeloop.data.readers.load_rules`` reads the file."""
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise RulesError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("rules", []), list):
        raise RulesError(f"{path}: expected a mapping with a list under 'rules'")
    extra = sorted(set(data) - {"rules"})
    if extra:
        raise RulesError(f"{path}: unknown top-level key(s) {extra}")
    rules: list[Rule] = []
    for i, raw in enumerate(data.get("rules") or []):
        where = f"{path}: rules[{i}]"
        if not isinstance(raw, dict) or "name" not in raw or "when" not in raw:
            raise RulesError(f"{where}: each rule needs 'name' and 'when'")
        where = f"{path}: rule {raw['name']!r}"
        unknown_keys = sorted(set(raw) - {"name", "description", "when"})
        if unknown_keys:
            raise RulesError(f"{where}: unknown key(s) {unknown_keys}")
        conds = raw["when"] if isinstance(raw["when"], list) else [raw["when"]]
        if not conds:
            raise RulesError(f"{where}: 'when' is empty (it would flag every row)")
        parsed = []
        for c in conds:
            if not isinstance(c, dict) or set(c) - {"column", "op", "value"} or "column" not in c:
                raise RulesError(f"{where}: a condition is {{column, op, value}}, got {c!r}")
            if c["column"] not in known_columns:
                raise RulesError(
                    f"{where}: unknown column {c['column']!r} (known: features, {', '.join(SCORE_COLUMNS)}, p_<class>)"
                )
            op = c.get("op", "==")
            if op not in OPS:
                raise RulesError(f"{where}: unknown operator {op!r} (one of {', '.join(OPS)})")
            if "value" not in c:
                raise RulesError(f"{where}: condition on {c['column']!r} has no 'value'")
            parsed.append(Condition(c["column"], op, c["value"]))
        if any(r.name == str(raw["name"]) for r in rules):
            raise RulesError(f"{where}: duplicate rule name")
        rules.append(Rule(str(raw["name"]), str(raw.get("description", "")), tuple(parsed)))
    return rules


def _is_numeric(values: Any) -> bool:
    """Numbers (not booleans): compared with the rules file's values as numbers."""
    dtype = values.dtype
    return pd.api.types.is_numeric_dtype(dtype) and not pd.api.types.is_bool_dtype(dtype)


def _numbers(values: Any) -> np.ndarray:
    """A numeric column as a NumPy array, missing values as NaN; no copy when it is one already."""
    if isinstance(values, np.ndarray):
        return values if values.dtype.kind in "iuf" else values.astype(np.float64)
    out: np.ndarray  # pandas is untyped: its to_numpy gives Any
    if isinstance(values.dtype, np.dtype) and values.dtype.kind in "iuf":
        out = values.to_numpy()
    else:
        out = values.to_numpy(dtype=np.float64, na_value=np.nan)
    return out


def _same_kind(left: np.ndarray, value: float) -> float | int:
    """A whole number as an int for an integer column: NumPy then compares integers directly
    (~3x faster than casting every value to float64, and the same answer)."""
    if left.dtype.kind in "iu" and value.is_integer():
        info = np.iinfo(left.dtype)
        if info.min <= value <= info.max:  # out of range, NumPy would refuse the int
            return int(value)
    return value


def _cond_mask(values: Any, cond: Condition, rows: np.ndarray | None = None) -> np.ndarray:
    """Evaluate one condition on a column (a pandas Series or a NumPy array).

    With ``rows`` (positions), only on those rows: the mask has one entry per position.
    """
    arrow_text = isinstance(values, pd.Series) and _arrow_strings(values)
    if rows is not None and not arrow_text:
        values = values.iloc[rows] if isinstance(values, pd.Series) else np.asarray(values)[rows]
    v = cond.value
    if _is_numeric(values):
        left = _numbers(values)
        if cond.op == "in":
            opts = v if isinstance(v, list) else [v]
            try:
                nums = [float(o) for o in opts]
            except (TypeError, ValueError):
                raise RulesError(
                    f"condition on {cond.column!r}: 'in' values {opts} are not numbers"
                ) from None
            wanted = [_same_kind(left, x) for x in nums]
            if len(wanted) > 8:
                # kind="sort": NumPy's "table" kind (the default for integers) is ~20x slower.
                return np.isin(left, wanted, kind="sort")
            # A short list: one comparison per value, ORed (np.isin does the same plus
            # conversions: ~3x the time on 1M rows).
            hit: np.ndarray = left == wanted[0]
            for x in wanted[1:]:
                hit |= left == x
            return hit
        try:
            right = _same_kind(left, float(v))
        except (TypeError, ValueError):
            raise RulesError(
                f"condition on numeric column {cond.column!r}: {v!r} is not a number"
            ) from None
        mask: np.ndarray = {
            "==": np.equal,
            "!=": np.not_equal,
            "<": np.less,
            "<=": np.less_equal,
            ">": np.greater,
            ">=": np.greater_equal,
        }[cond.op](left, right)
        return mask
    if cond.op not in ("==", "!=", "in"):
        raise RulesError(f"condition on text column {cond.column!r}: only ==, != and in apply")
    texts = [str(o) for o in v] if cond.op == "in" and isinstance(v, list) else [str(v)]
    series = values if isinstance(values, pd.Series) else pd.Series(values)
    if arrow_text:
        # The Arrow buffers are compared as they are: no text copy, no Python strings.
        eq = _arrow_text_equal(pa.array(series), texts, rows)
    elif cond.op == "in":
        eq = series.astype("str").isin(texts).to_numpy(dtype=bool)
    else:
        eq = (series.astype("str") == texts[0]).to_numpy(dtype=bool, na_value=False)
    return ~eq if cond.op == "!=" else eq


def rule_masks(columns: dict[str, Any], rules: list[Rule], n: int) -> dict[str, np.ndarray]:
    """One boolean mask per rule."""
    out = {}
    for rule in rules:
        # Numeric conditions first, on every row (a comparison is cheaper than picking rows);
        # a text condition not stored by Arrow (Python strings) then only needs the rows
        # still matching (AND), often a fraction.
        conds = sorted(rule.when, key=lambda c: not _is_numeric(columns[c.column]))
        m = np.array(_cond_mask(columns[conds[0].column], conds[0]), dtype=bool).reshape(n)
        for cond in conds[1:]:
            values = columns[cond.column]
            # Arrow text is compared in place, every row at ~1 ns: cheaper than picking rows.
            by_rows = not _is_numeric(values) and not _arrow_strings(values)
            pos = np.flatnonzero(m) if by_rows else None
            if pos is not None and 2 * len(pos) < n:
                m[pos] = _cond_mask(values, cond, pos)
            else:
                m &= _cond_mask(values, cond)
        out[rule.name] = m
    return out
