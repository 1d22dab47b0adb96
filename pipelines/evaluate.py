"""Evaluation stage: the same metric keys every time, per class and per slice; the gates.

``evaluate`` returns a flat ``{name: float}`` (MLflow-ready, comparable run by run);
``baseline_metrics`` scores a trivial model on the same holdout (keys prefixed ``baseline_``);
``check_gates`` turns the candidate's, champion's and baseline's metrics into a ``GateResult``.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from sklearn.dummy import DummyClassifier
from sklearn.metrics import (
    ConfusionMatrixDisplay,
    accuracy_score,
    balanced_accuracy_score,
    f1_score,
    precision_recall_fscore_support,
)

from edgeloop.core.config import GateSettings, SchemaSettings, SliceSettings
from edgeloop.core.keys import METRIC_BASELINE_PREFIX


def slice_mask(df: pd.DataFrame, sl: SliceSettings) -> np.ndarray:
    """Rows of ``df`` in the slice."""
    col = df[sl.column]
    if sl.op == "in":
        values = sl.value if isinstance(sl.value, list) else [sl.value]
        inside: np.ndarray = col.isin(values).to_numpy()
        return inside
    ops = {
        "==": col.__eq__,
        "!=": col.__ne__,
        "<": col.__lt__,
        "<=": col.__le__,
        ">": col.__gt__,
        ">=": col.__ge__,
    }
    mask: np.ndarray = ops[sl.op](sl.value).fillna(False).to_numpy(dtype=bool)
    return mask


#: Metrics computed overall and per slice (any of them can be ``gates.metric``).
SCORES = ("accuracy", "balanced_accuracy", "macro_f1", "weighted_f1")

#: Prefix of the trivial baseline's metric keys (``baseline_macro_f1``, ...).
BASELINE_PREFIX = METRIC_BASELINE_PREFIX


def _scores(y_true: np.ndarray, y_pred: np.ndarray, classes: list[Any]) -> dict[str, float]:
    if len(y_true) == 0:
        return dict.fromkeys(SCORES, math.nan)
    with warnings.catch_warnings():
        # A slice may lack a class the model predicts: sklearn warns, the mean over the
        # classes present is still the balanced accuracy.
        warnings.simplefilter("ignore", UserWarning)
        balanced = float(balanced_accuracy_score(y_true, y_pred))
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "balanced_accuracy": balanced,
        "macro_f1": float(
            f1_score(y_true, y_pred, labels=classes, average="macro", zero_division=0)
        ),
        "weighted_f1": float(
            f1_score(y_true, y_pred, labels=classes, average="weighted", zero_division=0)
        ),
    }


def evaluate(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    frame: pd.DataFrame,
    schema: SchemaSettings,
    slices: list[SliceSettings],
) -> dict[str, float]:
    """Overall, per-class and per-slice metrics with fixed keys (NaN when a slice is empty)."""
    classes = list(schema.classes)
    out = {**_scores(y_true, y_pred, classes), "rows": float(len(y_true))}
    p, r, f, n = precision_recall_fscore_support(y_true, y_pred, labels=classes, zero_division=0)
    for i, c in enumerate(classes):
        out[f"class_{c}_precision"] = float(p[i])
        out[f"class_{c}_recall"] = float(r[i])
        out[f"class_{c}_f1"] = float(f[i])
        out[f"class_{c}_support"] = float(n[i])
    for sl in slices:
        m = slice_mask(frame, sl)
        for k, v in _scores(y_true[m], y_pred[m], classes).items():
            out[f"slice_{sl.name}_{k}"] = v
        out[f"slice_{sl.name}_rows"] = float(m.sum())
    return out


def baseline_metrics(
    y_train: np.ndarray,
    y_true: np.ndarray,
    frame: pd.DataFrame,
    schema: SchemaSettings,
    slices: list[SliceSettings],
    strategy: str,
    seed: int,
) -> dict[str, float]:
    """A trivial model's ``evaluate`` metrics, each key prefixed ``baseline_``.

    A ``DummyClassifier(strategy=strategy)`` (``most_frequent``: always the majority class;
    ``stratified``: random labels in the training proportions, seeded) is fitted on the training
    labels ``y_train`` and scored on the holdout rows ``frame`` / ``y_true``: the candidate's own
    rows, so the two are comparable.
    """
    dummy = DummyClassifier(strategy=strategy, random_state=seed)
    dummy.fit(np.zeros((len(y_train), 1)), y_train)
    y_pred = dummy.predict(np.zeros((len(y_true), 1)))
    scored = evaluate(y_true, y_pred, frame, schema, slices)
    return {f"{BASELINE_PREFIX}{k}": v for k, v in scored.items()}


@dataclass(frozen=True)
class GateCheck:
    """One gate: the value seen, the bound, and whether it held."""

    name: str
    value: float
    bound: float
    passed: bool
    detail: str


@dataclass(frozen=True)
class GateResult:
    """Every gate checked for one candidate."""

    checks: list[GateCheck] = field(default_factory=list)
    #: The trivial baseline the candidate was compared with ("" when none was).
    baseline: str = ""

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    @property
    def failed(self) -> list[GateCheck]:
        return [c for c in self.checks if not c.passed]

    def summary(self) -> str:
        if self.passed:
            return "all gates passed"
        return "; ".join(c.detail for c in self.failed)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"passed": self.passed, "checks": [asdict(c) for c in self.checks]}
        if self.baseline:
            out["baseline"] = self.baseline
        return out


def _floor(name: str, value: float, bound: float) -> GateCheck:
    ok = not math.isnan(value) and value >= bound
    shown = "n/a (no rows)" if math.isnan(value) else f"{value:.4f}"
    return GateCheck(
        name, value, bound, ok, f"{name}: {shown} {'>=' if ok else '<'} floor {bound:.4f}"
    )


def _not_judged(name: str, value: float, bound: float, rows: int, gates: GateSettings) -> GateCheck:
    return GateCheck(
        name,
        value,
        bound,
        True,
        f"{name}: not judged, {rows} holdout rows < min_slice_rows {gates.min_slice_rows}",
    )


def _lift(
    candidate: dict[str, float], baseline: dict[str, float], gates: GateSettings
) -> GateCheck:
    lift = gates.min_lift_over_baseline or 0.0
    cand, base = candidate[gates.metric], baseline[f"{BASELINE_PREFIX}{gates.metric}"]
    needed = base + lift
    ok = not math.isnan(cand) and cand >= needed - 1e-9  # float-safe "at least"
    return GateCheck(
        "min_lift_over_baseline",
        cand - base,
        lift,
        ok,
        f"min_lift_over_baseline: {gates.metric} {cand:.4f} vs baseline {gates.baseline}"
        f" {base:.4f} (lift {cand - base:+.4f}, required >= {lift:+.4f})",
    )


def _class_recall(
    candidate: dict[str, float],
    cls: str,
    bound: float,
    schema_classes: list[str],
    gates: GateSettings,
) -> GateCheck:
    name = f"class_{cls}_recall"
    if cls not in schema_classes:
        return GateCheck(
            name,
            math.nan,
            bound,
            False,
            f"{name}: class {cls!r} of gates.class_recall_floors is not in schema.classes"
            f" {schema_classes}",
        )
    value, rows = candidate[name], int(candidate.get(f"class_{cls}_support", 0))
    if rows < gates.min_slice_rows:
        return _not_judged(name, value, bound, rows, gates)
    ok = value >= bound
    return GateCheck(
        name,
        value,
        bound,
        ok,
        f"{name}: {value:.4f} {'>=' if ok else '<'} floor {bound:.4f}"
        f" ({rows} holdout rows of class {cls})",
    )


def check_gates(
    candidate: dict[str, float],
    champion: dict[str, float] | None,
    gates: GateSettings,
    baseline: dict[str, float] | None = None,
) -> GateResult:
    """Absolute floors, per-slice and per-class floors, the lift over a trivial baseline, and
    non-inferiority against the champion's metrics.

    All metric sets must come from the same holdout rows. ``baseline`` is ``baseline_metrics``'
    output; it is required when ``gates.min_lift_over_baseline`` is set. A slice or a class
    with fewer than ``gates.min_slice_rows`` holdout rows is "not judged" (recorded, passes).
    """
    checks = [
        _floor("min_accuracy", candidate["accuracy"], gates.min_accuracy),
        _floor("min_macro_f1", candidate["macro_f1"], gates.min_macro_f1),
    ]
    for name, bound in sorted(gates.slice_floors.items()):
        rows = int(candidate.get(f"slice_{name}_rows", 0))
        value = candidate[f"slice_{name}_{gates.metric}"]
        if rows < gates.min_slice_rows:
            checks.append(_not_judged(f"slice_{name}", value, bound, rows, gates))
            continue
        checks.append(_floor(f"slice_{name}", value, bound))
    classes = sorted({k[len("class_") : -len("_recall")] for k in candidate if _is_recall(k)})
    for cls, bound in sorted(gates.class_recall_floors.items()):
        checks.append(_class_recall(candidate, str(cls), bound, classes, gates))
    if gates.min_lift_over_baseline is not None:
        if baseline is None:
            raise ValueError("gates.min_lift_over_baseline is set: pass the baseline's metrics")
        checks.append(_lift(candidate, baseline, gates))
    if champion is not None:
        cand, champ = candidate[gates.metric], champion[gates.metric]
        delta = cand - champ
        ok = delta >= -gates.max_regression - 1e-9  # "at most this much worse", float-safe
        checks.append(
            GateCheck(
                "non_inferiority",
                delta,
                -gates.max_regression,
                ok,
                f"non_inferiority: {gates.metric} {cand:.4f} vs champion {champ:.4f}"
                f" (delta {delta:+.4f}, allowed >= {-gates.max_regression:+.4f})",
            )
        )
    return GateResult(checks, baseline=gates.baseline if baseline is not None else "")


def _is_recall(key: str) -> bool:
    return key.startswith("class_") and key.endswith("_recall")


def confusion_figure(y_true: np.ndarray, y_pred: np.ndarray, classes: list[Any], title: str) -> Any:
    """A matplotlib confusion-matrix figure (Agg backend; no display needed)."""
    # lazy: matplotlib costs ~1 s and only this figure needs it; selecting the Agg backend at
    # import time would impose it on every importer of this module.
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 5), dpi=100)
    ConfusionMatrixDisplay.from_predictions(
        y_true, y_pred, labels=classes, ax=ax, colorbar=False, cmap="Blues"
    )
    ax.set_title(title)
    fig.tight_layout()
    return fig
