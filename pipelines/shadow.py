"""Shadow evaluation: champion vs challenger on the same rows, and the promotion rule.

**The evidence** (``shadow.metric: accuracy``). For every row scored by both models after the
challenger was deployed, ``d_i = 1{challenger right} - 1{champion right}``. Only some rows are
labeled, each with a known inclusion probability ``pi_i`` (edge cases and rows that came with
their label: 1; the evaluation sample: its ``q_i``). The Horvitz–Thompson terms
``Z_i = d_i / pi_i`` on labeled rows and 0 on the others have expectation ``d_i`` for each row
(Horvitz & Thompson, JASA 1952), so ``mean(Z)`` is unbiased for the challenger-minus-champion
accuracy over *all* the rows, not over the labeled ones only, and every labeled row counts,
edge cases included. Where the two models predict the same class ``d_i = 0`` whatever the
truth: those rows' ``Z_i`` is 0, labeled or not, and the evidence lives in the disagreements.

**The decision**: an always-valid confidence sequence (CS) on that mean: the asymptotic CS of
Waudby-Smith, Arbour, Sinha, Kennedy & Ramdas, "Time-uniform central limit theory and
asymptotic confidence sequences", Annals of Statistics 52(6), 2024 (doi:10.1214/24-AOS2408):
the Gaussian-mixture boundaries of Howard, Ramdas, McAuliffe & Sekhon (Annals of Statistics
2021) with the running standard deviation ``sigma_t`` of the terms in place of the unknown one.
Each bound is one-sided, at level ``alpha = 1 - shadow.confidence``: the lower bound is
``mu_t - sigma_t * s / t`` where ``s`` solves ``2 / sqrt(1 + rho² t) * exp(rho² s² / (2 (1 +
rho² t))) * Phi(rho s / sqrt(1 + rho² t)) = 1 / alpha`` (the half-normal mixture martingale
meeting Ville's bound), the upper bound likewise. So the chance that the lower bound is *ever*
above the true delta, at any number of rows, is about ``alpha`` or less (its martingale form
covers the running average of the ``d_i`` when the traffic changes over time). ``rho`` is tuned
so that the bounds are tightest at ``shadow.cs_tuned_rows`` rows. Because the bounds hold
uniformly, the rule may be checked after every batch and every scheduled run without inflating
false promotions. ``decide``: promote when the lower bound is above
``shadow.min_delta_lower_bound`` and every slice floor holds, keep when the upper bound is below
it, otherwise "need about N more labels (≈ D days at the current labeling rate)".

For display: each model's accuracy (Hájek: labeled rows weighted by ``1/pi``), the one-look
normal interval on the delta, McNemar's exact test on the labeled rows, the agreement rate.
``shadow.metric: macro_f1`` keeps the earlier fixed-sample rule: a paired bootstrap interval on
the labeled rows, at least ``shadow.min_samples`` of them.

**Regression** (``shadow.metric: abs_error``): the same sequential rule on ``d_i = (|y_i -
champion_i| - |y_i - challenger_i|) / scale`` clipped to [-1, 1] (positive: the challenger is
closer), ``scale`` the training target's standard deviation (the champion's; the labels' when
it is unknown). The clip keeps each term bounded, as the accuracy terms are, so one wild label
cannot swing the sequence; since ``| |y-a| - |y-b| | <= |a-b|`` a row where the two predictions
are within ``scale`` of each other is never clipped. "Disagreement" is ``|champion_i -
challenger_i| > edge_cases.disagreement_tolerance * scale``; ``agreement`` is the share of rows
within it. ``shadow.min_labeled_disagreements`` counts the labeled rows that carry evidence
there, those where one model is closer (``d_i != 0``). For display each model's MAE (Hájek-weighted), per slice the weighted R² (the units
of ``gates.slice_floors`` there), and the exact sign test on the labeled rows where one model is
closer (McNemar's test is that sign test for 0/1 errors).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from scipy.optimize import brentq
from scipy.special import log_ndtr
from scipy.stats import binomtest, norm
from sklearn.metrics import f1_score, r2_score

from edgeloop.core.config import GateSettings, ShadowSettings
from edgeloop.core.errors import EdgeloopError

RULE_SEQUENTIAL = "confidence-sequence"
RULE_BOOTSTRAP = "bootstrap"
PROMOTE, KEEP, NEED_MORE = "promote", "keep", "need_more"
#: The regression metric: the paired difference of absolute errors.
ABS_ERROR = "abs_error"
#: Beyond this many rows the search for "how many more" stops: the models look equal.
_MAX_ROWS = 10**9


# ---------------------------------------------------------------------- the estimate
def paired_differences(y_true: Any, champion_pred: Any, challenger_pred: Any) -> np.ndarray:
    """``d_i = 1{challenger right} - 1{champion right}`` (labels compared as text)."""
    y, a, b = (_as_labels(v) for v in (y_true, champion_pred, challenger_pred))
    d: np.ndarray = (b == y).astype(np.float64) - (a == y).astype(np.float64)
    return d


def abs_error_differences(
    y_true: Any, champion_pred: Any, challenger_pred: Any, scale: float
) -> np.ndarray:
    """``d_i = (|y - champion| - |y - challenger|) / scale`` clipped to [-1, 1] (regression)."""
    y, a, b = (np.asarray(v, dtype=np.float64) for v in (y_true, champion_pred, challenger_pred))
    if not (math.isfinite(scale) and scale > 0):
        raise EdgeloopError(f"the error scale must be a positive number, got {scale}")
    d: np.ndarray = np.clip((np.abs(y - a) - np.abs(y - b)) / scale, -1.0, 1.0)
    return d


def error_scale(scale: float | None, labels: Any) -> float:
    """``scale`` when it is a positive number, else the labels' standard deviation (1 when that
    is 0 or there are no labels: every ``d_i`` is then 0 or a plain error difference)."""
    if scale is not None and math.isfinite(scale) and scale > 0:
        return float(scale)
    y = np.asarray(labels, dtype=np.float64)
    y = y[np.isfinite(y)]
    std = float(y.std()) if len(y) > 1 else 0.0
    return std if std > 0 else 1.0


def horvitz_thompson(d: Any, inclusion_prob: Any, labeled: Any) -> np.ndarray:
    """``Z_i = d_i / pi_i`` where ``labeled``, 0 elsewhere (``d`` and ``pi`` are read on labeled
    rows only). Inputs are not modified."""
    mask = np.asarray(labeled, dtype=bool)
    dd = np.asarray(d, dtype=np.float64)
    pi = np.asarray(inclusion_prob, dtype=np.float64)
    if not (len(dd) == len(pi) == len(mask)):
        raise EdgeloopError(
            f"d, pi and labeled differ in length ({len(dd)}, {len(pi)}, {len(mask)})"
        )
    p = pi[mask]
    if len(p) and not (np.all(p > 0) and np.all(p <= 1)):
        raise EdgeloopError("every labeled row needs an inclusion probability in (0, 1]")
    z = np.zeros(len(dd))
    z[mask] = dd[mask] / p
    return z


# ---------------------------------------------------------------------- the confidence sequence
@dataclass(frozen=True)
class ConfidenceSequence:
    """The CS on the mean of ``n`` terms: ``low`` and ``high`` each hold at level ``1 - alpha``."""

    n: int
    mean: float
    std: float
    low: float
    high: float
    alpha: float
    rho: float


def cs_rho(alpha: float, tuned_rows: int) -> float:
    """The mixture parameter that makes the CS (nearly) tightest at ``tuned_rows`` terms."""
    la = -2.0 * math.log(alpha)
    return math.sqrt((la + math.log(1.0 + la)) / tuned_rows)


def _two_sided_boundary(t: float, r2: float, alpha: float) -> float:
    """The Gaussian-mixture boundary on the standardised sum ``S_t`` (both signs at once)."""
    return math.sqrt(2.0 * (t * r2 + 1.0) / r2 * math.log(math.sqrt(t * r2 + 1.0) / alpha))


def _log_one_sided_mixture(s: float, t: float, r2: float) -> float:
    """log of the half-normal mixture ``2 / sqrt(1 + r2 t) * exp(r2 s² / (2 (1 + r2 t))) *
    Phi(sqrt(r2) s / sqrt(1 + r2 t))`` of ``exp(lambda s - lambda² t / 2)`` over lambda > 0."""
    v = 1.0 + r2 * t
    return float(math.log(2.0) - 0.5 * math.log(v) + r2 * s * s / (2.0 * v)
                 + log_ndtr(math.sqrt(r2) * s / math.sqrt(v)))  # fmt: skip


def cs_half_width(n: float, std: float, alpha: float, rho: float) -> float:
    """Distance from the mean to each one-sided bound after ``n`` terms (infinite at 0).

    Each bound is the one-sided (half-normal) mixture boundary at level ``alpha``: the point
    where the mixture martingale reaches ``1/alpha`` (Ville's inequality), found between 0 and
    the two-sided boundary, which is never below it.
    """
    if n <= 0:
        return math.inf
    if std == 0:
        return 0.0
    r2, target = rho * rho, math.log(1.0 / alpha)
    top = _two_sided_boundary(n, r2, alpha)
    s = brentq(lambda x: _log_one_sided_mixture(x, n, r2) - target, 0.0, top, xtol=1e-10)
    return std * float(s) / n


def confidence_sequence(z: Any, *, alpha: float, tuned_rows: int) -> ConfidenceSequence:
    """The CS on ``mean(z)`` now (``z`` in arrival order; only its mean and spread matter)."""
    arr = np.asarray(z, dtype=np.float64)
    n = len(arr)
    rho = cs_rho(alpha, tuned_rows)
    if n == 0:
        return ConfidenceSequence(0, math.nan, math.nan, -math.inf, math.inf, alpha, rho)
    mean, std = float(arr.mean()), float(arr.std())
    h = cs_half_width(n, std, alpha, rho)
    return ConfidenceSequence(n, mean, std, mean - h, mean + h, alpha, rho)


def rows_needed(gap: float, std: float, alpha: float, rho: float, n: int) -> int | None:
    """The fewest rows (at least ``n``) at which the half-width drops below ``gap``; None when
    out of reach (no spread measured, no gap, or beyond a billion rows)."""
    if not (gap > 0 and std > 0):
        return None
    if cs_half_width(n, std, alpha, rho) < gap:
        return n
    lo, hi = max(n, 1), max(2 * n, 2)
    while cs_half_width(hi, std, alpha, rho) >= gap:
        lo, hi = hi, 2 * hi
        if hi > _MAX_ROWS:
            return None
    while hi - lo > 1:  # the half-width only shrinks from here on
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if cs_half_width(mid, std, alpha, rho) >= gap else (lo, mid)
    return hi


# ---------------------------------------------------------------------- the comparison
@dataclass(frozen=True)
class ShadowComparison:
    """Evidence about champion vs challenger: ``n_rows`` rows scored by both, ``n`` labeled."""

    n: int
    metric: str
    champion: float
    challenger: float
    delta: float
    ci_low: float
    ci_high: float
    confidence: float
    agreement: float
    mcnemar_p: float
    only_champion_right: int
    only_challenger_right: int
    slices: dict[str, dict[str, float]] = field(default_factory=dict)
    #: Which rule decides: ``confidence-sequence`` (accuracy) or ``bootstrap`` (macro_f1).
    rule: str = RULE_SEQUENTIAL
    n_rows: int = 0
    #: Labeled rows (the same as ``n``).
    n_labeled: int = 0
    #: Labeled rows where the two models predict different classes.
    n_disagreements: int = 0
    cs_low: float = math.nan
    cs_high: float = math.nan
    cs_std: float = math.nan
    #: Labeled rows of batches queued before the evaluation sample (weight 1: biased).
    legacy_rows: int = 0
    #: Rows left out because their batch's queued rows are not labeled yet.
    pending_rows: int = 0
    #: Regression: the unit of ``d_i`` (the training target's std) and the rows (labeled or
    #: not) where the two predictions differ at all (0: no label can tell the models apart).
    scale: float = math.nan
    differing_rows: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            # NaN (nothing to measure) and infinite bounds (no rows) are not JSON: None.
            k: (None if isinstance(v, float) and not math.isfinite(v) else v)
            for k, v in asdict(self).items()
        }


def _metric(
    y: np.ndarray, p: np.ndarray, metric: str, classes: list[Any], w: np.ndarray | None = None
) -> float:
    if len(y) == 0:
        return math.nan
    if metric == "accuracy":
        return float(np.average(y == p, weights=w))
    return float(f1_score(y, p, labels=classes, average="macro", zero_division=0, sample_weight=w))


def _as_label(v: Any) -> str:
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    return str(v)


def _as_labels(values: Any) -> np.ndarray:
    return np.array([_as_label(v) for v in np.asarray(values, dtype=object)], dtype=str)


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value from the discordant counts ``b`` and ``c``."""
    if b + c == 0:
        return 1.0
    return float(binomtest(b, b + c, 0.5).pvalue)


def _bootstrap(
    y: np.ndarray,
    a: np.ndarray,
    b: np.ndarray,
    m: str,
    classes: list[Any],
    settings: ShadowSettings,
    seed: int,
) -> tuple[float, float]:
    """The paired bootstrap interval of the macro-F1 delta on the labeled rows."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(y), size=(settings.bootstrap_samples, len(y)))
    deltas = np.array(
        [_metric(y[i], b[i], m, classes) - _metric(y[i], a[i], m, classes) for i in idx]
    )
    alpha = 1 - settings.confidence
    lo, hi = (float(q) for q in np.quantile(deltas, [alpha / 2, 1 - alpha / 2]))
    return lo, hi


def compare(
    y_true: Any,
    champion_pred: Any,
    challenger_pred: Any,
    *,
    classes: list[Any],
    settings: ShadowSettings,
    seed: int,
    slice_masks: dict[str, np.ndarray] | None = None,
    labeled: Any = None,
    inclusion_prob: Any = None,
    legacy: Any = None,
    pending_rows: int = 0,
    scale: float | None = None,
    tolerance: float = 0.5,
) -> ShadowComparison:
    """Paired comparison on the same rows (inputs are not modified).

    Every row is one scored by both models; ``labeled`` marks the rows with ground truth (all
    of them when None; ``y_true`` is read there only), ``inclusion_prob`` their probability of
    having been labeled (1 when None), ``legacy`` the labeled rows whose batch had no design
    (counted in ``legacy_rows``), ``pending_rows`` rows left out for want of labels.
    ``scale`` and ``tolerance`` are for ``abs_error`` only (the module docstring).
    """
    n_rows = len(champion_pred)
    mask = np.ones(n_rows, dtype=bool) if labeled is None else np.asarray(labeled, dtype=bool)
    pi = np.ones(n_rows) if inclusion_prob is None else np.asarray(inclusion_prob, dtype=np.float64)
    w = 1.0 / pi[mask]
    m, n = settings.metric, int(mask.sum())
    extra: dict[str, Any] = {}
    d = np.zeros(n_rows)
    if m == ABS_ERROR:
        a_all = np.asarray(champion_pred, dtype=np.float64)
        b_all = np.asarray(challenger_pred, dtype=np.float64)
        y_num = np.asarray(np.asarray(y_true, dtype=object)[mask], dtype=np.float64)
        a, b = a_all[mask], b_all[mask]
        unit = error_scale(scale, y_num)
        d[mask] = abs_error_differences(y_num, a, b, unit)
        ea, eb = np.abs(y_num - a), np.abs(y_num - b)
        champ, chall = _weighted(ea, w), _weighted(eb, w)
        only_a, only_b = int((ea < eb).sum()), int((eb < ea).sum())
        apart = np.abs(a_all - b_all) > tolerance * unit
        agree = ~apart

        def score(mk: np.ndarray, p: np.ndarray) -> float:
            return _weighted_r2(y_num[mk], p[mk], w[mk])

        extra = {"scale": unit, "differing_rows": int((a_all != b_all).sum())}
    else:
        a_all, b_all = _as_labels(champion_pred), _as_labels(challenger_pred)
        y_lab = _as_labels(np.asarray(y_true, dtype=object)[mask])
        a, b = a_all[mask], b_all[mask]
        classes = [_as_label(c) for c in classes]
        d[mask] = paired_differences(y_lab, a, b)
        champ, chall = _metric(y_lab, a, m, classes, w), _metric(y_lab, b, m, classes, w)
        a_right, b_right = a == y_lab, b == y_lab
        only_a, only_b = int((a_right & ~b_right).sum()), int((b_right & ~a_right).sum())
        agree = a_all == b_all
        apart = ~agree

        def score(mk: np.ndarray, p: np.ndarray) -> float:
            return _metric(y_lab[mk], p[mk], m, classes, w[mk])

    cs = confidence_sequence(
        horvitz_thompson(d, pi, mask),
        alpha=1 - settings.confidence,
        tuned_rows=settings.cs_tuned_rows,
    )
    lo = hi = math.nan
    if m != "macro_f1":
        delta = cs.mean
        if n_rows:  # the one-look interval: what a single fixed-sample test would claim
            h = float(norm.ppf(1 - (1 - settings.confidence) / 2)) * cs.std / math.sqrt(n_rows)
            lo, hi = delta - h, delta + h
    else:
        delta = chall - champ if n else math.nan
        if n:
            lo, hi = _bootstrap(y_lab, a, b, m, classes, settings, seed)
    slices = {}
    for name, smask in (slice_masks or {}).items():
        mk = np.asarray(smask, dtype=bool)[mask]
        slices[name] = {"rows": float(mk.sum()), "champion": score(mk, a),
                        "challenger": score(mk, b)}  # fmt: skip
    return ShadowComparison(
        n=n,
        metric=m,
        champion=champ,
        challenger=chall,
        delta=delta,
        ci_low=lo,
        ci_high=hi,
        confidence=settings.confidence,
        agreement=float(agree.mean()) if n_rows else math.nan,
        mcnemar_p=mcnemar_exact(only_a, only_b),
        only_champion_right=only_a,
        only_challenger_right=only_b,
        slices=slices,
        rule=RULE_BOOTSTRAP if m == "macro_f1" else RULE_SEQUENTIAL,
        n_rows=n_rows,
        n_labeled=n,
        # Regression: every labeled row where one model is closer carries evidence (d_i != 0),
        # however near the two predictions are; the tolerance only names "agreement".
        n_disagreements=only_a + only_b if m == ABS_ERROR else int(apart[mask].sum()),
        cs_low=cs.low,
        cs_high=cs.high,
        cs_std=cs.std,
        legacy_rows=0 if legacy is None else int(np.asarray(legacy, dtype=bool)[mask].sum()),
        pending_rows=pending_rows,
        **extra,
    )


def _weighted(values: np.ndarray, w: np.ndarray) -> float:
    return float(np.average(values, weights=w)) if len(values) else math.nan


def _weighted_r2(y: np.ndarray, p: np.ndarray, w: np.ndarray) -> float:
    if len(y) < 2 or float(np.ptp(y)) == 0.0:
        return math.nan  # R² needs a spread of labels
    return float(r2_score(y, p, sample_weight=w))


# ---------------------------------------------------------------------- the decision
@dataclass(frozen=True)
class PromotionDecision:
    """The promotion rule applied to a comparison: its state and every reason.

    ``state`` is ``promote``, ``keep`` (the challenger is not better) or ``need_more`` (not
    enough evidence either way: about ``labels_needed`` more labels, ``days_needed`` days at the
    current labeling rate; None when unknown). ``promote`` is ``state == "promote"``.
    """

    promote: bool
    reasons: list[str]
    state: str = ""
    labels_needed: int | None = None
    days_needed: float | None = None

    def __post_init__(self) -> None:
        if not self.state:  # built the old way, from a bool
            object.__setattr__(self, "state", PROMOTE if self.promote else KEEP)

    def summary(self) -> str:
        head = {PROMOTE: "promote: ", KEEP: "keep champion: "}.get(
            self.state, "keep champion for now: "
        )
        return head + "; ".join(self.reasons)


def _need_more(labels: int | None, labels_per_day: float | None) -> tuple[str, float | None]:
    """The "need about N more labels (≈ D days ...)" text and D."""
    if labels is None:
        why = "no labeled disagreement yet, or the two models too close to tell apart"
        return f"not enough evidence yet (no estimate of the labels needed: {why})", None
    if labels_per_day and labels_per_day > 0:
        days = labels / labels_per_day
        return (
            f"need about {labels} more labels (≈ {days:.1f} days at the current labeling rate)",
            days,
        )
    return f"need about {labels} more labels (labeling rate unknown: no recent labels)", None


def _labels_for(rows: int | None, cmp: ShadowComparison) -> int | None:
    """Labels that ``rows`` more rows bring at the share of rows labeled so far."""
    if rows is None or cmp.n_rows == 0 or cmp.n_labeled == 0:
        return None
    return max(1, math.ceil(rows * cmp.n_labeled / cmp.n_rows))


def _sequential(cmp: ShadowComparison, shadow: ShadowSettings) -> tuple[str, list[str], int | None]:
    thr = shadow.min_delta_lower_bound
    level = f"{cmp.confidence:.0%} confidence sequence [{cmp.cs_low:+.4f}, {cmp.cs_high:+.4f}]"
    regression = cmp.metric == ABS_ERROR
    what = (
        f"absolute-error delta (in target std {cmp.scale:.4g}, clipped)"
        if regression
        else "accuracy delta"
    )
    est = (
        f"{what} {cmp.delta:+.4f} (importance-weighted over {cmp.n_rows} rows,"
        f" {cmp.n_labeled} labeled, {cmp.n_disagreements} labeled disagreements), {level}"
    )
    if cmp.n_rows == 0:
        return NEED_MORE, ["no rows scored by both models since the challenger was deployed"], None
    same = cmp.differing_rows == 0 if regression else cmp.agreement == 1.0
    if same and thr >= 0:  # d_i = 0 on every row: no label can change that
        kind = "prediction" if regression else "class"
        why = f"the two models predict the same {kind} on every row ({cmp.n_rows}): not better"
        return KEEP, [why], None
    alpha, rho = 1 - cmp.confidence, cs_rho(1 - cmp.confidence, shadow.cs_tuned_rows)
    gap = abs(cmp.delta - thr) if not math.isnan(cmp.delta) else 0.0
    more_rows = rows_needed(gap, cmp.cs_std, alpha, rho, cmp.n_rows)
    labels = _labels_for(None if more_rows is None else more_rows - cmp.n_rows, cmp)
    if cmp.n_disagreements < shadow.min_labeled_disagreements:
        k, want = cmp.n_disagreements, shadow.min_labeled_disagreements
        if k:  # at the current share of disagreements among the labeled rows
            labels = max(labels or 0, math.ceil((want - k) * cmp.n_labeled / k))
        return (
            NEED_MORE,
            [est, f"only {k} labeled disagreements (shadow.min_labeled_disagreements {want})"],
            labels,
        )
    if cmp.cs_low > thr:
        return PROMOTE, [f"{est}: lower bound above {thr:+.4f}"], None
    if cmp.cs_high < thr:
        return KEEP, [f"{est}: upper bound below {thr:+.4f}, the challenger is not better"], None
    return NEED_MORE, [f"{est}: contains {thr:+.4f}"], labels


def _bootstrap_rule(
    cmp: ShadowComparison, shadow: ShadowSettings
) -> tuple[str, list[str], int | None]:
    if cmp.n < shadow.min_samples:
        why = f"only {cmp.n} labeled rows scored by both models (shadow.min_samples {shadow.min_samples})"
        return NEED_MORE, [why], shadow.min_samples - cmp.n
    text = (
        f"{cmp.metric} delta {cmp.delta:+.4f}, {cmp.confidence:.0%} CI"
        f" [{cmp.ci_low:+.4f}, {cmp.ci_high:+.4f}]"
    )
    if not cmp.ci_low > shadow.min_delta_lower_bound:
        return KEEP, [f"{text}: lower bound not above {shadow.min_delta_lower_bound:+.4f}"], None
    return (
        PROMOTE,
        [
            f"{cmp.metric} {cmp.challenger:.4f} vs {cmp.champion:.4f} ({text}, n={cmp.n}, McNemar p={cmp.mcnemar_p:.3g})"
        ],
        None,
    )


def decide(
    cmp: ShadowComparison,
    shadow: ShadowSettings,
    gates: GateSettings,
    *,
    labels_per_day: float | None = None,
) -> PromotionDecision:
    """Promote only on enough evidence that the challenger is better and no slice floor fails
    because of it: a challenger below a slice's floor blocks promotion unless the champion is
    below that floor too and lower than the challenger there (a failing slice it improves).

    ``accuracy``: the confidence sequence decides (see the module docstring); ``macro_f1``: the
    fixed-sample bootstrap rule. ``labels_per_day`` turns "N more labels" into days.
    """
    rule = _sequential if cmp.rule == RULE_SEQUENTIAL else _bootstrap_rule
    state, reasons, labels = rule(cmp, shadow)
    days = None
    if state == NEED_MORE:
        text, days = _need_more(labels, labels_per_day)
        reasons = [text, *reasons]
    if cmp.legacy_rows:
        reasons.append(
            f"{cmp.legacy_rows} labeled rows from batches queued before the evaluation"
            " sample count with weight 1 (edge cases only: biased)"
        )
    if cmp.pending_rows:
        reasons.append(f"{cmp.pending_rows} rows of batches whose labels are pending left out")
    for name, floor in sorted(gates.slice_floors.items()):
        s = cmp.slices.get(name)
        if s is None or s["rows"] < gates.min_slice_rows:
            reasons.append(f"slice {name}: not judged ({0 if s is None else int(s['rows'])} rows)")
            continue
        if s["challenger"] >= floor:
            continue
        champ = s["champion"]
        if champ >= floor or not s["challenger"] > champ:
            state = KEEP  # more labels do not fix a slice the challenger fails
            reasons.append(
                f"slice {name}: challenger {s['challenger']:.4f} below floor {floor:.4f}"
                f" (champion {champ:.4f})"
            )
        else:  # keeping the champion would leave the slice lower still
            reasons.append(
                f"slice {name}: challenger {s['challenger']:.4f} below floor {floor:.4f}"
                f" but above the champion's {champ:.4f}: promoting raises the slice"
            )
    return PromotionDecision(
        state == PROMOTE,
        reasons,
        state,
        labels if state == NEED_MORE else None,
        days if state == NEED_MORE else None,
    )
