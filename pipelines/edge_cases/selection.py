"""Edge-case selection: the strategies' masks, the priority order and the walk that fills the
budget under the class and cluster caps (the strategies are described in the package docstring)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from edgeloop.core.config import EdgeCaseSettings
from pipelines.edge_cases.arrow import _at, _Column, _concat, _in_set
from pipelines.edge_cases.clusters import _Clusters, _fit_clusters, _labels
from pipelines.edge_cases.rules import Rule, rule_masks


def select(
    scores: pd.DataFrame,
    settings: EdgeCaseSettings,
    *,
    features: pd.DataFrame | None = None,
    challenger_predicted: np.ndarray | None = None,
    rules: list[Rule] | None = None,
    exclude: set[str] | frozenset[str] = frozenset(),
) -> pd.DataFrame:
    """The rows to label, highest priority first, each with its reasons and scores.

    ``scores`` is one model's output (``pipelines.score.score_frame``); ``features`` the same
    rows' inputs, by position (for rules and clusters); ``challenger_predicted`` aligned with
    ``scores``. With clustering on (``n_clusters`` and ``max_cluster_share`` above 0) the output
    has a ``cluster`` column (-1 when the rows could not be clustered: no ``features`` or no
    numeric feature). Inputs are not modified.
    """
    n = len(scores)
    clustering = settings.n_clusters > 0 and settings.max_cluster_share > 0
    if n == 0:
        return _empty(clustering)
    if features is not None and len(features) != n:
        raise ValueError(f"features has {len(features)} rows, scores {n}")
    # Views of the frame's own arrays (float64/int64 columns): nothing is copied.
    conf = scores["confidence"].to_numpy(dtype=np.float64)
    margin = scores["margin"].to_numpy(dtype=np.float64)
    pred = scores["predicted"].to_numpy()
    masks: dict[str, np.ndarray] = {}
    if settings.min_confidence > 0:
        masks["low_confidence"] = conf < settings.min_confidence
    if settings.min_margin > 0:
        masks["small_margin"] = margin < settings.min_margin
    # Regression scores carry the model's ``scale`` (pipelines.score): predictions are numbers,
    # there are no classes to cap, and two models disagree by more than a tolerance.
    regression = "scale" in scores.columns
    if settings.disagreement and challenger_predicted is not None:
        other = np.asarray(challenger_predicted)
        if regression:
            masks["disagreement"] = _apart(pred, other, scores["scale"], settings)
        elif pred.dtype.kind in "iu" and other.dtype.kind in "iu":
            masks["disagreement"] = other != pred
        else:
            masks["disagreement"] = other.astype(str) != pred.astype(str)
    if rules:
        # Only the columns the rules name, as Series (no per-strategy copy of the batch).
        named = {c.column for r in rules for c in r.when}
        cols: dict[str, Any] = {c: scores[c] for c in named if c in scores.columns}
        if features is not None:
            cols.update(
                {c: features[c].reset_index(drop=True) for c in named if c in features.columns}
            )
        masks.update({f"rule:{k}": v for k, v in rule_masks(cols, rules, n).items()})
    if not masks:
        return _empty(clustering)
    order = _candidates(masks, margin)
    total = order.total
    if total == 0:
        return _empty(clustering)
    limited = settings.budget > 0
    budget = settings.budget if limited else total
    # Diversity: no predicted class and no cluster takes more than its share of the budget
    # (no budget: no cap).
    class_cap = (
        max(1, math.ceil(budget * settings.max_class_share))
        if limited and not regression
        else budget
    )
    cluster_cap = (
        max(1, math.ceil(budget * settings.max_cluster_share)) if limited and clustering else budget
    )
    ids = _Column(scores["row_id"])
    model = None
    if clustering and features is not None:
        model = _fit_clusters(
            features,
            np.flatnonzero(order.flagged),
            ids,
            exclude,
            settings.n_clusters,
            settings.cluster_seed,
        )
    chosen, clusters, chosen_ids = _fill(
        order,
        pred,
        ids,
        exclude,
        features,
        model,
        budget=budget,
        class_cap=class_cap,
        cluster_cap=cluster_cap,
    )
    if len(chosen) == 0:
        return _empty(clustering)
    # Each row's reasons as bit sets (62 masks per int64), then one text per distinct set:
    # a handful, where joining names row by row costs ~1 ms per 1000 rows.
    names = list(masks)
    groups = [names[i : i + 62] for i in range(0, len(names), 62)]
    codes = []
    for group in groups:
        code = np.zeros(len(chosen), dtype=np.int64)
        for bit, name in enumerate(group):
            code |= masks[name][chosen].astype(np.int64) << bit
        codes.append(code.tolist())
    keys = list(zip(*codes, strict=True))
    text = {
        key: ";".join(
            n for g, c in zip(groups, key, strict=True) for b, n in enumerate(g) if c >> b & 1
        )
        for key in set(keys)
    }
    columns = {
        # Take the chosen rows first: converting whole id columns costs more than selecting.
        "row_id": chosen_ids,
        "batch_id": _Column(scores["batch_id"]).output_at(chosen) if "batch_id" in scores else "",
        "predicted": pred[chosen],
        "confidence": conf[chosen],
        "margin": margin[chosen],
        "priority": 2.0 * order.hits[chosen] + (1.0 - margin[chosen]),
        "reasons": [text[k] for k in keys],
    }
    if clustering:
        columns["cluster"] = clusters
    if challenger_predicted is not None:
        columns["challenger_predicted"] = np.asarray(challenger_predicted)[chosen]
    return pd.DataFrame(columns)  # in one go: adding columns one by one costs ~0.5 ms each


def _apart(
    pred: np.ndarray, other: np.ndarray, scale: pd.Series, settings: EdgeCaseSettings
) -> np.ndarray:
    """Regression disagreement: predictions more than ``disagreement_tolerance`` scales apart
    (the scale of the batch's predictions when the model recorded none)."""
    unit = float(scale.iloc[0]) if len(scale) else math.nan
    if not math.isfinite(unit) or unit <= 0:
        unit = float(np.nanstd(pred.astype("float64")))
    gap = np.abs(other.astype("float64") - pred.astype("float64"))
    apart: np.ndarray = gap > settings.disagreement_tolerance * unit
    return apart


def _candidates(masks: dict[str, np.ndarray], margin: np.ndarray) -> _Order:
    """The rows any mask flags, and per row how many masks count as "someone asked for these"
    (rules and disagreement), in priority order."""
    first, *others = masks.values()
    flagged = first.copy()
    for m in others:
        flagged |= m
    asked = [m for name, m in masks.items() if name.startswith("rule:") or name == "disagreement"]
    # int8 (a fast pass over the batch) unless a row could match more than 127 masks; added as
    # int8 views of the masks (adding booleans casts each one: twice the time).
    hits: np.ndarray = np.zeros(len(first), dtype=np.int8 if len(asked) <= 127 else np.int16)
    for m in asked:
        hits += m.view(np.int8)
    return _Order(flagged, hits, len(asked), margin, int(np.count_nonzero(flagged)))


def _fill(
    order: _Order,
    pred: np.ndarray,
    ids: _Column,
    exclude: set[str] | frozenset[str],
    features: pd.DataFrame | None,
    model: _Clusters | None,
    *,
    budget: int,
    class_cap: int,
    cluster_cap: int,
) -> tuple[np.ndarray, np.ndarray, Any]:
    """Walk the candidates in priority order, skipping excluded ids and rows whose class or
    cluster is full, until the budget is filled: (batch positions, cluster ids, row ids).

    Only the walked head of the order is ever sorted, looked up in ``exclude`` and assigned a
    cluster: that head is about the budget, not the candidates (often ~40 % of the batch).
    The result is that of applying the exclusion and the caps to every candidate first.
    """
    capped = class_cap < budget or cluster_cap < budget
    text_classes = pred.dtype.kind not in "iu"
    per_class: dict[Any, int] = {}
    per_cluster: dict[int, int] = {}
    chosen: list[np.ndarray] = []
    clusters: list[np.ndarray] = []
    # With an exclusion set, each step's ids are read to look them up; the chosen ones are kept
    # for the output (reading them again at the end would cost as much as the lookup).
    chosen_ids: list[Any] = []
    taken = 0
    # The first head of the order covers the budget 4 times: enough unless exclusion or caps
    # skip 3 rows in 4.
    head = order.head(min(order.total, 4 * budget + 64))
    walked = step = 0
    while taken < budget:
        if walked == len(head):
            if len(head) == order.total:
                break  # every candidate seen: the caps (or exclusion) leave the budget unfilled
            head = order.head(min(order.total, 4 * len(head)))
        need = budget - taken
        # A quarter more than the budget still needs, or twice the last step when that one
        # fell short (full classes or clusters, excluded ids): a few steps in all.
        step = max(need + need // 4 + 16, 2 * step)
        rows = head[walked : walked + step]
        walked += len(rows)
        if capped:
            # A full class's rows cannot be taken: drop them before any lookup or feature read
            # (the head of the order is often one class's rows once it is full).
            full = [c for c, count in per_class.items() if count >= class_cap]
            if full:
                rows = rows[~_class_in(pred[rows], full, text_classes)]
        got = None
        if exclude:
            got = ids.at(rows)
            keep = np.flatnonzero(~_in_set(got, exclude))
            rows, got = rows[keep], _at(got, keep)
        if not capped:
            rows = rows[:need]
            got = None if got is None else _at(got, np.arange(len(rows)))
            labels = _labels(model, rows)
        else:
            labels = _labels(model, rows)
            cls = [str(c) for c in pred[rows]] if text_classes else pred[rows].tolist()
            picks = []
            for i, (c, k) in enumerate(zip(cls, labels.tolist(), strict=True)):
                if per_class.get(c, 0) >= class_cap or per_cluster.get(k, 0) >= cluster_cap:
                    continue
                per_class[c] = per_class.get(c, 0) + 1
                if k >= 0:  # -1: not clustered, no cluster cap
                    per_cluster[k] = per_cluster.get(k, 0) + 1
                picks.append(i)
                if len(picks) == need:
                    break
            rows, labels = rows[picks], labels[picks]
            got = None if got is None else _at(got, np.asarray(picks, dtype=np.int64))
        chosen.append(rows)
        clusters.append(labels)
        if got is not None:
            chosen_ids.append(got)
        taken += len(rows)
    if not chosen:
        rows = np.empty(0, dtype=np.int64)
        return rows, rows, ids.output_at(rows)
    rows = np.concatenate(chosen)
    got = ids.output(_concat(chosen_ids)) if exclude else ids.output_at(rows)
    return rows, np.concatenate(clusters), got


def _class_in(classes: np.ndarray, keys: list[Any], text: bool) -> np.ndarray:
    """Whether each class is one of ``keys`` (text classes are compared as ``str``)."""
    if text:
        wanted = set(keys)
        return np.fromiter((str(c) in wanted for c in classes), dtype=bool, count=len(classes))
    return np.isin(classes, keys, kind="sort")


class _Order:
    """The candidates in priority order, of which only a head is ever computed.

    Priority is ``2 * n_rules + (1 - margin)``: rules and disagreement first (someone asked for
    these), then the least certain. ``1 - margin`` is in [0, 1] (score_frame's margin is a
    difference of probabilities), so a row with more rule hits always ranks ahead; a NaN margin
    ranks last. Hence a head of ``m`` rows lies among the rows with at least ``t`` hits as soon
    as ``m`` of them have a margin: the order is computed over those only (in a batch where a
    rule flags a fifth of the rows, ~20k rows instead of ~400k candidates), the same head an
    order of every candidate would give.
    """

    def __init__(
        self, flagged: np.ndarray, hits: np.ndarray, most_hits: int, margin: np.ndarray, total: int
    ) -> None:
        self.flagged, self.hits, self.most_hits, self.margin = flagged, hits, most_hits, margin
        self.total = total  # candidates in all

    def head(self, m: int) -> np.ndarray:
        """Batch positions of the ``m`` highest-priority candidates, highest first."""
        for t in range(self.most_hits, 0, -1):
            at_least = self.hits >= t
            if np.count_nonzero(at_least) < m:
                continue
            idx = np.flatnonzero(at_least)
            priority = self._priority(idx)
            if int(np.count_nonzero(~np.isnan(priority))) >= m:
                head: np.ndarray = idx[_prefix(priority, m)]
                return head
        idx = np.flatnonzero(self.flagged)
        head = idx[_prefix(self._priority(idx), m)]
        return head

    def _priority(self, idx: np.ndarray) -> np.ndarray:
        priority: np.ndarray = np.subtract(1.0, self.margin[idx])
        priority += 2.0 * self.hits[idx]  # in place: one temporary less (same bits as a + b)
        return priority


def _prefix(priority: np.ndarray, m: int) -> np.ndarray:
    """Positions of the ``m`` highest priorities, highest first, ties by position (as a stable
    sort of everything would give), found with one partition instead of a full sort."""
    # NaN (a NaN margin) ranks last, as it does in a sort.
    key = np.where(np.isnan(priority), -np.inf, priority) if np.isnan(priority).any() else priority
    if m < len(key):
        kth = np.partition(key, len(key) - m)[len(key) - m]
        above = np.flatnonzero(key > kth)
        ties = np.flatnonzero(key == kth)[: m - len(above)]
        top = np.sort(np.concatenate([above, ties]))
    else:
        top = np.arange(len(key))
    return top[np.argsort(-key[top], kind="stable")]


def _empty(clustering: bool = False) -> pd.DataFrame:
    columns = ["row_id", "batch_id", "predicted", "confidence", "margin", "priority", "reasons"]
    return pd.DataFrame(columns=[*columns, "cluster"] if clustering else columns)
