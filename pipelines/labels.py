"""Label intake: parse annotators' exports (Label Studio JSON or CSV), check them with GX.

``labels_from_csv`` and ``labels_from_json`` turn an export already read by
``edgeloop.data.readers.read_labels`` into rows ``row_id, label, labeled_at, annotator, source``;
``labels_suite`` is the GX suite written to ``expectations/labels.json``; ``check_labels``
validates with real GX (label in the class set, id queued, one answer per id) and splits good
rows from bad ones, each bad row with its reasons.

Regression (``schema.task: regression``): a label is a number. Label Studio answers come from a
``Number`` control (``value.number``; a ``TextArea``'s ``value.text`` is read too); text labels
are parsed as numbers, and one that does not parse is rejected ("label is not a number", the
report shows what was given); the suite checks the numeric type and ``schema.target_range``
(a label outside it is rejected, not clipped).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from edgeloop.core.config import SchemaSettings
from edgeloop.core.errors import LabelFileError
from pipelines.validate import validate_frame

COLUMNS = ["row_id", "label", "labeled_at", "annotator", "source"]
#: dtypes a regression label column may have once parsed (``numeric_labels`` gives float64).
NUMBERS = ["float64", "float32", "int64", "int32", "Float64", "Int64"]


def _choice(annotation: dict[str, Any]) -> Any:
    """The answer of one annotation: a Choices pick, a Number, or a TextArea's first text."""
    for item in annotation.get("result") or []:
        value = item.get("value") or {}
        choices = value.get("choices")
        if choices:
            return choices[0]
        if value.get("number") is not None:
            return value["number"]
        text = value.get("text")
        if text:
            return text[0] if isinstance(text, list) else text
    return None


def labels_from_csv(df: pd.DataFrame, path: Path) -> pd.DataFrame:
    """Rows of a CSV export (``row_id,label``) read from ``path`` (it names the file in errors)."""
    missing = [c for c in ("row_id", "label") if c not in df.columns]
    if missing:
        raise LabelFileError(f"{path}: CSV lacks column(s) {missing} (needs row_id,label)")
    if df.empty:
        raise LabelFileError(f"{path}: empty export (no label rows)")
    # A sheet handed back half done: rows left blank are unanswered, not wrong.
    df = df[df["label"].notna() & (df["label"].astype("str").str.strip() != "")]
    if df.empty:
        raise LabelFileError(f"{path}: no row has a label yet")
    out = df.reindex(columns=COLUMNS)
    out["source"] = out["source"].fillna(path.name)
    return out


def labels_from_json(text: str, path: Path) -> pd.DataFrame:
    """Rows of Label Studio's JSON export (tasks with ``annotations``), the text of ``path``."""
    try:
        tasks = json.loads(text)
    except json.JSONDecodeError as exc:
        raise LabelFileError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(tasks, list):
        raise LabelFileError(
            f"{path}: a Label Studio export is a JSON list of tasks, got {type(tasks).__name__}"
        )
    if not tasks:
        raise LabelFileError(f"{path}: empty export (no tasks)")
    rows = []
    for i, task in enumerate(tasks):
        if not isinstance(task, dict) or not isinstance(task.get("data"), dict):
            raise LabelFileError(f"{path}: item {i} is not a Label Studio task (no 'data' object)")
        row_id = task["data"].get("row_id")
        if row_id is None:
            raise LabelFileError(
                f"{path}: task {i} has no data.row_id (was it exported by edgeloop?)"
            )
        for ann in task.get("annotations") or []:
            if ann.get("was_cancelled"):
                continue
            rows.append(
                {
                    "row_id": str(row_id),
                    "label": _choice(ann),
                    "labeled_at": ann.get("created_at") or ann.get("updated_at"),
                    "annotator": str(ann.get("completed_by", "")),
                    "source": path.name,
                }
            )
    if not rows:
        raise LabelFileError(f"{path}: {len(tasks)} task(s) but no completed annotation")
    return pd.DataFrame(rows, columns=COLUMNS)


def numeric_labels(labels: pd.Series) -> pd.Series:
    """Regression labels as float64: numbers and text that parses as one; NaN where a label is
    missing or is not a number. "1,5" is not a number (a decimal comma or a thousands
    separator? guessing could change the value tenfold): it is rejected, not read."""

    def parse(v: Any) -> float:
        if v is None or isinstance(v, bool):
            return np.nan
        if isinstance(v, (int, float, np.integer, np.floating)):
            return float(v)
        text = str(v).strip()
        try:
            return float(text)
        except ValueError:
            return np.nan

    out = labels.map(parse).astype("float64")
    # inf parses ("inf", 1e400) but is no label anyone gave: treat it as not a number.
    return out.where(np.isfinite(out))


def coerce_labels(labels: pd.Series, schema: SchemaSettings) -> pd.Series:
    """Text labels to the configured classes' type ("7" -> 7); unknown labels stay as they are.
    Regression: ``numeric_labels``."""
    if schema.is_regression:
        return numeric_labels(labels)
    by_text = {str(c): c for c in schema.classes}

    def key(v: Any) -> str:
        text = str(v).strip()
        try:  # "1.0" from a spreadsheet is the class 1
            f = float(text)
        except ValueError:
            return text
        return str(int(f)) if f.is_integer() else text

    return labels.map(lambda v: by_text.get(key(v), v) if v is not None else v).astype("object")


def labels_suite(schema: SchemaSettings) -> dict[str, Any]:
    """The GX suite for label imports (``queued_ids`` is a suite parameter filled at run time)."""

    def e(kind: str, **kw: Any) -> dict[str, Any]:
        return {"type": kind, "kwargs": kw}

    if schema.is_regression:
        values = [e("expect_column_values_to_be_in_type_list", column="label", type_list=NUMBERS)]
        if schema.target_range is not None:
            low, high = schema.target_range
            values.append(
                e(
                    "expect_column_values_to_be_between",
                    column="label",
                    min_value=float(low),
                    max_value=float(high),
                )
            )
    else:
        values = [
            e("expect_column_values_to_be_in_set", column="label", value_set=list(schema.classes))
        ]
    return {
        "name": "labels",
        "meta": {
            "note": "Checks every label import. queued_ids is supplied by edgeloop at run time."
        },
        "expectations": [
            e("expect_table_columns_to_match_set", column_set=COLUMNS, exact_match=True),
            e("expect_column_values_to_not_be_null", column="row_id"),
            e("expect_column_values_to_not_be_null", column="label"),
            *values,
            e(
                "expect_column_values_to_be_in_set",
                column="row_id",
                value_set={"$PARAMETER": "queued_ids"},
            ),
            # Exact repeats are dropped before this check: what is left twice is a conflict.
            e("expect_column_values_to_be_unique", column="row_id"),
        ],
    }


@dataclass(frozen=True)
class LabelCheck:
    """Labels split by the suite: good rows to add, bad rows (with reasons) to report."""

    good: pd.DataFrame
    bad: pd.DataFrame
    repeats_dropped: int
    failed: list[str]


_REASON = {
    ("expect_column_values_to_be_in_set", "label"): "label not in the class set",
    ("expect_column_values_to_be_between", "label"): "label outside schema.target_range",
    ("expect_column_values_to_be_in_set", "row_id"): "id was never queued",
    ("expect_column_values_to_be_unique", "row_id"): "conflicting labels for the same id",
    ("expect_column_values_to_not_be_null", "label"): "no label",
    ("expect_column_values_to_not_be_null", "row_id"): "no id",
}


def check_labels(
    labels: pd.DataFrame, schema: SchemaSettings, suite: dict[str, Any], queued_ids: list[str]
) -> LabelCheck:
    """Validate with GX; every row failing any row-level expectation is bad, with its reasons."""
    frame = labels.copy()
    given = frame["label"]
    frame["label"] = coerce_labels(given, schema)
    before = len(frame)
    keep = ~frame.duplicated(subset=["row_id", "label"])
    frame, given = frame[keep].reset_index(drop=True), given[keep].reset_index(drop=True)
    report = validate_frame(
        frame, suite, batch="labels", parameters={"queued_ids": list(queued_ids)}
    )
    table_level = [f for f in report.failed if not f.row_level]
    if table_level:
        raise LabelFileError(
            "labels do not have the expected shape: " + "; ".join(f.describe() for f in table_level)
        )
    reasons = np.full(len(frame), "", dtype=object)
    # A regression label that was given but is not a number is null once parsed: say so.
    not_a_number = (given.notna() & frame["label"].isna()).to_numpy()
    for f in report.failed:
        why = _REASON.get((f.expectation, f.column or ""), f.short)
        rows = np.asarray(f.rows, dtype="int64")
        if why == "no label" and schema.is_regression:
            for r in rows:
                reasons[r] += "; " + ("label is not a number" if not_a_number[r] else why)
            continue
        reasons[rows] = reasons[rows] + ("; " + why)
    bad_mask = reasons != ""
    # The report shows what was given (the parsed value of a non-number is NaN).
    shown = (
        frame.assign(label=given.astype("object").where(given.notna(), None))
        if schema.is_regression
        else frame
    )
    bad = shown[bad_mask].assign(reason=[r.lstrip("; ") for r in reasons[bad_mask]])
    return LabelCheck(
        frame[~bad_mask].copy(), bad, before - len(frame), [f.describe() for f in report.failed]
    )
