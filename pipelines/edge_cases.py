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
        if any(r.name == raw["name"] for r in rules):
            raise RulesError(f"{where}: duplicate rule name")
        rules.append(Rule(str(raw["name"]), str(raw.get("description", "")), tuple(parsed)))
    return rules


def _cond_mask(values: np.ndarray, cond: Condition) -> np.ndarray:
    import numpy as np

    v = cond.value
    if cond.op == "in":
        opts = v if isinstance(v, list) else [v]
        return np.isin(values.astype(str), [str(o) for o in opts])
    if isinstance(v, str) or values.dtype.kind in "OUS":
        left, right = values.astype(str), str(v)
        if cond.op in ("==", "!="):
            eq = left == right
            return eq if cond.op == "==" else ~eq
    else:
        left, right = values.astype(np.float64), float(v)
    return {
        "==": np.equal,
        "!=": np.not_equal,
        "<": np.less,
        "<=": np.less_equal,
        ">": np.greater,
        ">=": np.greater_equal,
    }[cond.op](left, right)


def rule_masks(columns: dict[str, np.ndarray], rules: list[Rule], n: int) -> dict[str, np.ndarray]:
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
    conf = scores["confidence"].to_numpy(dtype=np.float64)
    margin = scores["margin"].to_numpy(dtype=np.float64)
    pred = scores["predicted"].to_numpy()
    masks: dict[str, np.ndarray] = {}
    if settings.min_confidence > 0:
        masks["low_confidence"] = conf < settings.min_confidence
    if settings.min_margin > 0:
        masks["small_margin"] = margin < settings.min_margin
    if settings.disagreement and challenger_predicted is not None:
        masks["disagreement"] = np.asarray(challenger_predicted).astype(str) != pred.astype(str)
    if rules:
        cols: dict[str, np.ndarray] = {c: scores[c].to_numpy() for c in scores.columns}
        if features is not None:
            cols.update({c: features[c].to_numpy() for c in features.columns})
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
        # Hash lookups (pandas isin), not a sort: the exclusion set grows with every label.
        any_reason &= ~scores["row_id"].isin(exclude).to_numpy()
    idx = np.flatnonzero(any_reason)
    if len(idx) == 0:
        return _empty()
    # Rules and disagreement first (someone asked for these), then the least certain.
    priority = n_rules[idx].astype(np.float64) + (1.0 - margin[idx])
    order = idx[np.argsort(-priority, kind="stable")]
    budget = settings.budget if settings.budget > 0 else len(order)
    cap = max(1, math.ceil(budget * settings.max_class_share))
    # Diversity: rank each candidate within its predicted class; keep the top `cap` per class.
    classes = pred[order].astype(str)
    _, inverse = np.unique(classes, return_inverse=True)
    by_class = np.argsort(inverse, kind="stable")  # grouped by class, priority order kept
    groups = inverse[by_class]
    starts = np.r_[0, np.flatnonzero(np.diff(groups)) + 1]
    sizes = np.diff(np.r_[starts, len(groups)])
    rank = np.empty(len(order), dtype=np.int64)
    rank[by_class] = np.arange(len(groups)) - np.repeat(starts, sizes)
    chosen = order[rank < cap][:budget]
    reasons = np.full(len(chosen), "", dtype=object)
    for name, m in masks.items():
        hit = m[chosen]
        reasons[hit] = reasons[hit] + (";" + name)
    out = pd.DataFrame(
        {
            "row_id": scores["row_id"].to_numpy()[chosen],
            "batch_id": scores["batch_id"].to_numpy()[chosen] if "batch_id" in scores else "",
            "predicted": pred[chosen],
            "confidence": conf[chosen],
            "margin": margin[chosen],
            "priority": (n_rules[chosen] + (1.0 - margin[chosen])),
            "reasons": [r.lstrip(";") for r in reasons],
        }
    )
    if challenger_predicted is not None:
        out["challenger_predicted"] = np.asarray(challenger_predicted)[chosen]
    return out


def _empty() -> pd.DataFrame:
    import pandas as pd

    return pd.DataFrame(
        columns=["row_id", "batch_id", "predicted", "confidence", "margin", "priority", "reasons"]
    )
