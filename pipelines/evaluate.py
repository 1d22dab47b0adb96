"""Evaluation stage: the same metric keys every time, per class and per slice; the gates.

``evaluate`` returns a flat ``{name: float}`` (MLflow-ready, comparable run by run), with the
holdout groups of ``holdout_groups`` when given (``reference_``, ``production_``, ``recent_`` and
``present_weighted_`` keys); ``baseline_metrics`` scores a trivial model on the same holdout (keys
prefixed ``baseline_``); ``check_gates`` turns the candidate's, champion's and baseline's metrics
into a ``GateResult``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from statistics import NormalDist
from typing import Any

import numpy as np
import pandas as pd
from sklearn.dummy import DummyClassifier, DummyRegressor
from sklearn.metrics import (
    ConfusionMatrixDisplay,
    accuracy_score,
    balanced_accuracy_score,
    f1_score,
    precision_recall_fscore_support,
)

from edgeloop.core.config import GateSettings, SchemaSettings, SliceSettings
from edgeloop.core.keys import (
    BATCH_ID,
    METRIC_BASELINE_PREFIX,
    METRIC_PRESENT_PREFIX,
    METRIC_PRODUCTION_PREFIX,
    METRIC_RECENT_PREFIX,
    METRIC_REFERENCE_PREFIX,
    REFERENCE_BATCH,
)


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
#: The regression metrics (``r2`` is the one a gate judges: higher is better, at most 1).
REGRESSION_SCORES = ("r2", "mae", "rmse")


def regression_scores(
    y_true: np.ndarray, y_pred: np.ndarray, weight: np.ndarray | None = None
) -> dict[str, float]:
    """R², MAE and RMSE of the rows (weighted like ``_scores``); R² is NaN when the labels do
    not vary (no variance to explain) or there are no rows."""
    y_true = np.asarray(y_true, dtype="float64")
    y_pred = np.asarray(y_pred, dtype="float64")
    w = np.ones(len(y_true)) if weight is None else np.asarray(weight, dtype="float64")
    keep = (w > 0) & ~np.isnan(y_true) & ~np.isnan(y_pred)
    y_true, y_pred, w = y_true[keep], y_pred[keep], w[keep]
    if not len(y_true) or w.sum() <= 0:
        return dict.fromkeys(REGRESSION_SCORES, math.nan)
    err = y_true - y_pred
    sse = float((w * err**2).sum())
    mean = float((w * y_true).sum() / w.sum())
    sst = float((w * (y_true - mean) ** 2).sum())
    return {
        "r2": 1.0 - sse / sst if sst > 0 else math.nan,
        "mae": float((w * np.abs(err)).sum() / w.sum()),
        "rmse": math.sqrt(sse / w.sum()),
    }


#: Prefix of the trivial baseline's metric keys (``baseline_macro_f1``, ...).
BASELINE_PREFIX = METRIC_BASELINE_PREFIX


def _scores(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    classes: list[Any],
    weight: np.ndarray | None = None,
) -> dict[str, float]:
    """``SCORES`` of the rows; with ``weight``, each row counts its weight (rows of weight 0 and
    a total weight of 0 count as no rows)."""
    if not classes:  # regression: the schema has no classes
        return regression_scores(y_true, y_pred, weight)
    if weight is not None:
        keep = weight > 0
        y_true, y_pred, weight = y_true[keep], y_pred[keep], weight[keep]
    if len(y_true) == 0:
        return dict.fromkeys(SCORES, math.nan)
    with warnings.catch_warnings():
        # A slice may lack a class the model predicts: sklearn warns, the mean over the
        # classes present is still the balanced accuracy.
        warnings.simplefilter("ignore", UserWarning)
        balanced = float(balanced_accuracy_score(y_true, y_pred, sample_weight=weight))
    f1 = {"labels": classes, "zero_division": 0, "sample_weight": weight}
    return {
        "accuracy": float(accuracy_score(y_true, y_pred, sample_weight=weight)),
        "balanced_accuracy": balanced,
        "macro_f1": float(f1_score(y_true, y_pred, average="macro", **f1)),
        "weighted_f1": float(f1_score(y_true, y_pred, average="weighted", **f1)),
    }


#: The holdout groups, by metric-key prefix (see ``holdout_groups``).
GROUP_PREFIXES = {
    "reference": METRIC_REFERENCE_PREFIX,
    "production": METRIC_PRODUCTION_PREFIX,
    "recent": METRIC_RECENT_PREFIX,
    "present_weighted": METRIC_PRESENT_PREFIX,
}


@dataclass(frozen=True)
class HoldoutGroups:
    """Row weights of the holdout's groups (one array per group, 0 = not in the group).

    ``reference``: the reference rows, alike. ``production``: every labeled production row;
    ``recent``: those of ``recent_batches``. In both, a batch weighs in proportion to its rows
    (its traffic) and a row within its batch by ``row_weight`` (1 / inclusion probability).
    ``present_weighted``: ``reference`` and ``recent`` mixed with shares ``reference_share``
    and ``1 - reference_share`` (renormalised when one side has no rows).
    """

    weights: dict[str, np.ndarray]
    recent_batches: list[str]
    reference_share: float

    def rows(self, group: str) -> int:
        return int((self.weights[group] > 0).sum())

    def effective_rows(self, group: str) -> float:
        """Kish's effective sample size, (sum w)^2 / sum w^2: what unequal weights leave."""
        w = self.weights[group]
        total = float((w * w).sum())
        return float(w.sum()) ** 2 / total if total > 0 else 0.0


def holdout_groups(
    frame: pd.DataFrame,
    batch_rows: Mapping[str, int],
    *,
    recent_batches: int,
    reference_share: float,
    row_weight: np.ndarray | None = None,
) -> HoldoutGroups:
    """The holdout groups of ``frame`` (the holdout rows, with their ``batch_id``).

    ``batch_rows``: every production batch of the dataset, in arrival order, with its number
    of rows (labeled or not). ``row_weight``: per holdout row, 1 / its inclusion probability
    (``None``: all 1). Without a ``batch_id`` column every row is a reference row.
    """
    n = len(frame)
    weight = np.ones(n) if row_weight is None else np.asarray(row_weight, dtype="float64")
    if BATCH_ID in frame.columns:
        batch = frame[BATCH_ID].astype("str").to_numpy()
    else:
        batch = np.full(n, REFERENCE_BATCH, dtype=object)
    reference = (batch == REFERENCE_BATCH).astype("float64")
    present_batches = set(batch.tolist())
    labeled = [b for b in batch_rows if b != REFERENCE_BATCH and b in present_batches]
    # Batches of the holdout the caller did not list come last (a caller passing no order).
    labeled += sorted(present_batches - set(labeled) - {REFERENCE_BATCH})
    recent = labeled[-recent_batches:] if recent_batches > 0 else []

    def traffic(batches: list[str]) -> np.ndarray:
        """Each batch's share in proportion to its rows, spread over its rows by weight."""
        out = np.zeros(n)
        sizes = {b: float(batch_rows.get(b, 0) or (batch == b).sum()) for b in batches}
        total = sum(sizes.values())
        for b in batches:
            inside = batch == b
            mass = float(weight[inside].sum())
            if total > 0 and mass > 0:
                out[inside] = weight[inside] / mass * sizes[b] / total
        return out

    production, latest = traffic(labeled), traffic(recent)
    ref = reference / reference.sum() if reference.sum() else reference
    share = reference_share if ref.sum() and latest.sum() else (1.0 if ref.sum() else 0.0)
    weights = {
        "reference": reference,
        "production": production,
        "recent": latest,
        "present_weighted": share * ref + (1.0 - share) * latest,
    }
    return HoldoutGroups(weights, recent, reference_share)


def group_metrics(
    y_true: np.ndarray, y_pred: np.ndarray, groups: HoldoutGroups, classes: list[Any]
) -> dict[str, float]:
    """``SCORES`` per holdout group, with its rows and effective rows, keys prefixed by group."""
    out: dict[str, float] = {}
    for group, prefix in GROUP_PREFIXES.items():
        w = groups.weights[group]
        for k, v in _scores(y_true, y_pred, classes, w).items():
            out[f"{prefix}{k}"] = v
        out[f"{prefix}rows"] = float(groups.rows(group))
        out[f"{prefix}effective_rows"] = round(groups.effective_rows(group), 3)
    return out


def evaluate(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    frame: pd.DataFrame,
    schema: SchemaSettings,
    slices: list[SliceSettings],
    groups: HoldoutGroups | None = None,
) -> dict[str, float]:
    """Overall, per-class and per-slice metrics with fixed keys (NaN when a slice is empty);
    with ``groups``, the metrics of each holdout group too (``group_metrics``)."""
    classes = list(schema.classes)
    out = {**_scores(y_true, y_pred, classes), "rows": float(len(y_true))}
    p, r, f, n = (
        precision_recall_fscore_support(y_true, y_pred, labels=classes, zero_division=0)
        if classes
        else ([], [], [], [])
    )
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
    if groups is not None:
        out.update(group_metrics(y_true, y_pred, groups, classes))
    return out


def baseline_metrics(
    y_train: np.ndarray,
    y_true: np.ndarray,
    frame: pd.DataFrame,
    schema: SchemaSettings,
    slices: list[SliceSettings],
    strategy: str,
    seed: int,
    train_frame: pd.DataFrame | None = None,
) -> dict[str, float]:
    """A trivial model's ``evaluate`` metrics, each key prefixed ``baseline_``.

    A ``DummyClassifier(strategy=strategy)`` (``most_frequent``: always the majority class;
    ``stratified``: random labels in the training proportions, seeded), for regression a
    ``DummyRegressor`` (``mean`` / ``median`` of the training target), is fitted on the training
    labels ``y_train`` and scored on the holdout rows ``frame`` / ``y_true``: the candidate's own
    rows, so the two are comparable. ``last_value`` (regression, ``schema.time``) needs
    ``train_frame``, the training rows in ``y_train``'s order (``last_value_baseline``).
    """
    if strategy == "last_value":
        if train_frame is None or schema.time is None:
            raise ValueError("the last_value baseline needs the training rows and schema.time")
        y_last = last_value_baseline(train_frame, y_train, frame, schema.time)
        scored = evaluate(y_true, y_last, frame, schema, slices)
        return {f"{BASELINE_PREFIX}{k}": v for k, v in scored.items()}
    dummy: Any = (
        DummyRegressor(strategy=strategy)
        if schema.is_regression
        else DummyClassifier(strategy=strategy, random_state=seed)
    )
    dummy.fit(np.zeros((len(y_train), 1)), y_train)
    y_pred = dummy.predict(np.zeros((len(y_true), 1)))
    scored = evaluate(y_true, y_pred, frame, schema, slices)
    return {f"{BASELINE_PREFIX}{k}": v for k, v in scored.items()}


def last_value_baseline(
    train: pd.DataFrame, y_train: np.ndarray, holdout: pd.DataFrame, time: str
) -> np.ndarray:
    """Per holdout row, the target of the latest training row at or before its time (the
    training mean where none is earlier or a time does not parse): a persistence forecast."""
    from pipelines.timecol import parse_time

    y = np.asarray(y_train, dtype="float64")
    fallback = float(np.nanmean(y)) if len(y) else math.nan
    known = pd.DataFrame({"t": parse_time(train[time]).to_numpy(), "y": y}).dropna()
    asked = pd.DataFrame({"t": parse_time(holdout[time]).to_numpy(), "i": np.arange(len(holdout))})
    out = np.full(len(holdout), fallback)
    timed = asked.dropna(subset=["t"]).sort_values("t", kind="stable")
    if len(known) and len(timed):
        merged = pd.merge_asof(timed, known.sort_values("t", kind="stable"), on="t")
        hit = merged["y"].notna().to_numpy()
        out[merged["i"].to_numpy()[hit]] = merged["y"].to_numpy()[hit]
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


def _floor(name: str, value: float, bound: float, where: str = "") -> GateCheck:
    ok = not math.isnan(value) and value >= bound
    shown = "n/a (no rows)" if math.isnan(value) else f"{value:.4f}"
    return GateCheck(
        name,
        value,
        bound,
        ok,
        f"{name}: {shown} {'>=' if ok else '<'} floor {bound:.4f}{f' ({where})' if where else ''}",
    )


def _group(metrics: dict[str, float], group: str) -> tuple[str, str]:
    """(key prefix, description) of a holdout group in ``metrics``; the overall holdout when
    the group has no rows there (or ``metrics`` predates the groups)."""
    prefix = GROUP_PREFIXES.get(group, "")
    rows = metrics.get(f"{prefix}rows", 0.0) if prefix else 0.0
    if not prefix or not rows or math.isnan(rows):
        note = "" if group == "overall" else f", no {group} rows"
        return "", f"overall holdout{note}"
    eff = metrics.get(f"{prefix}effective_rows", rows)
    return prefix, f"{group} holdout, {int(rows)} rows, effective {eff:.1f}"


def _versus_champion(
    name: str,
    candidate: dict[str, float],
    champion: dict[str, float],
    group: str,
    allowed: float,
    gates: GateSettings,
    delta_se: Mapping[str, float] | None,
) -> GateCheck:
    """The candidate fails when it is worse than the champion by more than ``allowed`` with
    confidence ``gates.non_inferiority_confidence``: ``delta + z * se < -allowed`` (one-sided;
    ``se`` the paired bootstrap error of ``delta_se``; without it, or at confidence 0, the point
    estimate decides)."""
    metric = gates.metric
    prefix, where = _group(candidate, group)
    cand, champ = candidate[f"{prefix}{metric}"], champion.get(f"{prefix}{metric}", math.nan)
    delta = cand - champ
    used = group if prefix else "overall"
    se = (delta_se or {}).get(used, math.nan)
    level = gates.non_inferiority_confidence
    z = NormalDist().inv_cdf(level) if level > 0 and not math.isnan(se) else 0.0
    bound = -allowed - z * (se if z else 0.0)
    ok = not math.isnan(delta) and delta >= bound - 1e-9  # "at most this much worse"
    noise = f" - {z:.2f} se {se:.4f} = {bound:+.4f}" if z else ""
    return GateCheck(
        name,
        delta,
        bound,
        ok,
        f"{name}: {metric} {cand:.4f} vs champion {champ:.4f} (delta {delta:+.4f},"
        f" allowed >= {-allowed:+.4f}{noise}; {where})",
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
    delta_se: Mapping[str, float] | None = None,
) -> GateResult:
    """Absolute floors, per-slice and per-class floors, the lift over a trivial baseline, and
    non-inferiority against the champion's metrics.

    All metric sets must come from the same holdout rows. ``baseline`` is ``baseline_metrics``'
    output; it is required when ``gates.min_lift_over_baseline`` is set. A slice or a class
    with fewer than ``gates.min_slice_rows`` holdout rows is "not judged" (recorded, passes).

    The floors judge ``gates.floors_on`` (the reference holdout: forgetting), non-inferiority
    judges ``gates.compare_on`` (the present-weighted holdout: a candidate that fixes what the
    traffic became is not rejected for the reference rows it trades), and
    ``reference_non_inferiority`` bounds the trade (``gates.reference_max_regression``). A group
    without rows (or metrics without groups) falls back to the overall holdout. ``delta_se``
    (``delta_standard_errors``, by group) widens both comparisons by the holdout's noise: a
    candidate is rejected on evidence that it is worse, not on a few unlucky rows.
    """
    floors, where = _group(candidate, gates.floors_on)
    if not floors and f"{METRIC_REFERENCE_PREFIX}rows" not in candidate:
        where = ""  # metrics without groups: the holdout is the only one
    if gates.metric == "r2":  # regression: the one floor it has
        floor = gates.min_r2
        checks = [] if floor is None else [_floor("min_r2", candidate[f"{floors}r2"], floor, where)]
    else:
        checks = [
            _floor("min_accuracy", candidate[f"{floors}accuracy"], gates.min_accuracy, where),
            _floor("min_macro_f1", candidate[f"{floors}macro_f1"], gates.min_macro_f1, where),
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
        checks.append(
            _versus_champion(
                "non_inferiority",
                candidate,
                champion,
                gates.compare_on,
                gates.max_regression,
                gates,
                delta_se,
            )
        )
        forgetting = gates.reference_max_regression
        has_reference = bool(_group(candidate, "reference")[0])
        if forgetting is not None and gates.compare_on != "reference" and has_reference:
            checks.append(
                _versus_champion(
                    "reference_non_inferiority",
                    candidate,
                    champion,
                    "reference",
                    forgetting,
                    gates,
                    delta_se,
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


def residual_figure(y_true: np.ndarray, y_pred: np.ndarray, title: str) -> Any:
    """A matplotlib figure of predicted against true values (regression's confusion matrix)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    y, p = np.asarray(y_true, dtype="float64"), np.asarray(y_pred, dtype="float64")
    fig, ax = plt.subplots(figsize=(6, 5), dpi=100)
    ax.scatter(y, p, s=8, alpha=0.5)
    finite = np.concatenate([y[np.isfinite(y)], p[np.isfinite(p)]])
    if len(finite):
        lo, hi = float(finite.min()), float(finite.max())
        ax.plot([lo, hi], [lo, hi], color="grey", linewidth=1)
    ax.set_xlabel("true")
    ax.set_ylabel("predicted")
    ax.set_title(title)
    fig.tight_layout()
    return fig
