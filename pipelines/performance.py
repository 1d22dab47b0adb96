"""Label-free performance estimates: confidence-based performance estimation (CBPE).

A model's top-1 confidence says how likely each prediction is to be right, but a raw
``predict_proba`` is rarely calibrated (a random forest's averaged votes are under-confident).
``fit_calibration`` learns the map top-1 confidence -> P(correct) on held-out labeled rows with
an isotonic regression (monotone, no shape assumed: scikit-learn's ``IsotonicRegression``, the
same fit ``CalibratedClassifierCV(method="isotonic")`` uses); ``estimate_accuracy`` applies it to
a batch that has no labels and returns the batch's expected accuracy, the mean calibrated
confidence, with an approximate interval. ``estimate_macro_f1`` does the same for macro-F1
from the calibrated top-1 probability and the model's other class probabilities.

The method is NannyML's CBPE (Confidence-Based Performance Estimation,
https://nannyml.readthedocs.io/en/stable/how_it_works/performance_estimation.html): calibrate on
a reference period, then the expected confusion matrix of an unlabeled period is the sum of its
calibrated probabilities. It holds under covariate shift as long as the calibration P(correct |
confidence) holds, and it cannot see concept drift (the same input now meaning another class):
an estimate informs (asks for labels, flags a likely regression), it never decides alone.

A calibration is plain data (``ConfidenceCalibration``: the isotonic breakpoints) so a model
version can carry it as a small JSON file; ``calibrate`` with ``None`` falls back to the raw
confidence (flagged ``calibrated=False``) for versions that have none.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from itertools import pairwise
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray
from sklearn.isotonic import IsotonicRegression

from edgeloop.core.errors import MonitoringError

#: Format of ``ConfidenceCalibration.to_dict`` (bumped when the JSON changes shape).
FORMAT_VERSION = 1
METHOD = "isotonic"
#: Normal quantile of the default 95 % interval.
Z_95 = 1.959963984540054
#: Fitting rows are kept as counts per confidence cell of this width (the JSON stays small
#: whatever the holdout's size); the interval's bootstrap refits on them.
CELL_WIDTH = 0.01
#: Bootstrap refits of the calibration behind an estimate's interval (seeded: reproducible).
BOOTSTRAP = 100


@dataclass(frozen=True)
class ConfidenceCalibration:
    """An isotonic map from top-1 confidence to P(correct), fitted on ``rows`` labeled rows.

    ``x``/``y`` are the breakpoints (``IsotonicRegression.X_thresholds_`` / ``y_thresholds_``);
    between them the map is linear, outside them constant: ``np.interp`` reproduces
    ``IsotonicRegression.predict`` with ``out_of_bounds="clip"`` exactly.
    """

    x: tuple[float, ...]
    y: tuple[float, ...]
    rows: int
    #: Share of the fitting rows the model got right, and their mean raw confidence.
    accuracy: float
    mean_confidence: float
    #: The fitting rows as (confidence cell, rows, rows right): what the interval resamples.
    cells: tuple[tuple[float, int, int], ...] = ()
    method: str = METHOD

    def apply(self, confidence: ArrayLike) -> NDArray[np.float64]:
        """Calibrated P(correct) per row (NaN stays NaN)."""
        c = np.asarray(confidence, dtype=np.float64)
        out: NDArray[np.float64] = np.interp(c, np.asarray(self.x), np.asarray(self.y))
        out[np.isnan(c)] = np.nan
        return out

    def to_dict(self) -> dict[str, Any]:
        out = {**asdict(self), "x": list(self.x), "y": list(self.y)}
        out["cells"] = [list(c) for c in self.cells]
        return {"format": FORMAT_VERSION, **out}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ConfidenceCalibration:
        """Read back ``to_dict``'s JSON; a file of another shape is a ``MonitoringError``."""
        try:
            fmt = int(data.get("format", 0))
            if fmt != FORMAT_VERSION or data.get("method") != METHOD:
                raise ValueError(f"format {fmt}, method {data.get('method')!r}")
            x = tuple(float(v) for v in data["x"])
            y = tuple(float(v) for v in data["y"])
            if not x or len(x) != len(y) or any(b < a for a, b in pairwise(x)):
                raise ValueError("breakpoints are empty, of different lengths or not sorted")
            if any(not 0.0 <= v <= 1.0 for v in y) or any(b < a for a, b in pairwise(y)):
                raise ValueError("calibrated values are outside [0, 1] or not increasing")
            cells = tuple((float(c), int(n), int(k)) for c, n, k in data.get("cells", ()))
            if any(n < 1 or not 0 <= k <= n for _, n, k in cells):
                raise ValueError("a cell has no rows or more right than rows")
            return cls(
                x=x,
                y=y,
                rows=int(data["rows"]),
                accuracy=float(data["accuracy"]),
                mean_confidence=float(data["mean_confidence"]),
                cells=cells,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise MonitoringError(
                f"not a confidence calibration (format {FORMAT_VERSION}, method {METHOD!r}): {exc}"
            ) from None


def top1_confidence(proba: ArrayLike) -> NDArray[np.float64]:
    """The largest class probability of each row (what score files call ``confidence``)."""
    p = np.asarray(proba, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] == 0:
        raise MonitoringError(f"class probabilities must be rows x classes, got shape {p.shape}")
    out: NDArray[np.float64] = p.max(axis=1)
    return out


def fit_calibration(confidence: ArrayLike, correct: ArrayLike) -> ConfidenceCalibration:
    """Isotonic fit of ``correct`` (1 when the top-1 prediction was right) on ``confidence``.

    Fit on rows the model did not train on (the holdout): on its own training rows a forest is
    right almost always, whatever its confidence says. Rows with a missing confidence are left
    out. The fitted map is increasing, in [0, 1], and its mean over the fitting rows equals their
    accuracy (an isotonic fit preserves the mean).
    """
    c = np.asarray(confidence, dtype=np.float64)
    ok = np.asarray(correct, dtype=np.float64)
    if c.shape != ok.shape or c.ndim != 1:
        raise MonitoringError(
            f"confidence ({c.shape}) and correct ({ok.shape}) must be 1-d and aligned"
        )
    if not np.isin(ok, (0.0, 1.0)).all():
        raise MonitoringError("correct must be 1 (the top-1 prediction was right) or 0 per row")
    keep = ~np.isnan(c)
    c, ok = c[keep], ok[keep]
    if len(c) == 0:
        raise MonitoringError("no rows with a confidence to calibrate on")
    iso = _isotonic().fit(c, ok)
    cell = np.rint(np.clip(c, 0.0, 1.0) / CELL_WIDTH).astype(np.int64)
    rows = np.bincount(cell)
    right = np.bincount(cell, weights=ok)
    used = np.flatnonzero(rows)
    return ConfidenceCalibration(
        x=tuple(float(v) for v in iso.X_thresholds_),
        y=tuple(float(v) for v in iso.y_thresholds_),
        rows=len(c),
        accuracy=float(ok.mean()),
        mean_confidence=float(c.mean()),
        cells=tuple(
            (round(float(j * CELL_WIDTH), 6), int(rows[j]), round(float(right[j]))) for j in used
        ),
    )


def model_calibration(model: Any, x: Any, y_true: ArrayLike) -> ConfidenceCalibration:
    """``fit_calibration`` of a fitted classifier on held-out rows ``x`` with labels ``y_true``.

    Confidence and correctness as a score file has them: the top-1 probability, and whether
    the class of the largest probability (not ``predict``, which may differ) is the label.
    """
    proba = np.asarray(model.predict_proba(x), dtype=np.float64)
    classes = np.asarray([str(c) for c in getattr(model, "classes_", range(proba.shape[1]))])
    labels = np.asarray([str(v) for v in np.asarray(y_true).tolist()])
    if len(labels) != len(proba):
        raise MonitoringError(f"{len(labels)} labels for {len(proba)} rows of probabilities")
    correct = classes[proba.argmax(axis=1)] == labels
    return fit_calibration(top1_confidence(proba), correct)


def _isotonic() -> IsotonicRegression:
    return IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True, out_of_bounds="clip")


def calibrate(
    confidence: ArrayLike, calibration: ConfidenceCalibration | None
) -> NDArray[np.float64]:
    """Calibrated P(correct) per row; the raw confidence when there is no calibration."""
    if calibration is None:
        raw: NDArray[np.float64] = np.clip(np.asarray(confidence, dtype=np.float64), 0.0, 1.0)
        return raw
    return calibration.apply(confidence)


@dataclass(frozen=True)
class AccuracyEstimate:
    """A batch's estimated accuracy without labels, and how far off it may be."""

    estimate: float
    #: Standard error: the batch's own sampling spread (sum p(1-p) / n^2) plus the spread of the
    #: estimate over bootstrap refits of the calibration (wide where the fitting rows were few).
    std_error: float
    low: float
    high: float
    rows: int
    #: False: raw confidence (the version has no calibration): usually biased, read with care.
    calibrated: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def estimate_accuracy(
    confidence: ArrayLike,
    calibration: ConfidenceCalibration | None,
    *,
    z: float = Z_95,
    bootstrap: int = BOOTSTRAP,
    seed: int = 0,
) -> AccuracyEstimate | None:
    """CBPE accuracy of a batch: the mean calibrated top-1 confidence (None: no scored rows).

    The interval is approximate. If the calibration holds on this batch, the realised accuracy
    of its n rows is a sum of independent Bernoulli(p_i): variance sum p_i(1-p_i) / n^2. The
    calibration itself was fitted on a sample: ``bootstrap`` refits on resampled fitting rows
    (seeded) give the estimate's spread from that (at least the Agresti-Coull binomial error of
    the fitting rows' accuracy). Neither term covers a calibration that no longer holds (concept drift, a
    new kind of input): that is what labels are for.
    """
    p = calibrate(confidence, calibration)
    c = np.asarray(confidence, dtype=np.float64)
    known = ~np.isnan(p)
    p, c = p[known], c[known]
    n = len(p)
    if n == 0:
        return None
    est = float(p.mean())
    var = float((p * (1.0 - p)).sum()) / n**2
    if calibration is not None and calibration.rows:
        # The calibration's level is known to about a binomial error on its m rows. Agresti &
        # Coull's adjusted proportion (k + z²/2) / (m + z²) keeps that error honest when the
        # holdout had no mistake or one (the plain k / m would call it exact).
        m = calibration.rows + z * z
        a = (calibration.accuracy * calibration.rows + z * z / 2) / m
        spread = a * (1.0 - a) / m
        if calibration.cells and bootstrap > 1:
            boot = _bootstrap(c, calibration, bootstrap, seed)
            spread = max(spread, float(np.var(boot, ddof=1)))
        var += spread
    se = math.sqrt(var)
    return AccuracyEstimate(
        estimate=est,
        std_error=se,
        low=max(0.0, est - z * se),
        high=min(1.0, est + z * se),
        rows=n,
        calibrated=calibration is not None,
    )


def _bootstrap(
    confidence: NDArray[np.float64], calibration: ConfidenceCalibration, times: int, seed: int
) -> NDArray[np.float64]:
    """The batch's estimate under ``times`` calibrations refitted on resampled fitting rows.

    Works on counts (the calibration's cells, the batch's confidences rounded to the same
    cells), so its cost does not grow with the holdout or the batch.
    """
    cells = np.asarray(calibration.cells, dtype=np.float64)
    at, rows, right = cells[:, 0], cells[:, 1], cells[:, 2]
    # Each fitting row is one of 2 * cells outcomes (cell, right or wrong): a row bootstrap
    # draws their counts from one multinomial.
    share = np.r_[right, rows - right] / rows.sum()
    x = np.r_[at, at]
    y = np.r_[np.ones(len(at)), np.zeros(len(at))]
    batch_cell = np.rint(np.clip(confidence, 0.0, 1.0) / CELL_WIDTH).astype(np.int64)
    counts = np.bincount(batch_cell)
    where = np.flatnonzero(counts)
    grid, weight = where * CELL_WIDTH, counts[where] / len(confidence)
    rng = np.random.default_rng(seed)
    draws = rng.multinomial(int(rows.sum()), share, size=times)
    out = np.empty(times)
    for b in range(times):
        w = draws[b]
        keep = w > 0
        iso = _isotonic().fit(x[keep], y[keep], sample_weight=w[keep])
        out[b] = float(iso.predict(grid) @ weight)
    return out


def estimate_macro_f1(
    proba: ArrayLike,
    calibration: ConfidenceCalibration | None,
    classes: Sequence[Any] | None = None,
) -> float | None:
    """CBPE macro-F1 of a batch from its class probabilities (rows x classes).

    Each row's predicted class (its argmax) is right with the calibrated top-1 probability p;
    the remaining 1 - p is spread over the other classes in proportion to the model's own
    probabilities. Summed over the batch these give each class's expected true positives, false
    positives and false negatives, and F1 = 2TP / (2TP + FP + FN) as in CBPE (a ratio of
    expectations). Classes neither predicted nor expected are left out of the mean.
    """
    p = np.asarray(proba, dtype=np.float64)
    top = top1_confidence(p)
    keep = ~np.isnan(top)
    p, top = p[keep], top[keep]
    if len(p) == 0:
        return None
    k = p.shape[1]
    if classes is not None and len(classes) != k:
        raise MonitoringError(f"{len(classes)} classes for {k} probability columns")
    pred = p.argmax(axis=1)
    right = calibrate(top, calibration)
    rest = p.copy()
    rest[np.arange(len(p)), pred] = 0.0
    others = rest.sum(axis=1)
    # Rows whose top-1 probability is 1: the rest is spread evenly over the other classes.
    even = np.full_like(rest, 1.0 / max(k - 1, 1))
    even[np.arange(len(p)), pred] = 0.0
    share = np.where(others[:, None] > 0, rest / np.where(others > 0, others, 1.0)[:, None], even)
    truth = share * (1.0 - right)[:, None]  # P(y = j) for j != pred
    truth[np.arange(len(p)), pred] = right
    onehot = np.zeros_like(p)
    onehot[np.arange(len(p)), pred] = 1.0
    tp = (onehot * truth).sum(axis=0)
    fp = (onehot * (1.0 - truth)).sum(axis=0)
    fn = ((1.0 - onehot) * truth).sum(axis=0)
    denom = 2 * tp + fp + fn
    used = denom > 1e-12
    if not used.any():
        return None
    return float((2 * tp[used] / denom[used]).mean())


#: Why a regression project has no label-free estimates (said once, in the monitoring output).
REGRESSION_NOTE = (
    "label-free performance estimates (CBPE) calibrate a classifier's confidence and do not"
    " apply to a regression target: skipped; MAE, RMSE and R² are measured on the labeled rows"
    " where labels exist"
)


def measured_errors(y_true: ArrayLike, predicted: ArrayLike) -> dict[str, float]:
    """MAE, RMSE, R² and the mean residual (label minus prediction: the bias, whose drift says
    the model is off in one direction) over the rows where both are known, and their count.
    R² is NaN on fewer than two rows or constant labels (no spread to explain)."""
    y = np.asarray(y_true, dtype=np.float64)
    p = np.asarray(predicted, dtype=np.float64)
    if y.shape != p.shape:
        raise MonitoringError(f"{len(y)} labels for {len(p)} predictions")
    known = np.isfinite(y) & np.isfinite(p)
    y, p = y[known], p[known]
    n = len(y)
    if n == 0:
        return {"rows": 0.0, "mae": math.nan, "rmse": math.nan, "r2": math.nan,
                "mean_residual": math.nan}  # fmt: skip
    residual = y - p
    sst = float(((y - y.mean()) ** 2).sum())
    sse = float((residual**2).sum())
    return {
        "rows": float(n),
        "mae": float(np.abs(residual).mean()),
        "rmse": math.sqrt(sse / n),
        "r2": 1.0 - sse / sst if n > 1 and sst > 0 else math.nan,
        "mean_residual": float(residual.mean()),
    }
