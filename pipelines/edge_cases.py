"""Edge-case selection: which scored rows are worth an annotator's time.

Strategies, each usable alone or combined (configured under ``edge_cases`` in the config):

* low confidence: top-1 probability below ``min_confidence``;
* small margin: top-1 minus top-2 probability below ``min_margin``;
* disagreement: the challenger predicts another class than the champion;
* failure-trigger rules from a version-controlled YAML file (``rules_file``), e.g. "predicted 7
  with scanner C";
* a per-batch ``budget``, with diversity: no predicted class takes more than
  ``max_class_share`` of it, and no cluster more than ``max_cluster_share`` (the candidates are
  clustered by a seeded k-means on their standardised numeric features, ``n_clusters`` centres
  fitted on a sample of them); the budget is filled in priority order, skipping rows whose class
  or cluster is full, so the others fill it; when too few classes or clusters have candidates,
  fewer rows than the budget are selected (a cap is never lifted to fill the budget);
* dedupe: rows already queued or labeled are never selected again.

Vectorised over NumPy arrays: one boolean mask per strategy, no copy of the batch per strategy.
Only the head of the priority order that the budget needs is sorted, looked up in the exclusion
set and clustered, so a 1M-row batch costs a few passes over a few of its columns.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeloop.core.errors import RulesError

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

    from edgeloop.core.config import EdgeCaseSettings

OPS = ("==", "!=", "<", "<=", ">", ">=", "in")
SCORE_COLUMNS = ("predicted", "confidence", "margin")


@dataclass(frozen=True)
class Condition:
    column: str
    op: str
    value: Any


@dataclass(frozen=True)
class Rule:
    """All conditions must hold (AND) for the rule to flag a row."""

    name: str
    description: str
    when: tuple[Condition, ...]


def load_rules(path: Path, known_columns: list[str]) -> list[Rule]:
    """Read and check the rules file; an unknown column or operator is an error naming both."""
    import yaml

    if not path.exists():
        return []
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise RulesError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("rules", []), list):
        raise RulesError(f"{path}: expected a mapping with a list under 'rules'")
    extra = sorted(set(data) - {"rules"})
    if extra:
        raise RulesError(f"{path}: unknown top-level key(s) {extra}")
    rules: list[Rule] = []
    for i, raw in enumerate(data.get("rules") or []):
        where = f"{path}: rules[{i}]"
        if not isinstance(raw, dict) or "name" not in raw or "when" not in raw:
            raise RulesError(f"{where}: each rule needs 'name' and 'when'")
        where = f"{path}: rule {raw['name']!r}"
        unknown_keys = sorted(set(raw) - {"name", "description", "when"})
        if unknown_keys:
            raise RulesError(f"{where}: unknown key(s) {unknown_keys}")
        conds = raw["when"] if isinstance(raw["when"], list) else [raw["when"]]
        if not conds:
            raise RulesError(f"{where}: 'when' is empty (it would flag every row)")
        parsed = []
        for c in conds:
            if not isinstance(c, dict) or set(c) - {"column", "op", "value"} or "column" not in c:
                raise RulesError(f"{where}: a condition is {{column, op, value}}, got {c!r}")
            if c["column"] not in known_columns:
                raise RulesError(
                    f"{where}: unknown column {c['column']!r} (known: features, {', '.join(SCORE_COLUMNS)}, p_<class>)"
                )
            op = c.get("op", "==")
            if op not in OPS:
                raise RulesError(f"{where}: unknown operator {op!r} (one of {', '.join(OPS)})")
            if "value" not in c:
                raise RulesError(f"{where}: condition on {c['column']!r} has no 'value'")
            parsed.append(Condition(c["column"], op, c["value"]))
        if any(r.name == str(raw["name"]) for r in rules):
            raise RulesError(f"{where}: duplicate rule name")
        rules.append(Rule(str(raw["name"]), str(raw.get("description", "")), tuple(parsed)))
    return rules


def _is_numeric(values: Any) -> bool:
    """Numbers (not booleans): compared with the rules file's values as numbers."""
    import pandas as pd

    dtype = values.dtype
    return pd.api.types.is_numeric_dtype(dtype) and not pd.api.types.is_bool_dtype(dtype)


def _arrow_strings(values: pd.Series) -> bool:
    """A pandas ``str``/``string`` column stored by Arrow."""
    import pandas as pd

    return isinstance(values.dtype, pd.StringDtype) and values.dtype.storage == "pyarrow"


def _numbers(values: Any) -> np.ndarray:
    """A numeric column as a NumPy array, missing values as NaN; no copy when it is one already."""
    import numpy as np

    if isinstance(values, np.ndarray):
        return values if values.dtype.kind in "iuf" else values.astype(np.float64)
    if isinstance(values.dtype, np.dtype) and values.dtype.kind in "iuf":
        return values.to_numpy()
    return values.to_numpy(dtype=np.float64, na_value=np.nan)


def _same_kind(left: np.ndarray, value: float) -> float | int:
    """A whole number as an int for an integer column: NumPy then compares integers directly
    (~3x faster than casting every value to float64, and the same answer)."""
    import numpy as np

    if left.dtype.kind in "iu" and value.is_integer():
        info = np.iinfo(left.dtype)
        if info.min <= value <= info.max:  # out of range, NumPy would refuse the int
            return int(value)
    return value


def _cond_mask(values: Any, cond: Condition, rows: np.ndarray | None = None) -> np.ndarray:
    """Evaluate one condition on a column (a pandas Series or a NumPy array).

    With ``rows`` (positions), only on those rows: the mask has one entry per position.
    """
    import numpy as np
    import pandas as pd

    arrow_text = isinstance(values, pd.Series) and _arrow_strings(values)
    if rows is not None and not arrow_text:
        values = values.iloc[rows] if isinstance(values, pd.Series) else np.asarray(values)[rows]
    v = cond.value
    if _is_numeric(values):
        left = _numbers(values)
        if cond.op == "in":
            opts = v if isinstance(v, list) else [v]
            try:
                nums = [float(o) for o in opts]
            except (TypeError, ValueError):
                raise RulesError(
                    f"condition on {cond.column!r}: 'in' values {opts} are not numbers"
                ) from None
            wanted = [_same_kind(left, x) for x in nums]
            if len(wanted) > 8:
                # kind="sort": NumPy's "table" kind (the default for integers) is ~20x slower.
                return np.isin(left, wanted, kind="sort")
            # A short list: one comparison per value, ORed (np.isin does the same plus
            # conversions: ~3x the time on 1M rows).
            hit = left == wanted[0]
            for x in wanted[1:]:
                hit |= left == x
            return hit
        try:
            right = _same_kind(left, float(v))
        except (TypeError, ValueError):
            raise RulesError(
                f"condition on numeric column {cond.column!r}: {v!r} is not a number"
            ) from None
        return {
            "==": np.equal,
            "!=": np.not_equal,
            "<": np.less,
            "<=": np.less_equal,
            ">": np.greater,
            ">=": np.greater_equal,
        }[cond.op](left, right)
    if cond.op not in ("==", "!=", "in"):
        raise RulesError(f"condition on text column {cond.column!r}: only ==, != and in apply")
    texts = [str(o) for o in v] if cond.op == "in" and isinstance(v, list) else [str(v)]
    series = values if isinstance(values, pd.Series) else pd.Series(values)
    if arrow_text:
        # The Arrow buffers are compared as they are: no text copy, no Python strings.
        import pyarrow as pa

        eq = _arrow_text_equal(pa.array(series), texts, rows)
    elif cond.op == "in":
        eq = series.astype("str").isin(texts).to_numpy(dtype=bool)
    else:
        eq = (series.astype("str") == texts[0]).to_numpy(dtype=bool, na_value=False)
    return ~eq if cond.op == "!=" else eq


def _arrow_text_equal(arr: Any, texts: list[str], rows: np.ndarray | None) -> np.ndarray:
    """Whether each value (at ``rows``, or every value) of an Arrow string array equals one of
    ``texts``; a missing value equals nothing.

    Arrow's own ``equal``/``is_in`` compare every row's string: ~7 ms for 1M rows, plus a take
    (a copy of their text) to look at some rows only. This reads Arrow's buffers in place:
    lengths from the offsets, then the first byte of every row, then the other bytes of the
    rows still matching only: ~1 ms on the same column. Other Arrow types (dictionary,
    string_view) go to Arrow's ``is_in``. ``tests/test_edge_cases.py`` checks it against Arrow.
    """
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    width = {pa.string(): np.int32, pa.large_string(): np.int64}.get(arr.type)
    if width is None:
        taken = arr if rows is None else _arrow_take(arr, rows)
        hit = pc.is_in(taken, value_set=pa.array(texts, type=arr.type))
        return np.asarray(hit.fill_null(False).to_numpy(zero_copy_only=False), dtype=bool)
    wanted = [np.frombuffer(t.encode(), dtype=np.uint8) for t in texts]
    chunks = arr.chunks if isinstance(arr, pa.ChunkedArray) else [arr]
    bounds = np.cumsum([0, *(len(c) for c in chunks)])
    # (chunk, where in the output, rows of the chunk or None, first and end row of a block)
    parts: list[tuple[Any, Any, np.ndarray | None, int, int]] = []
    if rows is None:
        # Every row, in blocks whose temporaries stay in the CPU caches (8 MB of int64
        # lengths for 1M rows would not; measured ~2x slower).
        for i, chunk in enumerate(chunks):
            for lo in range(0, len(chunk), _TEXT_BLOCK):
                hi = min(lo + _TEXT_BLOCK, len(chunk))
                parts.append((chunk, slice(bounds[i] + lo, bounds[i] + hi), None, lo, hi))
    elif len(chunks) == 1:
        parts.append((chunks[0], slice(None), rows, 0, len(arr)))
    else:
        which = np.searchsorted(bounds, rows, side="right") - 1
        for i, chunk in enumerate(chunks):
            where = np.flatnonzero(which == i)
            parts.append((chunk, where, rows[where] - bounds[i], 0, len(chunk)))
    out = np.zeros(len(arr) if rows is None else len(rows), dtype=bool)
    for chunk, where, local, lo, hi in parts:
        validity, offsets_buf, data_buf = chunk.buffers()
        offsets = np.frombuffer(
            offsets_buf,
            dtype=width,
            count=len(chunk) + 1,
            offset=chunk.offset * np.dtype(width).itemsize,
        )
        data = np.frombuffer(data_buf, dtype=np.uint8) if data_buf is not None else None
        start = offsets[lo:hi] if local is None else offsets.take(local)
        length = (offsets[lo + 1 : hi + 1] if local is None else offsets.take(local + 1)) - start
        hit = np.zeros(len(start), dtype=bool)
        for value in wanted:
            same = length == len(value)
            if len(value) and (data is None or len(data) == 0):
                same[:] = False  # every string is empty
            elif len(value) and local is None and same.all():
                # Every row of the block is as long as the value (fixed-width codes): their
                # bytes are one run, compared in place (a gather of 1M first bytes: ~1.4 ms).
                first = int(start[0])
                run = data[first : first + len(start) * len(value)].reshape(-1, len(value))
                same = run[:, 0] == value[0]
                for j in range(1, len(value)):
                    same &= run[:, j] == value[j]
            elif len(value):
                # clip: a row whose length differs may start at the end of the buffer.
                same &= data.take(start, mode="clip") == value[0]
                if len(value) > 1:
                    pos = np.flatnonzero(same)
                    at = start[pos]
                    for j in range(1, len(value)):
                        keep = data.take(at + j, mode="clip") == value[j]
                        pos, at = pos[keep], at[keep]
                    same[:] = False
                    same[pos] = True
            hit |= same
        if chunk.null_count:
            # Only the bytes of the validity bitmap that cover rows lo..hi of the chunk.
            first, end = chunk.offset + lo, chunk.offset + hi
            bits = np.frombuffer(validity, dtype=np.uint8)[first // 8 : (end + 7) // 8]
            valid = np.unpackbits(bits, bitorder="little")[first % 8 :].view(bool)
            hit &= valid[: hi - lo] if local is None else valid[local - lo]
        out[where] = hit
    return out


#: Rows per block when every row of a text column is compared (see _arrow_text_equal).
_TEXT_BLOCK = 1 << 16


def rule_masks(columns: dict[str, Any], rules: list[Rule], n: int) -> dict[str, np.ndarray]:
    """One boolean mask per rule."""
    import numpy as np

    out = {}
    for rule in rules:
        # Numeric conditions first, on every row (a comparison is cheaper than picking rows);
        # a text condition not stored by Arrow (Python strings) then only needs the rows
        # still matching (AND), often a fraction.
        conds = sorted(rule.when, key=lambda c: not _is_numeric(columns[c.column]))
        m = np.array(_cond_mask(columns[conds[0].column], conds[0]), dtype=bool).reshape(n)
        for cond in conds[1:]:
            values = columns[cond.column]
            # Arrow text is compared in place, every row at ~1 ns: cheaper than picking rows.
            by_rows = not _is_numeric(values) and not _arrow_strings(values)
            pos = np.flatnonzero(m) if by_rows else None
            if pos is not None and 2 * len(pos) < n:
                m[pos] = _cond_mask(values, cond, pos)
            else:
                m &= _cond_mask(values, cond)
        out[rule.name] = m
    return out


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
    import numpy as np

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
    if settings.disagreement and challenger_predicted is not None:
        other = np.asarray(challenger_predicted)
        if pred.dtype.kind in "iu" and other.dtype.kind in "iu":
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
    class_cap = max(1, math.ceil(budget * settings.max_class_share)) if limited else budget
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
    import pandas as pd

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


def _candidates(masks: dict[str, np.ndarray], margin: np.ndarray) -> _Order:
    """The rows any mask flags, and per row how many masks count as "someone asked for these"
    (rules and disagreement), in priority order."""
    import numpy as np

    first, *others = masks.values()
    flagged = first.copy()
    for m in others:
        flagged |= m
    asked = [m for name, m in masks.items() if name.startswith("rule:") or name == "disagreement"]
    # int8 (a fast pass over the batch) unless a row could match more than 127 masks; added as
    # int8 views of the masks (adding booleans casts each one: twice the time).
    hits = np.zeros(len(first), dtype=np.int8 if len(asked) <= 127 else np.int16)
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
    import numpy as np

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
    import numpy as np

    if text:
        wanted = set(keys)
        return np.fromiter((str(c) in wanted for c in classes), dtype=bool, count=len(classes))
    return np.isin(classes, keys, kind="sort")


def _labels(model: _Clusters | None, rows: np.ndarray) -> np.ndarray:
    """Cluster ids of ``rows`` (-1 for every row when there are no clusters)."""
    import numpy as np

    if model is None:
        return np.full(len(rows), -1, dtype=np.int64)
    return model.assign(rows)


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
        import numpy as np

        for t in range(self.most_hits, 0, -1):
            at_least = self.hits >= t
            if np.count_nonzero(at_least) < m:
                continue
            idx = np.flatnonzero(at_least)
            priority = self._priority(idx)
            if int(np.count_nonzero(~np.isnan(priority))) >= m:
                return idx[_prefix(priority, m)]
        idx = np.flatnonzero(self.flagged)
        return idx[_prefix(self._priority(idx), m)]

    def _priority(self, idx: np.ndarray) -> np.ndarray:
        import numpy as np

        priority = np.subtract(1.0, self.margin[idx])
        priority += 2.0 * self.hits[idx]  # in place: one temporary less (same bits as a + b)
        return priority


def _prefix(priority: np.ndarray, m: int) -> np.ndarray:
    """Positions of the ``m`` highest priorities, highest first, ties by position (as a stable
    sort of everything would give), found with one partition instead of a full sort."""
    import numpy as np

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


#: Candidates sampled per cluster to fit the clusters: ~32 rows per centre place the centres well
#: enough for a cap, and k-means on 256 rows (8 clusters) costs ~2.5 ms, where reading every
#: candidate's features (~40 % of a 1M-row batch) would cost more than the rest of the selection.
SAMPLE_PER_CLUSTER = 32
#: Above this many ids, look them up with Arrow (one hash of the set) rather than one by one.
_ARROW_LOOKUP_FROM = 20_000


@dataclass(frozen=True, eq=False)  # eq=False: arrays and frames do not compare as a bool
class _Clusters:
    """k-means centres in standardised feature space, the batch's numeric features they are
    read from, and how to standardise a row."""

    # A column selection of the batch's frame: under pandas' copy-on-write a view, no copy.
    # Made once per selection: pandas rebuilds a column selection on each `iloc[rows, cols]`.
    numeric: pd.DataFrame
    mean: np.ndarray
    scale: np.ndarray
    centers: np.ndarray

    def assign(self, rows: np.ndarray) -> np.ndarray:
        """The nearest centre of each row (positions in the batch)."""
        import numpy as np

        # Read the rows in batch order (kinder to the caches than priority order), then put
        # the labels back in the caller's order.
        order = np.argsort(rows, kind="stable")
        z = _standardise(_matrix(self.numeric, rows[order]), self.mean, self.scale)
        labels = np.empty(len(rows), dtype=np.int64)
        labels[order] = _nearest(z, self.centers)
        return labels


def _fit_clusters(
    features: pd.DataFrame,
    idx: np.ndarray,
    ids: _Column,
    exclude: set[str] | frozenset[str],
    n_clusters: int,
    seed: int,
) -> _Clusters | None:
    """k-means (k-means++ start, Lloyd iterations) on a seeded sample of the candidates that are
    not excluded, on their numeric features standardised with the sample's mean and std.

    Why not scikit-learn: on this sample (256 rows x 64 features, 8 clusters) its MiniBatchKMeans
    took ~90 ms of CPU and KMeans(n_init=1) ~20 ms, mostly per-call set-up and BLAS threads; these
    few NumPy lines take ~2.5 ms, the whole selection of a 1M-row batch ~30 ms.
    None when there is no numeric feature or no candidate left to sample.
    """
    import numpy as np
    import pandas as pd

    columns = [
        j
        for j, dtype in enumerate(features.dtypes)
        if pd.api.types.is_numeric_dtype(dtype)  # booleans too, as 0/1
    ]
    if not columns:
        return None
    rng = np.random.default_rng(seed)
    size = SAMPLE_PER_CLUSTER * n_clusters
    sample = idx if len(idx) <= size else np.sort(rng.choice(idx, size, replace=False))
    if exclude:
        sample = sample[~_excluded_at(ids, sample, exclude)]
    if len(sample) == 0:
        return None
    numeric = features.iloc[:, columns]
    x = _matrix(numeric, sample)
    seen = ~np.isnan(x)
    counts = seen.sum(axis=0)
    mean = np.where(seen, x, 0.0).sum(axis=0) / np.maximum(counts, 1)
    var = np.where(seen, (x - mean) ** 2, 0.0).sum(axis=0) / np.maximum(counts, 1)
    # A constant column carries no distance: scale 1 leaves it at 0 for every row.
    scale = np.where(var > 0, np.sqrt(var), 1.0)
    z = _standardise(x, mean, scale)
    return _Clusters(numeric, mean, scale, _kmeans(z, n_clusters, rng))


def _matrix(numeric: pd.DataFrame, rows: np.ndarray) -> np.ndarray:
    """The numeric features of ``rows`` as float64 (missing: NaN); only those rows are read."""
    import numpy as np

    return numeric.iloc[rows].to_numpy(dtype=np.float64, na_value=np.nan)


def _standardise(x: np.ndarray, mean: np.ndarray, scale: np.ndarray) -> np.ndarray:
    import numpy as np

    z = (x - mean) / scale
    z[np.isnan(z)] = 0.0  # a missing value sits at the mean
    return z


def _nearest(z: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """Index of the nearest centre per row (ties: the lower index)."""
    import numpy as np

    # |z - c|^2 = |z|^2 - 2 z.c + |c|^2, and |z|^2 is the same for every centre of a row.
    # einsum, not `@`: a BLAS product this size wakes OpenBLAS's threads, which then spin on
    # the other core; measured, that doubled the CPU time of the whole selection on 2 cores.
    return ((centers * centers).sum(axis=1) - 2.0 * np.einsum("ij,kj->ik", z, centers)).argmin(
        axis=1
    )


def _kmeans(z: np.ndarray, k: int, rng: np.random.Generator, max_iter: int = 10) -> np.ndarray:
    """Centres: k-means++ start, then Lloyd iterations until no row changes cluster (at most
    ``max_iter``: a cap needs coarse clusters, not the last digit of the centres).

    Fewer than ``k`` centres when the sample has fewer distinct rows (k-means++ stops when every
    row sits on a centre): identical rows always share one cluster.
    """
    import numpy as np

    centers = [z[int(rng.integers(len(z)))]]
    d2 = ((z - centers[0]) ** 2).sum(axis=1)
    while len(centers) < k:
        total = float(d2.sum())
        if not total > 0:
            break
        cum = np.cumsum(d2)
        j = int(np.searchsorted(cum, rng.random() * total, side="right"))
        if j >= len(z) or d2[j] <= 0:  # rounding at the top end: the last row off-centre
            j = int(np.flatnonzero(d2 > 0)[-1])
        centers.append(z[j])
        d2 = np.minimum(d2, ((z - z[j]) ** 2).sum(axis=1))
    c = np.array(centers)
    labels = _nearest(z, c)
    for _ in range(max_iter):
        # Per-centre means: rows grouped by label, one reduceat (no BLAS, see _nearest).
        order = np.argsort(labels, kind="stable")
        counts = np.bincount(labels, minlength=len(c))
        filled = np.flatnonzero(counts)  # an emptied centre stays where it was
        starts = np.r_[0, np.cumsum(counts)[:-1]][filled]
        c[filled] = np.add.reduceat(z[order], starts, axis=0) / counts[filled, None]
        new = _nearest(z, c)
        if np.array_equal(new, labels):
            break
        labels = new
    return c


def _excluded_at(ids: _Column, rows: np.ndarray, exclude: set[str] | frozenset[str]) -> np.ndarray:
    """Whether the ids at ``rows`` are in ``exclude``."""
    return _in_set(ids.at(rows), exclude)


def _in_set(values: Any, exclude: set[str] | frozenset[str]) -> np.ndarray:
    """Whether each of ``values`` (from ``_Column.at``) is in ``exclude``: a few thousand ids are
    looked up one by one in the set; Arrow's hash pays off only for many (it hashes the whole
    set first)."""
    import numpy as np

    if isinstance(values, np.ndarray):
        if len(values) >= _ARROW_LOOKUP_FROM:
            import pandas as pd

            return pd.Series(values).isin(exclude).to_numpy()
        items = values.tolist()
    else:
        import pyarrow as pa
        import pyarrow.compute as pc

        if len(values) >= _ARROW_LOOKUP_FROM:
            hit = pc.is_in(values, value_set=pa.array(list(exclude), type=values.type))
            return np.asarray(hit.fill_null(False), dtype=bool)
        items = values.to_pylist()
    return np.fromiter((v in exclude for v in items), dtype=bool, count=len(items))


class _Column:
    """A column read at a few rows at a time (ids, batch ids): Arrow text as small Arrow arrays
    (no Python strings made, no chunked column concatenated first), anything else as NumPy.
    Its Arrow view and chunk bounds are looked up once per selection, not once per read."""

    def __init__(self, values: pd.Series) -> None:
        import numpy as np

        self.values = values
        self.arrow: Any = None
        self.bounds: np.ndarray | None = None
        if _arrow_strings(values):
            import pyarrow as pa

            self.arrow = pa.array(values)
            if isinstance(self.arrow, pa.ChunkedArray) and self.arrow.num_chunks > 1:
                self.bounds = np.cumsum([0, *(len(c) for c in self.arrow.chunks)])

    def at(self, rows: np.ndarray) -> Any:
        """The values at ``rows`` (Arrow or NumPy)."""
        if self.arrow is None:
            return self.values.iloc[rows].to_numpy()
        return _arrow_take(self.arrow, rows, self.bounds)

    def output(self, values: Any) -> Any:
        """Values from ``at`` as an output column with the column's dtype."""
        import numpy as np
        import pandas as pd

        return values if isinstance(values, np.ndarray) else pd.array(values, self.values.dtype)

    def output_at(self, rows: np.ndarray) -> Any:
        """The values at ``rows`` as an output column."""
        return self.output(self.at(rows))


def _at(values: Any, positions: np.ndarray) -> Any:
    """``values[positions]`` for a NumPy or an Arrow array (from ``_Column.at``)."""
    import numpy as np

    return values[positions] if isinstance(values, np.ndarray) else values.take(positions)


def _concat(parts: list[Any]) -> Any:
    """One array of ``_Column.at`` arrays."""
    import numpy as np

    if isinstance(parts[0], np.ndarray):
        return np.concatenate(parts)
    import pyarrow as pa

    return pa.concat_arrays(parts)


def _arrow_take(arr: Any, rows: np.ndarray, bounds: np.ndarray | None = None) -> Any:
    """``arr.take(rows)`` for an Arrow array or chunked array, chunk by chunk (``bounds``: the
    first row of each chunk and the length, when known already).

    Arrow's own take on a chunked array first concatenates the chunks, copying the whole
    column: ~5 ms for 1M ids (a Parquet read gives 8 chunks) to take a thousand of them.
    """
    import numpy as np
    import pyarrow as pa

    if not isinstance(arr, pa.ChunkedArray):
        return arr.take(rows)
    if arr.num_chunks == 1:
        return arr.chunk(0).take(rows)
    if bounds is None:
        bounds = np.cumsum([0, *(len(c) for c in arr.chunks)])
    which = np.searchsorted(bounds, rows, side="right") - 1
    order = np.argsort(which, kind="stable")  # grouped by chunk, in the rows' order within
    grouped, chunk_of = rows[order], which[order]
    cuts = np.searchsorted(chunk_of, np.arange(arr.num_chunks + 1))
    pieces = [
        arr.chunk(i).take(grouped[lo:hi] - bounds[i])
        for i, (lo, hi) in enumerate(pairwise(cuts))
        if hi > lo
    ]
    taken = pa.concat_arrays(pieces) if pieces else arr.chunk(0).slice(0, 0)
    back = np.empty_like(order)
    back[order] = np.arange(len(order))
    return taken.take(back)  # the rows' own order again (a take of the small result)


def _empty(clustering: bool = False) -> pd.DataFrame:
    import pandas as pd

    columns = ["row_id", "batch_id", "predicted", "confidence", "margin", "priority", "reasons"]
    return pd.DataFrame(columns=[*columns, "cluster"] if clustering else columns)
