"""The evaluation sample: rows labeled *for the champion-vs-challenger comparison*, drawn with
known inclusion probabilities so that an importance-weighted (Horvitz–Thompson) estimate over
the labeled rows is unbiased for the whole batch.

Design (Poisson sampling: each eligible row is drawn independently, with probability ``q_i``):

* ``s_i = u + (1 - u) * w_i / mean(w)`` over the eligible rows, ``u = uniform_share`` (> 0, so
  every eligible row has ``q_i > 0``: a row that can never be drawn would be missing from the
  estimate, not down-weighted);
* ``w_i`` is about how much the row tells the comparison. With accuracy, the paired difference
  ``d_i = 1{challenger right} - 1{champion right}`` is 0 unless exactly one model is right,
  and the Horvitz–Thompson variance is smallest for ``q_i`` proportional to
  ``sqrt(E[d_i^2])`` (e.g. Särndal, Swensson & Wretman, *Model Assisted Survey Sampling*,
  1992, §3.6). Hence ``w_i = sqrt(p(a) + p(b))`` where the models predict ``a != b`` (``p``: the
  mean of the two models' probabilities, the chance that exactly one of them is right), and
  at least ``|p_champion(a) - p_challenger(a)|`` everywhere (rows where the two models' losses
  are likely to differ even when their answers agree). Without challenger scores ``w`` is
  uniform. The uniform share keeps the design safe when those probabilities are wrong, which
  is what happens under drift;
* ``q_i = min(1, c * s_i)`` with ``c`` such that ``sum(q_i) = expected_size``.

With ``disagreements_first`` (for an accuracy comparison) the sample is drawn among the rows
where the two models predict different classes: elsewhere ``d_i = 0`` whatever the label, so
such a row is known without labeling it and counts with its 0 in the estimate (as if
``pi_i = 1``). Only when the sample would take every disagreement does the rest of its size go
to the other rows, by the same design. The importance weights stay near 1 instead of the
1 / (a few percent) of rows drawn from the whole batch, and the estimate stays unbiased: every
row that can carry a nonzero ``d_i`` keeps ``q_i > 0``.

Regression (score frames with a ``scale`` or ``spread`` column and no ``p_<class>`` ones): the
paired difference is ``d_i = (|y - a_i| - |y - b_i|) / scale`` clipped to [-1, 1], and
``|d_i| <= min(1, |a_i - b_i| / scale)`` whatever the label, so ``w_i = min(1, |a_i - b_i| /
scale)`` (``scale``: the champion's training-target std, or the spread of the two models'
predictions when unknown; only the ratios of ``w`` matter). ``disagreements_first`` does not
apply: two regressors almost never predict the same number, and ``d_i`` is not 0 where they
are close, so every eligible row keeps its share of the uniform part (``q_i > 0``).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from edgeloop.core.keys import BATCH_ID, QUEUE_INCLUSION_PROB, ROW_ID
from pipelines.edge_cases.arrow import _arrow_strings, _Column

PROB_PREFIX = "p_"
#: Columns only a regression score frame has (``pipelines.score``).
REGRESSION_COLUMNS = ("scale", "spread")


def excluded_mask(ids: pd.Series, exclude: set[str] | frozenset[str]) -> np.ndarray:
    """Whether each id (as text) is in ``exclude``: ``evaluation_sample``'s ``exclude`` mask from
    a set of ids. Arrow text is looked up with Arrow's hash, without a Python string per row."""
    if not exclude or len(ids) == 0:
        return np.zeros(len(ids), dtype=bool)
    if _arrow_strings(ids):
        arr = pa.array(ids)
        hit = pc.is_in(arr, value_set=pa.array(list(exclude), type=arr.type))
        return np.asarray(hit.fill_null(False).to_numpy(zero_copy_only=False), dtype=bool)
    found: np.ndarray = ids.astype(str).isin(exclude).to_numpy()
    return found


def comparison_weights(champion: pd.DataFrame, challenger: pd.DataFrame | None) -> np.ndarray:
    """``w_i`` (see the module docstring) for every row; ones without challenger scores or
    without ``p_<class>`` columns. ``challenger`` is aligned with ``champion`` by position."""
    n = len(champion)
    classes = [c for c in champion.columns if str(c).startswith(PROB_PREFIX)]
    if challenger is not None and is_regression_scores(champion):
        if len(challenger) != n:
            raise ValueError(f"challenger has {len(challenger)} rows, champion {n}")
        return regression_weights(champion, challenger)
    if challenger is None or not classes:
        return np.ones(n)
    if len(challenger) != n:
        raise ValueError(f"challenger has {len(challenger)} rows, champion {n}")
    a = np.nan_to_num(champion[classes].to_numpy(dtype=np.float64))
    # A class the challenger has no column for: probability 0 (as score_frame does).
    b = np.nan_to_num(challenger.reindex(columns=classes, fill_value=0.0).to_numpy(np.float64))
    rows = np.arange(n)
    # The predicted classes as score_frame picks them (argmax, first class on ties).
    ia, ib = a.argmax(axis=1), b.argmax(axis=1)
    mean = (a + b) / 2
    disagree = ia != ib
    one_right = np.where(disagree, mean[rows, ia] + mean[rows, ib], 0.0)
    loss_gap = np.abs(a[rows, ia] - b[rows, ia])
    w: np.ndarray = np.maximum(np.sqrt(np.clip(one_right, 0.0, 1.0)), loss_gap)
    return w


def is_regression_scores(scores: pd.DataFrame) -> bool:
    """A regression model's score frame: no class probabilities, a ``scale`` or ``spread``."""
    cols = [str(c) for c in scores.columns]
    return not any(c.startswith(PROB_PREFIX) for c in cols) and any(
        c in cols for c in REGRESSION_COLUMNS
    )


def regression_weights(champion: pd.DataFrame, challenger: pd.DataFrame) -> np.ndarray:
    """``w_i = min(1, |a_i - b_i| / scale)``, the bound on ``|d_i|`` (module docstring)."""
    a = champion["predicted"].to_numpy(dtype=np.float64)
    b = challenger["predicted"].to_numpy(dtype=np.float64)
    scale = math.nan
    if "scale" in champion.columns:
        known = champion["scale"].to_numpy(dtype=np.float64)
        known = known[np.isfinite(known)]
        scale = float(known[0]) if len(known) else math.nan
    if not (math.isfinite(scale) and scale > 0):
        both = np.concatenate([a, b])
        both = both[np.isfinite(both)]
        scale = float(both.std()) if len(both) > 1 else 0.0
    gap = np.abs(a - b)
    if not scale > 0:  # constant predictions: no row says more than another
        return np.ones(len(a))
    w: np.ndarray = np.clip(np.nan_to_num(gap / scale, nan=0.0), 0.0, 1.0)
    return w


def inclusion_probabilities(
    weights: np.ndarray, eligible: np.ndarray, expected_size: float, uniform_share: float
) -> np.ndarray:
    """``q_i`` for every row (0 where not eligible): ``min(1, c * s_i)``, ``sum(q) =
    min(expected_size, eligible rows)``.

    ``c`` is found by iterating: ``c = (m - k) / sum(s of the uncapped rows)``, where ``k`` rows
    are capped at 1; rows with ``c * s_i >= 1`` join the capped ones and ``c`` is computed
    again. ``c`` never decreases, so a capped row stays capped, and the loop ends after at most
    as many rounds as there are rows (in practice one or two).
    """
    if not 0.0 < uniform_share <= 1.0:
        raise ValueError(f"uniform_share is in (0, 1], got {uniform_share}")
    eligible = np.asarray(eligible, dtype=bool)
    q = np.zeros(len(eligible))
    n_eligible = int(np.count_nonzero(eligible))
    m = min(float(expected_size), float(n_eligible))
    if m <= 0:
        return q
    if m >= n_eligible:
        q[eligible] = 1.0
        return q
    w = np.clip(np.nan_to_num(np.asarray(weights, dtype=np.float64)[eligible]), 0.0, None)
    scale = float(w.mean())
    w = w / scale if scale > 0 else np.ones(n_eligible)
    s = uniform_share + (1.0 - uniform_share) * w
    capped = np.zeros(n_eligible, dtype=bool)
    while True:
        c = (m - np.count_nonzero(capped)) / float(s[~capped].sum())
        over = ~capped & (c * s >= 1.0)
        if not over.any():
            break
        capped |= over
    q[eligible] = np.where(capped, 1.0, c * s)
    return q


def evaluation_sample(
    champion: pd.DataFrame,
    *,
    challenger: pd.DataFrame | None = None,
    exclude: np.ndarray | None = None,
    expected_size: float,
    uniform_share: float = 0.5,
    disagreements_first: bool = False,
    seed: int,
) -> pd.DataFrame:
    """The Poisson evaluation sample of one batch, in batch order.

    ``champion`` is the champion's scores (``pipelines.score.score_frame``), ``challenger`` the
    challenger's for the same rows in the same order (or None), ``exclude`` a boolean mask of
    the rows that cannot be drawn (chosen as edge cases, already queued or labeled). Columns:
    ``row_id``, ``batch_id``, ``predicted``, ``confidence``, ``margin``, ``inclusion_prob``
    (``q_i``) and, with a challenger, ``challenger_predicted``. One uniform draw per batch row
    from ``seed``: the same inputs and seed give the same sample. Inputs are not modified.
    """
    n = len(champion)
    if exclude is None:
        eligible = np.ones(n, dtype=bool)
    else:
        eligible = ~np.asarray(exclude, dtype=bool)
        if len(eligible) != n:
            raise ValueError(f"exclude has {len(eligible)} rows, champion {n}")
    if challenger is not None and not _same_rows(champion, challenger):
        raise ValueError("challenger scores are not the champion's rows in the same order")
    weights = comparison_weights(champion, challenger)
    if disagreements_first and challenger is not None and not is_regression_scores(champion):
        apart = (
            champion["predicted"].astype(str).to_numpy()
            != challenger["predicted"].astype(str).to_numpy()
        )
        q = disagreements_first_probabilities(
            weights, eligible, apart, expected_size, uniform_share
        )
    else:
        q = inclusion_probabilities(weights, eligible, expected_size, uniform_share)
    draw = np.random.default_rng(seed).random(n)
    taken = np.flatnonzero(eligible & (draw < q))
    columns = {
        ROW_ID: _Column(champion[ROW_ID]).output_at(taken),
        BATCH_ID: _Column(champion[BATCH_ID]).output_at(taken) if BATCH_ID in champion else "",
        "predicted": champion["predicted"].to_numpy()[taken],
        "confidence": champion["confidence"].to_numpy(dtype=np.float64)[taken],
        "margin": champion["margin"].to_numpy(dtype=np.float64)[taken],
        QUEUE_INCLUSION_PROB: q[taken],
    }
    if challenger is not None:
        columns["challenger_predicted"] = challenger["predicted"].to_numpy()[taken]
    return pd.DataFrame(columns)


def disagreements_first_probabilities(
    weights: np.ndarray,
    eligible: np.ndarray,
    apart: np.ndarray,
    expected_size: float,
    uniform_share: float,
) -> np.ndarray:
    """``q_i`` drawn among the eligible rows where the models disagree (``apart``) first; what
    is left of ``expected_size`` once every one of them is taken goes to the other eligible
    rows (``inclusion_probabilities`` on each part)."""
    eligible = np.asarray(eligible, dtype=bool)
    first = eligible & np.asarray(apart, dtype=bool)
    q = inclusion_probabilities(weights, first, expected_size, uniform_share)
    left = float(expected_size) - float(np.count_nonzero(first))
    if left > 0:
        q += inclusion_probabilities(weights, eligible & ~first, left, uniform_share)
    return q


def _same_rows(champion: pd.DataFrame, challenger: pd.DataFrame) -> bool:
    """The same ids in the same order (compared as text only when the dtypes differ); frames
    without ids are taken as aligned if they have as many rows."""
    if len(champion) != len(challenger):
        return False
    if ROW_ID not in champion or ROW_ID not in challenger:
        return True
    x, y = champion[ROW_ID].reset_index(drop=True), challenger[ROW_ID].reset_index(drop=True)
    if x.dtype == y.dtype:
        return bool(x.equals(y))
    return bool((x.astype(str).to_numpy() == y.astype(str).to_numpy()).all())
