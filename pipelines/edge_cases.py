"""Edge-case selection: which scored rows are worth an annotator's time.

Strategies, each usable alone or combined (configured under ``edge_cases`` in the config):

* low confidence: top-1 probability below ``min_confidence``;
* small margin: top-1 minus top-2 probability below ``min_margin``;
* disagreement: the challenger predicts another class than the champion;
* failure-trigger rules from a version-controlled YAML file (``rules_file``), e.g. "predicted 7
  with scanner C";
* a per-batch ``budget``, with ``diversity``: no predicted class takes more than
  ``max_class_share`` of it;
* dedupe: rows already queued or labeled are never selected again.

Vectorised over NumPy arrays: one boolean mask per strategy, no copy of the batch per strategy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeloop.errors import EdgeloopError

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

    from edgeloop.config import EdgeCaseSettings

OPS = ("==", "!=", "<", "<=", ">", ">=", "in")
SCORE_COLUMNS = ("predicted", "confidence", "margin")


class RulesError(EdgeloopError):
    """The failure-trigger rules file is invalid (names the file, the rule and the key)."""


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


def _cond_mask(values: Any, cond: Condition) -> np.ndarray:
    """Evaluate one condition on a column (a pandas Series or a NumPy array)."""
    import numpy as np
    import pandas as pd

    series = values if isinstance(values, pd.Series) else pd.Series(values)
    v = cond.value
    numeric = pd.api.types.is_numeric_dtype(series.dtype) and not pd.api.types.is_bool_dtype(
        series.dtype
    )
    if cond.op == "in":
        opts = v if isinstance(v, list) else [v]
        if numeric:
            try:
                nums = [float(o) for o in opts]
            except (TypeError, ValueError):
                raise RulesError(
                    f"condition on {cond.column!r}: 'in' values {opts} are not numbers"
                ) from None
            return np.isin(series.to_numpy(dtype=np.float64, na_value=np.nan), nums)
        return series.astype("str").isin([str(o) for o in opts]).to_numpy(dtype=bool)
    if numeric:
        try:
            right = float(v)
        except (TypeError, ValueError):
            raise RulesError(
                f"condition on numeric column {cond.column!r}: {v!r} is not a number"
            ) from None
        left = series.to_numpy(dtype=np.float64, na_value=np.nan)
    else:
        if cond.op not in ("==", "!="):
            raise RulesError(f"condition on text column {cond.column!r}: only ==, != and in apply")
        eq = (series.astype("str") == str(v)).to_numpy(dtype=bool, na_value=False)
        return eq if cond.op == "==" else ~eq
    return {
        "==": np.equal,
        "!=": np.not_equal,
        "<": np.less,
        "<=": np.less_equal,
        ">": np.greater,
        ">=": np.greater_equal,
    }[cond.op](left, right)


def rule_masks(columns: dict[str, Any], rules: list[Rule], n: int) -> dict[str, np.ndarray]:
    """One boolean mask per rule."""
    import numpy as np

    out = {}
    for rule in rules:
        m = np.ones(n, dtype=bool)
        for cond in rule.when:
            m &= _cond_mask(columns[cond.column], cond)
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
    rows' inputs (for rules); ``challenger_predicted`` aligned with ``scores``. Inputs are not
    modified.
    """
    import numpy as np
    import pandas as pd

    n = len(scores)
    if n == 0:
        return _empty()
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
    if not masks or n == 0:
        return _empty()
    any_reason = np.zeros(n, dtype=bool)
    n_rules = np.zeros(n, dtype=np.int8)
    for name, m in masks.items():
        any_reason |= m
        if name.startswith("rule:") or name == "disagreement":
            n_rules += m
    if exclude:
        any_reason &= ~_excluded(scores["row_id"], exclude)
    idx = np.flatnonzero(any_reason)
    if len(idx) == 0:
        return _empty()
    # Rules and disagreement first (someone asked for these), then the least certain:
    # (1 - margin) is in [0, 1], so weighting rule hits by 2 keeps every rule row ahead.
    priority = 2.0 * n_rules[idx] + (1.0 - margin[idx])
    budget = settings.budget if settings.budget > 0 else len(idx)
    # Diversity: no predicted class takes more than its share of the budget (no budget: no cap).
    cap = max(1, math.ceil(budget * settings.max_class_share)) if settings.budget > 0 else len(idx)
    codes = pred[idx] if pred.dtype.kind in "iu" else pd.factorize(pred[idx].astype(str))[0]
    parts = []
    for c in np.unique(codes):
        pos = np.flatnonzero(codes == c)
        p = priority[pos]
        if len(p) > cap:
            # The class's top `cap` (ties: earlier row first) without sorting all of it.
            kth = np.partition(p, len(p) - cap)[len(p) - cap]
            above = np.flatnonzero(p > kth)
            ties = np.flatnonzero(p == kth)[: cap - len(above)]
            pos = pos[np.sort(np.r_[above, ties])]
        parts.append(pos)
    kept = np.sort(np.concatenate(parts))
    kept = kept[np.argsort(-priority[kept], kind="stable")][:budget]
    chosen = idx[kept]
    reasons = np.full(len(chosen), "", dtype=object)
    for name, m in masks.items():
        hit = m[chosen]
        reasons[hit] = reasons[hit] + (";" + name)
    out = pd.DataFrame(
        {
            # Take the chosen rows first: converting whole id columns costs more than selecting.
            "row_id": scores["row_id"].iloc[chosen].to_numpy(),
            "batch_id": scores["batch_id"].iloc[chosen].to_numpy() if "batch_id" in scores else "",
            "predicted": pred[chosen],
            "confidence": conf[chosen],
            "margin": margin[chosen],
            "priority": 2.0 * n_rules[chosen] + (1.0 - margin[chosen]),
            "reasons": [r.lstrip(";") for r in reasons],
        }
    )
    if challenger_predicted is not None:
        out["challenger_predicted"] = np.asarray(challenger_predicted)[chosen]
    return out


def _excluded(ids: pd.Series, exclude: set[str] | frozenset[str]) -> np.ndarray:
    """Hash lookup of ids in the exclusion set (Arrow's is_in: pandas would box every id)."""
    import numpy as np
    import pandas as pd
    import pyarrow as pa
    import pyarrow.compute as pc

    if isinstance(ids.dtype, pd.StringDtype) and ids.dtype.storage == "pyarrow":
        arr = pa.array(ids)
        return np.asarray(
            pc.is_in(arr, value_set=pa.array(list(exclude), type=arr.type)), dtype=bool
        )
    return ids.isin(exclude).to_numpy()


def _empty() -> pd.DataFrame:
    import pandas as pd

    return pd.DataFrame(
        columns=["row_id", "batch_id", "predicted", "confidence", "margin", "priority", "reasons"]
    )
