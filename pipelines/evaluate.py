"""Evaluation stage: the same metric keys every time, per class and per slice; the gates.

``evaluate`` returns a flat ``{name: float}`` (MLflow-ready, comparable run by run);
``check_gates`` turns the candidate's and champion's metrics into a ``GateResult``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import (
    ConfusionMatrixDisplay,
    accuracy_score,
    f1_score,
    precision_recall_fscore_support,
)

from edgeloop.core.config import GateSettings, SchemaSettings, SliceSettings


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


def _scores(y_true: np.ndarray, y_pred: np.ndarray, classes: list[Any]) -> dict[str, float]:
    if len(y_true) == 0:
        return {"accuracy": math.nan, "macro_f1": math.nan, "weighted_f1": math.nan}
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
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
        return {"passed": self.passed, "checks": [asdict(c) for c in self.checks]}


def _floor(name: str, value: float, bound: float) -> GateCheck:
    ok = not math.isnan(value) and value >= bound
    shown = "n/a (no rows)" if math.isnan(value) else f"{value:.4f}"
    return GateCheck(
        name, value, bound, ok, f"{name}: {shown} {'>=' if ok else '<'} floor {bound:.4f}"
    )


def check_gates(
    candidate: dict[str, float], champion: dict[str, float] | None, gates: GateSettings
) -> GateResult:
    """Absolute floors, per-slice floors, and non-inferiority against the champion's metrics.

    Both metric sets must come from the same holdout rows.
    """
    checks = [
        _floor("min_accuracy", candidate["accuracy"], gates.min_accuracy),
        _floor("min_macro_f1", candidate["macro_f1"], gates.min_macro_f1),
    ]
    for name, bound in sorted(gates.slice_floors.items()):
        rows = int(candidate.get(f"slice_{name}_rows", 0))
        if rows < gates.min_slice_rows:
            checks.append(
                GateCheck(
                    f"slice_{name}",
                    candidate[f"slice_{name}_{gates.metric}"],
                    bound,
                    True,
                    f"slice_{name}: not judged, {rows} holdout rows < min_slice_rows {gates.min_slice_rows}",
                )
            )
            continue
        checks.append(_floor(f"slice_{name}", candidate[f"slice_{name}_{gates.metric}"], bound))
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
    return GateResult(checks)


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
