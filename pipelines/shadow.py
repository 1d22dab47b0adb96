"""Shadow evaluation: champion vs challenger on the same rows, with a confidence interval.

Given each model's prediction and the ground truth for the same rows, ``compare`` returns the
accuracy (or macro-F1) of both, the challenger-minus-champion delta with a paired bootstrap
interval, McNemar's exact test on the rows where exactly one model is right, and the agreement
rate. ``decide`` applies the promotion rule from the config.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from scipy.stats import binomtest
from sklearn.metrics import f1_score

from edgeloop.core.config import GateSettings, ShadowSettings


@dataclass(frozen=True)
class ShadowComparison:
    """Evidence about champion vs challenger on ``n`` labeled rows."""

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

    def to_dict(self) -> dict[str, Any]:
        return {
            k: (None if isinstance(v, float) and math.isnan(v) else v)
            for k, v in asdict(self).items()
        }


def _metric(y: np.ndarray, p: np.ndarray, metric: str, classes: list[Any]) -> float:
    if len(y) == 0:
        return math.nan
    if metric == "accuracy":
        return float((y == p).mean())
    return float(f1_score(y, p, labels=classes, average="macro", zero_division=0))


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


def compare(
    y_true: np.ndarray,
    champion_pred: np.ndarray,
    challenger_pred: np.ndarray,
    *,
    classes: list[Any],
    settings: ShadowSettings,
    seed: int,
    slice_masks: dict[str, np.ndarray] | None = None,
) -> ShadowComparison:
    """Paired comparison on the same rows (inputs are not modified)."""
    # Compare labels as text: predictions read back from Parquet may be object or float typed.
    y, a, b = (_as_labels(v) for v in (y_true, champion_pred, challenger_pred))
    classes = [_as_label(c) for c in classes]
    n = len(y)
    m = settings.metric
    champ, chall = _metric(y, a, m, classes), _metric(y, b, m, classes)
    lo = hi = math.nan
    if n:
        rng = np.random.default_rng(seed)
        idx = rng.integers(0, n, size=(settings.bootstrap_samples, n))
        if m == "accuracy":
            # Vectorised: the delta of a resample is the mean of per-row differences.
            diff = (b == y).astype(float) - (a == y).astype(float)
            deltas = diff[idx].mean(axis=1)
        else:
            deltas = np.array(
                [_metric(y[i], b[i], m, classes) - _metric(y[i], a[i], m, classes) for i in idx]
            )
        alpha = 1 - settings.confidence
        lo, hi = (float(q) for q in np.quantile(deltas, [alpha / 2, 1 - alpha / 2]))
    a_right, b_right = a == y, b == y
    only_a, only_b = int((a_right & ~b_right).sum()), int((b_right & ~a_right).sum())
    slices = {}
    for name, mask in (slice_masks or {}).items():
        mk = np.asarray(mask, dtype=bool)
        slices[name] = {
            "rows": float(mk.sum()),
            "champion": _metric(y[mk], a[mk], m, classes),
            "challenger": _metric(y[mk], b[mk], m, classes),
        }
    return ShadowComparison(
        n=n,
        metric=m,
        champion=champ,
        challenger=chall,
        delta=chall - champ if n else math.nan,
        ci_low=lo,
        ci_high=hi,
        confidence=settings.confidence,
        agreement=float((a == b).mean()) if n else math.nan,
        mcnemar_p=mcnemar_exact(only_a, only_b),
        only_champion_right=only_a,
        only_challenger_right=only_b,
        slices=slices,
    )


@dataclass(frozen=True)
class PromotionDecision:
    """The promotion rule applied to a comparison: promote or keep, and every reason."""

    promote: bool
    reasons: list[str]

    def summary(self) -> str:
        return ("promote: " if self.promote else "keep champion: ") + "; ".join(self.reasons)


def decide(cmp: ShadowComparison, shadow: ShadowSettings, gates: GateSettings) -> PromotionDecision:
    """Promote only on enough evidence that the challenger is better and every slice floor holds."""
    reasons: list[str] = []
    ok = True
    if cmp.n < shadow.min_samples:
        ok = False
        reasons.append(
            f"only {cmp.n} labeled rows scored by both models (shadow.min_samples {shadow.min_samples})"
        )
    elif not cmp.ci_low > shadow.min_delta_lower_bound:
        ok = False
        reasons.append(
            f"{cmp.metric} delta {cmp.delta:+.4f}, {cmp.confidence:.0%} CI [{cmp.ci_low:+.4f}, {cmp.ci_high:+.4f}]:"
            f" lower bound not above {shadow.min_delta_lower_bound:+.4f}"
        )
    else:
        reasons.append(
            f"{cmp.metric} {cmp.challenger:.4f} vs {cmp.champion:.4f} (delta {cmp.delta:+.4f},"
            f" {cmp.confidence:.0%} CI [{cmp.ci_low:+.4f}, {cmp.ci_high:+.4f}], n={cmp.n},"
            f" McNemar p={cmp.mcnemar_p:.3g})"
        )
    for name, floor in sorted(gates.slice_floors.items()):
        s = cmp.slices.get(name)
        if s is None or s["rows"] < gates.min_slice_rows:
            reasons.append(f"slice {name}: not judged ({0 if s is None else int(s['rows'])} rows)")
            continue
        if not s["challenger"] >= floor:
            ok = False
            reasons.append(
                f"slice {name}: challenger {s['challenger']:.4f} below floor {floor:.4f}"
            )
    return PromotionDecision(ok, reasons)
