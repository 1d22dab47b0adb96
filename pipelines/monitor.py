"""Monitoring stage: how far a scored batch has moved from the training reference.

``build_reference`` summarises the reference once (quantile bins and shares per numeric feature,
a sorted sample for the KS test, category counts, the class distribution of the target);
``feature_drift``, ``prediction_shift`` and ``confidence_stats`` compare one batch with it, and
``batch_report`` combines them with accuracy and agreement on the batch's labeled rows.

Plain functions, no Prefect or MLflow. Vectorised over NumPy: a count per quantile edge for
bins, ``value_counts`` for categories, ``np.bincount`` for histograms; no per-row Python and no
copy of the batch per feature (a numeric float64 column is read as a view). Inputs are never
modified.

Drift rule per feature (settings under ``monitoring``): PSI above ``psi_threshold``, or the
two-sample test (KS for numeric, chi-square for categorical) below ``p_value`` *and* PSI above
half the threshold (on large batches the test alone flags trivial shifts). A categorical value
the reference never had is drift on its own: the model's one-hot step encodes it as all zeros.

Regression: the reference target is profiled as a numeric column and the prediction shift is
PSI and KS of the predictions against it (predictions are narrower than labels, so that PSI has
a floor above 0 without drift: read its trend); labeled rows give MAE, RMSE, R² and the mean
residual; agreement is ``|champion - challenger| <= tolerance x scale`` (training target std).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, TypeAlias

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike, NDArray
from scipy.stats import chi2_contingency, ks_2samp

from edgeloop.core.config import MonitoringSettings, SchemaSettings
from edgeloop.core.errors import MonitoringError
from pipelines.performance import measured_errors

#: A column of values: a NumPy array, a pandas Series or a plain sequence.
Values: TypeAlias = NDArray[Any] | pd.Series | Sequence[Any]

#: Share given to an empty bin (reference or batch) so PSI stays finite.
EPSILON = 1e-4
#: How missing values and categories the reference never had are named in reports.
MISSING = "<missing>"
UNSEEN = "<unseen>"


# ---------------------------------------------------------------------- reference profile
@dataclass(frozen=True)
class NumericReference:
    """One numeric feature of the reference."""

    #: Inner quantile edges (sorted, unique): bin i holds ``edges[i-1] <= x < edges[i]``.
    edges: NDArray[np.float64]
    #: Reference share per bin, then the share of missing values (``len(edges) + 2`` entries).
    shares: NDArray[np.float64]
    #: Sorted non-missing reference values (sampled to ``reference_sample``) for the KS test.
    sample: NDArray[np.float64]


@dataclass(frozen=True)
class CategoricalReference:
    """One categorical feature of the reference (missing values count as a category)."""

    categories: tuple[str, ...]
    counts: NDArray[np.int64]
    shares: NDArray[np.float64]
    #: A ``schema.high_cardinality`` column: new values are expected, so one alone is not
    #: drift (PSI and the test still are).
    open_set: bool = False


@dataclass(frozen=True)
class ReferenceProfile:
    """Everything drift needs from the training reference, computed once."""

    rows: int
    features: tuple[str, ...]
    numeric: Mapping[str, NumericReference]
    categorical: Mapping[str, CategoricalReference]
    #: The schema's classes as text, and the reference's count of each (labeled rows only).
    classes: tuple[str, ...]
    class_counts: NDArray[np.int64]
    class_shares: NDArray[np.float64]
    seed: int
    sample_rows: int
    #: Regression: the reference target's bins and KS sample (labeled rows); None otherwise.
    target: NumericReference | None = None


def _readonly(a: NDArray[Any]) -> NDArray[Any]:
    # The profile is shared by every batch of a run: make accidental in-place edits fail loudly.
    a.setflags(write=False)
    return a


def _column(frame: pd.DataFrame, name: str, what: str) -> pd.Series:
    if name not in frame.columns:
        raise MonitoringError(
            f"{what} has no column {name!r} (columns: {', '.join(map(str, frame.columns))})"
        )
    return frame[name]


def _as_float(series: pd.Series, name: str) -> NDArray[np.float64]:
    """The column as float64 (a view when it already is; missing -> NaN)."""
    try:
        values: NDArray[np.float64] = series.to_numpy(dtype=np.float64, na_value=np.nan)
    except (TypeError, ValueError):
        raise MonitoringError(
            f"numeric feature {name!r} has non-numeric values (dtype {series.dtype})"
        ) from None
    return values


def _label(value: Any) -> str:
    """A class or category as text (1.0 read back from Parquet is class 1)."""
    if pd.isna(value):  # None, NaN and pd.NA (nullable Int64 labels, string columns) alike
        return MISSING
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value)


def _counts(values: Values) -> dict[str, int]:
    """Count per distinct value, as text (missing values under ``MISSING``)."""
    series = values if isinstance(values, pd.Series) else pd.Series(values, copy=False)
    out: dict[str, int] = {}
    # value_counts hashes the column once; only the (few) distinct values reach Python.
    for value, n in series.value_counts(dropna=False, sort=False).items():
        key = _label(value)
        out[key] = out.get(key, 0) + int(n)
    return out


def _bin_counts(values: NDArray[np.float64], edges: NDArray[np.float64]) -> NDArray[np.int64]:
    """Rows per quantile bin, then the missing count (``len(edges) + 2`` entries)."""
    n_missing = int(np.count_nonzero(np.isnan(values)))
    # Rows below each edge, one comparison pass per edge: at 1M rows and <= 100 edges this is
    # 5-10x faster than np.searchsorted + np.bincount (a binary search per row), needs no index
    # array, and NaN (never < an edge) needs no filtering copy.
    below = np.array([np.count_nonzero(values < e) for e in edges], dtype=np.int64)
    cumulative = np.concatenate([below, [len(values) - n_missing]])
    return np.append(np.diff(cumulative, prepend=0), n_missing)


def build_reference(
    frame: pd.DataFrame, schema: SchemaSettings, settings: MonitoringSettings, seed: int
) -> ReferenceProfile:
    """Summarise the labeled training reference once; every batch is compared with this."""
    n = len(frame)
    if n == 0:
        raise MonitoringError("the reference frame is empty: nothing to compare batches with")
    sample_idx: NDArray[np.int64] | None = None
    if settings.reference_sample and n > settings.reference_sample:
        # One seeded choice of rows, shared by every feature: runs and machines agree.
        rng = np.random.default_rng(seed)
        sample_idx = np.sort(rng.choice(n, settings.reference_sample, replace=False))
    probs = np.linspace(0.0, 1.0, settings.psi_bins + 1)[1:-1]

    def numeric_reference(values: NDArray[np.float64]) -> NumericReference:
        picked = values if sample_idx is None else values[sample_idx]
        picked = picked[~np.isnan(picked)]
        valid = values[~np.isnan(values)]
        # Quantile edges of the full reference; repeated edges (discrete values) collapse.
        edges = np.unique(np.quantile(valid, probs)) if len(valid) else np.empty(0)
        counts = _bin_counts(values, edges)
        return NumericReference(
            edges=_readonly(edges),
            shares=_readonly(counts / n),
            sample=_readonly(np.sort(picked)),
        )

    numeric: dict[str, NumericReference] = {}
    for name in schema.numeric:
        numeric[name] = numeric_reference(_as_float(_column(frame, name, "the reference"), name))
    categorical: dict[str, CategoricalReference] = {}
    for name in schema.categorical:
        counts_by = _counts(_column(frame, name, "the reference"))
        cats = tuple(sorted(counts_by))
        cat_counts = np.array([counts_by[c] for c in cats], dtype=np.int64)
        categorical[name] = CategoricalReference(
            categories=cats,
            counts=_readonly(cat_counts),
            shares=_readonly(cat_counts / n),
            open_set=name in schema.high_cardinality,
        )
    classes = tuple(_label(c) for c in schema.classes)
    target_ref = None
    if schema.is_regression:
        y = _as_float(_column(frame, schema.target, "the reference"), schema.target)
        ref = numeric_reference(y)
        # Shares among the labeled rows: predictions are never missing.
        known = 1.0 - float(ref.shares[-1])
        shares = ref.shares / (known if known > 0 else 1.0)
        target_ref = NumericReference(ref.edges, _readonly(shares), ref.sample)
        target: dict[str, int] = {}
    else:
        target = _counts(_column(frame, schema.target, "the reference"))
    class_counts = np.array([target.get(c, 0) for c in classes], dtype=np.int64)
    labeled = int(class_counts.sum())
    return ReferenceProfile(
        rows=n,
        features=tuple(schema.features),
        numeric=numeric,
        categorical=categorical,
        classes=classes,
        class_counts=_readonly(class_counts),
        class_shares=_readonly(class_counts / labeled if labeled else class_counts * 0.0),
        seed=seed,
        sample_rows=n if sample_idx is None else len(sample_idx),
        target=target_ref,
    )


# ---------------------------------------------------------------------- statistics
def psi(reference_shares: ArrayLike, batch_shares: ArrayLike) -> float:
    """Population stability index: sum of (b - r) * ln(b / r), empty bins at ``EPSILON``."""
    r = np.maximum(np.asarray(reference_shares, dtype=np.float64), EPSILON)
    b = np.maximum(np.asarray(batch_shares, dtype=np.float64), EPSILON)
    return float(np.sum((b - r) * np.log(b / r)))


def _chi_square(reference_counts: ArrayLike, batch_counts: ArrayLike) -> tuple[float, float]:
    """Two-sample chi-square (2 x k contingency) statistic and p-value."""
    table = np.vstack([reference_counts, batch_counts]).astype(np.float64)
    # A category neither side has tells nothing (and would make an expected count zero).
    table = table[:, table.sum(axis=0) > 0]
    if table.shape[1] < 2 or (table.sum(axis=1) == 0).any():
        return 0.0, 1.0
    res = chi2_contingency(table, correction=False)
    return float(res.statistic), float(res.pvalue)


def _drifted(value: float, p_value: float, settings: MonitoringSettings) -> bool:
    return value > settings.psi_threshold or (
        p_value < settings.p_value and value > settings.psi_threshold / 2
    )


@dataclass(frozen=True)
class FeatureDrift:
    """One feature of one batch against the reference."""

    feature: str
    kind: str  # numeric | categorical
    psi: float
    test: str  # ks | chi2
    statistic: float
    p_value: float
    drifted: bool
    rows: int
    missing_share: float
    #: Categories the reference never had (categorical only), most frequent first.
    unseen: tuple[str, ...] = ()
    unseen_share: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["unseen"] = list(self.unseen)
        return {k: _finite(v) for k, v in d.items()}


def _finite(v: Any) -> Any:
    return None if isinstance(v, float) and not math.isfinite(v) else v


def _numeric_drift(
    name: str, ref: NumericReference, series: pd.Series, settings: MonitoringSettings
) -> FeatureDrift:
    values = _as_float(series, name)
    n = len(values)
    counts = _bin_counts(values, ref.edges)
    value = psi(ref.shares, counts / n) if n else math.nan
    n_missing = int(counts[-1])
    valid = values[~np.isnan(values)] if n_missing else values
    stat, p = math.nan, math.nan
    if len(valid) and len(ref.sample):
        res = ks_2samp(ref.sample, valid)
        stat, p = float(res.statistic), float(res.pvalue)
    return FeatureDrift(
        feature=name,
        kind="numeric",
        psi=value,
        test="ks",
        statistic=stat,
        p_value=p,
        drifted=n > 0 and _drifted(value, p, settings),
        rows=n,
        missing_share=n_missing / n if n else 0.0,
    )


def _categorical_drift(
    name: str, ref: CategoricalReference, series: pd.Series, settings: MonitoringSettings
) -> FeatureDrift:
    n = len(series)
    counts_by = _counts(series)
    known = np.array([counts_by.get(c, 0) for c in ref.categories], dtype=np.int64)
    seen = set(ref.categories)
    unseen = sorted((c for c in counts_by if c not in seen), key=lambda c: -counts_by[c])
    unseen_counts = np.array([counts_by[c] for c in unseen], dtype=np.int64)
    n_unseen = int(unseen_counts.sum())
    # PSI pools the unseen values in one bin whose reference share is zero (EPSILON).
    value = psi(np.append(ref.shares, 0.0), np.append(known, n_unseen) / n) if n else math.nan
    # The test keeps every unseen category as its own column (reference count 0).
    stat, p = _chi_square(
        np.append(ref.counts, np.zeros(len(unseen), dtype=np.int64)),
        np.append(known, unseen_counts),
    )
    return FeatureDrift(
        feature=name,
        kind="categorical",
        psi=value,
        test="chi2",
        statistic=stat,
        p_value=p,
        drifted=n > 0 and ((n_unseen > 0 and not ref.open_set) or _drifted(value, p, settings)),
        rows=n,
        missing_share=counts_by.get(MISSING, 0) / n if n else 0.0,
        unseen=tuple(unseen),
        unseen_share=n_unseen / n if n else 0.0,
    )


def feature_drift(
    profile: ReferenceProfile, batch_frame: pd.DataFrame, settings: MonitoringSettings
) -> list[FeatureDrift]:
    """PSI and a two-sample test per feature, in the profile's feature order."""
    out = []
    for name in profile.features:
        series = _column(batch_frame, name, "the batch")
        if name in profile.numeric:
            out.append(_numeric_drift(name, profile.numeric[name], series, settings))
        else:
            out.append(_categorical_drift(name, profile.categorical[name], series, settings))
    return out


@dataclass(frozen=True)
class PredictionShift:
    """The predicted-class distribution of a batch against the reference's class distribution
    (regression: the predictions' quantile bins against the reference target's)."""

    psi: float
    statistic: float
    p_value: float
    reference_shares: dict[str, float]
    batch_shares: dict[str, float]
    #: ``chi2`` (classes) or ``ks`` (regression: shares keyed by bin, ``< edge`` / ``>= edge``).
    test: str = "chi2"

    def to_dict(self) -> dict[str, Any]:
        return {k: _finite(v) for k, v in asdict(self).items()}


def _numeric_shift(ref: NumericReference, predicted: Values) -> PredictionShift:
    """PSI and KS of numeric predictions against the reference target (missing ones left out)."""
    values = _as_float(pd.Series(predicted, copy=False), "predicted")
    values = values[~np.isnan(values)]
    n = len(values)
    counts = _bin_counts(values, ref.edges)[:-1]
    value = psi(ref.shares[:-1], counts / n) if n else 0.0
    res = ks_2samp(ref.sample, values) if n and len(ref.sample) else None
    stat, p = (math.nan, math.nan) if res is None else (float(res.statistic), float(res.pvalue))
    names = [f"< {e:.4g}" for e in ref.edges] + [f">= {ref.edges[-1]:.4g}" if len(ref.edges) else "all"]  # fmt: skip
    reference = {k: float(v) for k, v in zip(names, ref.shares[:-1], strict=True)}
    batch = {k: (int(c) / n if n else 0.0) for k, c in zip(names, counts, strict=True)}
    return PredictionShift(value, stat, p, reference, batch, test="ks")


def prediction_shift(profile: ReferenceProfile, predicted_classes: Values) -> PredictionShift:
    """PSI and chi-square of the predicted classes against the reference's labels (regression:
    ``_numeric_shift``)."""
    if profile.target is not None:
        return _numeric_shift(profile.target, predicted_classes)
    counts_by = _counts(predicted_classes)
    n = sum(counts_by.values())
    batch = np.array([counts_by.get(c, 0) for c in profile.classes], dtype=np.int64)
    # A prediction outside the schema's classes (or missing) goes to one extra bin.
    other = n - int(batch.sum())
    value = psi(np.append(profile.class_shares, 0.0), np.append(batch, other) / n) if n else 0.0
    stat, p = _chi_square(np.append(profile.class_counts, 0), np.append(batch, other))
    return PredictionShift(
        psi=value,
        statistic=stat,
        p_value=p,
        reference_shares={
            c: float(s) for c, s in zip(profile.classes, profile.class_shares, strict=True)
        },
        batch_shares={
            c: (int(k) / n if n else 0.0) for c, k in zip(profile.classes, batch, strict=True)
        },
    )


@dataclass(frozen=True)
class ConfidenceStats:
    """The champion's top-1 probability over a batch."""

    rows: int
    mean: float
    threshold: float
    #: Share of rows whose top-1 probability is below ``threshold``.
    low_share: float
    #: Histogram on [0, 1] in ``len(counts)`` equal bins (1.0 falls in the last one).
    counts: tuple[int, ...]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["counts"] = list(self.counts)
        return {k: _finite(v) for k, v in d.items()}


def confidence_stats(max_proba: ArrayLike, threshold: float, bins: int = 20) -> ConfidenceStats:
    """Mean top-1 probability, share under ``threshold`` and a histogram (NaN rows ignored)."""
    if bins < 1:
        raise MonitoringError(f"confidence histogram needs at least 1 bin, got {bins}")
    p = np.asarray(max_proba, dtype=np.float64)
    finite = np.isfinite(p)
    if not finite.all():
        p = p[finite]
    n = len(p)
    if n == 0:
        return ConfidenceStats(0, math.nan, threshold, math.nan, (0,) * bins)
    # Equal-width bins: an index is a multiply and a cast, no search needed.
    idx = np.clip((p * bins).astype(np.int64), 0, bins - 1)
    counts = np.bincount(idx, minlength=bins)
    return ConfidenceStats(
        rows=n,
        mean=float(p.mean()),
        threshold=threshold,
        low_share=float((p < threshold).mean()),
        counts=tuple(int(c) for c in counts),
    )


# ---------------------------------------------------------------------- the batch report
def class_codes(values: Values, classes: tuple[str, ...]) -> NDArray[np.int64]:
    """Index of each value in ``classes`` (compared as text); -1 unknown, -2 missing."""
    arr = values if hasattr(values, "dtype") else np.asarray(values, dtype=object)
    codes, uniques = pd.factorize(arr, use_na_sentinel=True)
    where = {c: i for i, c in enumerate(classes)}
    # Only the distinct values reach Python; the last entry serves factorize's -1 (missing).
    lut = np.array([where.get(_label(u), -1) for u in uniques] + [-2], dtype=np.int64)
    out: NDArray[np.int64] = lut[codes]
    return out


@dataclass(frozen=True)
class BatchReport:
    """Drift, prediction shift, confidence and (where labels exist) accuracy of one batch."""

    batch_id: str
    rows: int
    features: list[FeatureDrift]
    prediction: PredictionShift
    confidence: ConfidenceStats
    n_drifted: int
    drift_share: float
    drifted: bool
    labeled_rows: int = 0
    champion_accuracy: float | None = None
    challenger_accuracy: float | None = None
    agreement: float | None = None
    #: Regression, on labeled rows: ``champion_mae``, ``champion_rmse``, ``champion_r2``,
    #: ``champion_mean_residual`` and the same for ``challenger_`` (NaN ones left out).
    errors: dict[str, float] = field(default_factory=dict)

    @property
    def drifted_features(self) -> list[FeatureDrift]:
        """The drifted features, largest PSI first."""
        return sorted((f for f in self.features if f.drifted), key=lambda f: -f.psi)

    def to_dict(self) -> dict[str, Any]:
        return {
            "batch_id": self.batch_id,
            "rows": self.rows,
            "labeled_rows": self.labeled_rows,
            "n_features": len(self.features),
            "n_drifted": self.n_drifted,
            "drift_share": self.drift_share,
            "drifted": self.drifted,
            "drifted_features": [f.feature for f in self.drifted_features],
            "champion_accuracy": self.champion_accuracy,
            "challenger_accuracy": self.challenger_accuracy,
            "agreement": self.agreement,
            "errors": dict(self.errors),
            "prediction": self.prediction.to_dict(),
            "confidence": self.confidence.to_dict(),
            "features": [f.to_dict() for f in self.features],
        }


def batch_report(
    profile: ReferenceProfile,
    batch_frame: pd.DataFrame,
    champion_predicted: Values,
    champion_confidence: Values,
    settings: MonitoringSettings,
    *,
    min_confidence: float,
    challenger_predicted: Values | None = None,
    labels: Values | None = None,
    batch_id: str = "",
    scale: float = math.nan,
    tolerance: float = 0.5,
) -> BatchReport:
    """The whole report of one batch. Prediction, confidence, challenger and label arrays are
    aligned with ``batch_frame``'s rows; labels may be missing (None/NaN) on unlabeled rows.
    ``scale`` (NaN: the reference target's std) and ``tolerance``: regression agreement."""

    n = len(batch_frame)
    for what, arr in (
        ("champion predictions", champion_predicted),
        ("champion confidences", champion_confidence),
        ("challenger predictions", challenger_predicted),
        ("labels", labels),
    ):
        if arr is not None and len(arr) != n:
            raise MonitoringError(
                f"{what} have {len(arr)} rows, the batch has {n}: align them by row id"
            )
    drift = feature_drift(profile, batch_frame, settings)
    n_drifted = sum(f.drifted for f in drift)
    share = n_drifted / len(drift) if drift else 0.0
    errors: dict[str, float] = {}
    labeled_rows, champ_acc, chall_acc = 0, None, None
    if profile.target is not None:  # regression (module docstring)
        labeled_rows, errors, agreement = _regression(
            profile, champion_predicted, challenger_predicted, labels, scale, tolerance
        )
    else:
        champ = class_codes(champion_predicted, profile.classes)
        other = challenger_predicted
        chall = None if other is None else class_codes(other, profile.classes)
        if labels is not None:
            y = class_codes(labels, profile.classes)
            known = y != -2
            labeled_rows = int(known.sum())
            if labeled_rows:
                champ_acc = float((champ[known] == y[known]).mean())
                if chall is not None:
                    chall_acc = float((chall[known] == y[known]).mean())
        agreement = _agreement(champ, chall)
    return BatchReport(
        batch_id=batch_id,
        rows=n,
        features=drift,
        prediction=prediction_shift(profile, champion_predicted),
        confidence=confidence_stats(champion_confidence, min_confidence),
        n_drifted=n_drifted,
        drift_share=share,
        drifted=bool(drift) and share >= settings.drift_share_threshold,
        labeled_rows=labeled_rows,
        champion_accuracy=champ_acc,
        challenger_accuracy=chall_acc,
        agreement=agreement,
        errors=errors,
    )


def _agreement(champ: NDArray[np.int64], chall: NDArray[np.int64] | None) -> float | None:
    """Share of rows both models scored where they predict the same class."""
    if chall is None:
        return None
    both = chall != -2
    return float((champ[both] == chall[both]).mean()) if both.any() else None


def _regression(
    profile: ReferenceProfile,
    champion: Values,
    challenger: Values | None,
    labels: Values | None,
    scale: float,
    tolerance: float,
) -> tuple[int, dict[str, float], float | None]:
    """Labeled rows, the errors on them, and agreement within ``tolerance`` x ``scale``."""
    assert profile.target is not None
    a = _as_float(pd.Series(champion, copy=False), "predictions")
    b = None if challenger is None else _as_float(pd.Series(challenger, copy=False), "predictions")
    errors: dict[str, float] = {}
    labeled_rows = 0
    if labels is not None:
        y = pd.to_numeric(pd.Series(labels, copy=False), errors="coerce").to_numpy(np.float64)
        labeled_rows = int(np.isfinite(y).sum())
        for alias, pred in (("champion", a), ("challenger", b)):
            if pred is not None and labeled_rows:
                found = measured_errors(y, pred).items()
                errors |= {f"{alias}_{k}": v for k, v in found if k != "rows" and v == v}
    if b is None:
        return labeled_rows, errors, None
    both = np.isfinite(a) & np.isfinite(b)
    unit = scale if math.isfinite(scale) and scale > 0 else float(profile.target.sample.std())
    close = np.abs(a[both] - b[both]) <= tolerance * unit
    return labeled_rows, errors, float(close.mean()) if both.any() else None
