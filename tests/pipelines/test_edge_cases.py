"""Edge-case selection (``pipelines.edge_cases``): pure and fast, on hand-built score frames.

The frame below is built the way ``pipelines.score.score_frame`` builds one (predicted = argmax,
confidence = top-1, margin = top-1 minus top-2, ``p_<class>``), with thresholds chosen so each row
is flagged by a known set of strategies:

======  ==================  =====  ==========  ======  ==========  =======  =======================
row     p_0, p_1, p_2       pred   confidence  margin  challenger  scanner  flagged by
======  ==================  =====  ==========  ======  ==========  =======  =======================
r0      .90 .05 .05         0      .90         .85     0           A        nothing
r1      .45 .50 .05         1      .50         .05     1           A        low conf, small margin
r2      .59 .20 .21         0      .59         .38     0           B        low conf
r3      .03 .35 .62         2      .62         .27     2           B        small margin
r4      .10 .80 .10         1      .80         .70     2           A        disagreement
r5      .05 .05 .90         2      .90         .85     2           C        rule
r6      .95 .03 .02         0      .95         .92     0           C        nothing (rule: not 0)
r7      .40 .30 .30         0      .40         .10     1           B        low conf, margin, disagr.
======  ==================  =====  ==========  ======  ==========  =======  =======================
"""

from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from edgeloop.core.config import EdgeCaseSettings
from edgeloop.core.errors import RulesError
from edgeloop.data.readers import load_rules
from pipelines.edge_cases import SCORE_COLUMNS, Condition, Rule, rule_masks, select

CLASSES = [0, 1, 2]
FEATURES = ["age", "scanner"]
KNOWN = [*FEATURES, *SCORE_COLUMNS, *(f"p_{c}" for c in CLASSES)]
EMPTY_COLUMNS = ["row_id", "batch_id", "predicted", "confidence", "margin", "priority", "reasons"]

PROBS = np.array(
    [
        [0.90, 0.05, 0.05],
        [0.45, 0.50, 0.05],
        [0.59, 0.20, 0.21],
        [0.03, 0.35, 0.62],
        [0.10, 0.80, 0.10],
        [0.05, 0.05, 0.90],
        [0.95, 0.03, 0.02],
        [0.40, 0.30, 0.30],
    ]
)
CHALLENGER = np.array([0, 1, 0, 2, 2, 2, 0, 1], dtype=object)
SCANNER = ["A", "A", "B", "B", "A", "C", "C", "B"]

RULES_YAML = """\
rules:
  - name: scanner_c_not_zero
    description: scanner C rows the model does not call 0
    when:
      - {column: scanner, op: "==", value: C}
      - {column: predicted, op: in, value: [1, 2]}
"""


def scores_frame(probs: np.ndarray, ids: list[str] | None = None) -> pd.DataFrame:
    """Like ``pipelines.score.score_frame``, from probabilities instead of a model."""
    ids = ids or [f"r{i}" for i in range(len(probs))]
    top2 = np.sort(probs, axis=1)[:, -2:]
    out = pd.DataFrame(
        {
            "row_id": ids,
            "batch_id": "b1",
            "predicted": np.asarray(CLASSES, dtype=object)[probs.argmax(axis=1)],
            "confidence": top2[:, 1],
            "margin": top2[:, 1] - top2[:, 0],
        }
    )
    for j, c in enumerate(CLASSES):
        out[f"p_{c}"] = probs[:, j]
    return out


@pytest.fixture()
def scores() -> pd.DataFrame:
    return scores_frame(PROBS)


@pytest.fixture()
def features() -> pd.DataFrame:
    return pd.DataFrame(
        {"age": [30, 41, 52, 63, 24, 35, 46, 57], "scanner": pd.array(SCANNER, dtype="str")}
    )


@pytest.fixture()
def rules(tmp_path: Path) -> list[Rule]:
    path = tmp_path / "edge_rules.yaml"
    path.write_text(RULES_YAML, encoding="utf-8")
    return load_rules(path, KNOWN)


def settings(**kw: object) -> EdgeCaseSettings:
    """Every strategy off, no budget, no diversity cap (class or cluster), unless asked."""
    base: dict[str, object] = {
        "min_confidence": 0.0,
        "min_margin": 0.0,
        "disagreement": False,
        "budget": 0,
        "max_class_share": 1.0,
        "n_clusters": 0,
    }
    return EdgeCaseSettings(**{**base, **kw})


ALL_ON = {"min_confidence": 0.6, "min_margin": 0.3, "disagreement": True}


def picked(out: pd.DataFrame) -> list[str]:
    return out["row_id"].tolist()


def reasons(out: pd.DataFrame) -> dict[str, set[str]]:
    return {r: set(why.split(";")) for r, why in zip(out["row_id"], out["reasons"], strict=True)}


# ------------------------------------------------------------------ each strategy alone
def test_frame_matches_the_table(scores: pd.DataFrame) -> None:
    assert scores["predicted"].tolist() == [0, 1, 0, 2, 1, 2, 0, 0]
    assert np.allclose(scores["confidence"], [0.90, 0.50, 0.59, 0.62, 0.80, 0.90, 0.95, 0.40])
    assert np.allclose(scores["margin"], [0.85, 0.05, 0.38, 0.27, 0.70, 0.85, 0.92, 0.10])


def test_low_confidence_alone(scores: pd.DataFrame) -> None:
    out = select(scores, settings(min_confidence=0.6))
    assert sorted(picked(out)) == ["r1", "r2", "r7"]
    assert set(out["reasons"]) == {"low_confidence"}


def test_small_margin_alone(scores: pd.DataFrame) -> None:
    out = select(scores, settings(min_margin=0.3))
    assert sorted(picked(out)) == ["r1", "r3", "r7"]
    assert set(out["reasons"]) == {"small_margin"}


def test_disagreement_alone(scores: pd.DataFrame) -> None:
    out = select(scores, settings(disagreement=True), challenger_predicted=CHALLENGER)
    assert sorted(picked(out)) == ["r4", "r7"]
    assert set(out["reasons"]) == {"disagreement"}
    assert dict(zip(out["row_id"], out["challenger_predicted"], strict=True)) == {"r4": 2, "r7": 1}


def test_disagreement_compares_as_text(scores: pd.DataFrame) -> None:
    """A challenger whose classes come back as text ("1") does not disagree with 1."""
    as_text = CHALLENGER.astype(str)
    out = select(scores, settings(disagreement=True), challenger_predicted=as_text)
    assert sorted(picked(out)) == ["r4", "r7"]


def test_disagreement_needs_a_challenger(scores: pd.DataFrame) -> None:
    out = select(scores, settings(disagreement=True))
    assert out.empty and list(out.columns) == EMPTY_COLUMNS


def test_rule_alone(scores: pd.DataFrame, features: pd.DataFrame, rules: list[Rule]) -> None:
    out = select(scores, settings(), features=features, rules=rules)
    assert picked(out) == ["r5"]
    assert out["reasons"].tolist() == ["rule:scanner_c_not_zero"]


def test_rule_on_score_columns_needs_no_features(scores: pd.DataFrame) -> None:
    rule = Rule("unsure_zero", "", (Condition("predicted", "==", 0), Condition("margin", "<", 0.5)))
    out = select(scores, settings(), rules=[rule])
    assert sorted(picked(out)) == ["r2", "r7"]
    assert set(out["reasons"]) == {"rule:unsure_zero"}


# ------------------------------------------------------------------ combined
def test_combined_strategies_list_every_reason(
    scores: pd.DataFrame, features: pd.DataFrame, rules: list[Rule]
) -> None:
    out = select(
        scores,
        settings(**ALL_ON),
        features=features,
        challenger_predicted=CHALLENGER,
        rules=rules,
    )
    assert reasons(out) == {
        "r1": {"low_confidence", "small_margin"},
        "r2": {"low_confidence"},
        "r3": {"small_margin"},
        "r4": {"disagreement"},
        "r5": {"rule:scanner_c_not_zero"},
        "r7": {"low_confidence", "small_margin", "disagreement"},
    }
    # Every output column is aligned with its row.
    by_id = scores.set_index("row_id")
    for rec in out.itertuples():
        assert rec.batch_id == "b1"
        assert rec.predicted == by_id.loc[rec.row_id, "predicted"]
        assert rec.confidence == pytest.approx(by_id.loc[rec.row_id, "confidence"])
        assert rec.margin == pytest.approx(by_id.loc[rec.row_id, "margin"])


@pytest.mark.parametrize("n_rules", [70, 140])
def test_many_rules_keep_their_reasons_and_order(scores: pd.DataFrame, n_rules: int) -> None:
    """Reasons are kept as bit sets of 62 per word and rule hits are counted in 8 bits up to
    127 rules: with 70 and 140 rules each row still lists exactly the rules it matches, in the
    rules file's order, and more hits still rank first."""
    step = 0.55 / n_rules
    many = [
        Rule(f"r{i:03d}", "", (Condition("confidence", "<", 0.4 + i * step),))
        for i in range(n_rules)
    ]
    out = select(scores, settings(min_confidence=0.0, min_margin=0.0), rules=many)
    conf = scores.set_index("row_id")["confidence"]
    for row_id, why in zip(out["row_id"], out["reasons"], strict=True):
        expected = [f"rule:r{i:03d}" for i in range(n_rules) if conf[row_id] < 0.4 + i * step]
        assert why.split(";") == expected
    hits = [len(why.split(";")) for why in out["reasons"]]
    assert hits == sorted(hits, reverse=True)
    assert hits[0] == n_rules - 1  # r7 (confidence .40) matches every rule but the first


def test_priority_order_rules_and_disagreement_first_then_lower_margin(
    scores: pd.DataFrame, features: pd.DataFrame, rules: list[Rule]
) -> None:
    out = select(
        scores,
        settings(**ALL_ON),
        features=features,
        challenger_predicted=CHALLENGER,
        rules=rules,
    )
    # r7, r4 (disagreement) and r5 (rule) first, by margin; then r1, r3, r2 by margin.
    assert picked(out) == ["r7", "r4", "r5", "r1", "r3", "r2"]
    assert out["priority"].is_monotonic_decreasing
    # priority = 2 x (rule and disagreement hits) + (1 - margin): every rule row ranks first.
    assert out["priority"].tolist() == pytest.approx([2.9, 2.3, 2.15, 0.95, 0.73, 0.62])


def test_priority_order_does_not_depend_on_input_order(
    scores: pd.DataFrame, features: pd.DataFrame, rules: list[Rule]
) -> None:
    perm = np.random.default_rng(0).permutation(len(scores))
    out = select(
        scores.iloc[perm].reset_index(drop=True),
        settings(**ALL_ON),
        features=features.iloc[perm].reset_index(drop=True),
        challenger_predicted=CHALLENGER[perm],
        rules=rules,
    )
    assert picked(out) == ["r7", "r4", "r5", "r1", "r3", "r2"]


def test_rule_row_beats_pure_uncertainty_even_when_model_is_certain() -> None:
    probs = np.array([[0.5, 0.5, 0.0], [1.0, 0.0, 0.0]])  # r0: margin 0; r1: margin 1
    scores = scores_frame(probs)
    rule = Rule("zero", "", (Condition("confidence", ">=", 1.0),))
    out = select(scores, settings(min_margin=0.2), rules=[rule])
    assert picked(out) == ["r1", "r0"]


# ------------------------------------------------------------------ budget, diversity, dedupe
def test_budget_keeps_the_highest_priority_rows(
    scores: pd.DataFrame, features: pd.DataFrame, rules: list[Rule]
) -> None:
    out = select(
        scores,
        settings(**ALL_ON, budget=3),
        features=features,
        challenger_predicted=CHALLENGER,
        rules=rules,
    )
    assert picked(out) == ["r7", "r4", "r5"]


def test_budget_larger_than_candidates_returns_all(scores: pd.DataFrame) -> None:
    out = select(scores, settings(min_confidence=0.6, budget=100))
    assert sorted(picked(out)) == ["r1", "r2", "r7"]


def skewed(n_per_class: dict[int, int], seed: int = 1) -> pd.DataFrame:
    """Uncertain rows only (confidence < 0.5), many of one class, few of others."""
    rng = np.random.default_rng(seed)
    classes = list(n_per_class)
    rows = []
    for c, n in n_per_class.items():
        for _ in range(n):
            p = np.full(len(classes), 0.0)
            top = rng.uniform(0.3, 0.45)
            p[classes.index(c)] = top
            others = rng.dirichlet(np.ones(len(classes) - 1)) * (1 - top)
            others = np.minimum(others, top - 1e-3)
            p[[i for i in range(len(classes)) if i != classes.index(c)]] = others
            rows.append(p)
    probs = np.array(rows)
    top2 = np.sort(probs, axis=1)[:, -2:]
    return pd.DataFrame(
        {
            "row_id": [f"s{i:03d}" for i in range(len(probs))],
            "batch_id": "b2",
            "predicted": np.asarray(classes, dtype=object)[probs.argmax(axis=1)],
            "confidence": top2[:, 1],
            "margin": top2[:, 1] - top2[:, 0],
        }
    )


def test_diversity_caps_each_class_at_its_share_of_the_budget() -> None:
    frame = skewed({0: 40, 1: 15, 2: 5, 3: 4, 4: 2})
    assert frame["predicted"].value_counts()[0] == 40
    out = select(frame, settings(min_confidence=0.6, budget=10, max_class_share=0.3))
    counts = out["predicted"].value_counts()
    assert len(out) == 10
    assert counts.max() <= math.ceil(10 * 0.3) == 3
    # Within a class the least certain rows win.
    for c, grp in out.groupby("predicted"):
        pool = frame[frame["predicted"] == c].nsmallest(len(grp), "margin")
        assert set(grp["row_id"]) == set(pool["row_id"])
    # Overall still in priority order.
    assert out["margin"].is_monotonic_increasing


def test_diversity_does_not_fill_the_budget_from_a_capped_class() -> None:
    """With only three classes present and 3 per class, 9 of the 10 slots are used."""
    frame = skewed({0: 40, 1: 15, 2: 5})
    out = select(frame, settings(min_confidence=0.6, budget=10, max_class_share=0.3))
    assert out["predicted"].value_counts().to_dict() == {0: 3, 1: 3, 2: 3}


def test_dedupe_excluded_ids_are_never_selected(
    scores: pd.DataFrame, features: pd.DataFrame, rules: list[Rule]
) -> None:
    exclude = {"r7", "r4", "r1", "not-in-batch"}
    out = select(
        scores,
        settings(**ALL_ON, budget=3),
        features=features,
        challenger_predicted=CHALLENGER,
        rules=rules,
        exclude=exclude,
    )
    assert not set(picked(out)) & exclude
    # The budget is filled from the rows that are left, still in priority order.
    assert picked(out) == ["r5", "r3", "r2"]


def test_everything_excluded_gives_an_empty_frame(scores: pd.DataFrame) -> None:
    out = select(scores, settings(**ALL_ON), exclude=frozenset(scores["row_id"]))
    assert out.empty and list(out.columns) == EMPTY_COLUMNS


# ------------------------------------------------------------------ cluster cap
def blob_batch(
    n_tight: int = 120, n_spread: int = 80, seed: int = 5
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Uncertain rows only: ``n_tight`` in one tight blob of feature space, the least certain
    of the batch (they lead the priority order), and ``n_spread`` spread over four far blobs.

    Classes are dealt round-robin so the class cap never binds.
    """
    rng = np.random.default_rng(seed)
    n = n_tight + n_spread
    tight = np.r_[np.ones(n_tight, dtype=bool), np.zeros(n_spread, dtype=bool)]
    centres = np.array([[40.0, 0.0], [-40.0, 0.0], [0.0, 40.0], [0.0, -40.0]])
    xy = np.empty((n, 2))
    xy[tight] = 5.0 + rng.normal(0.0, 0.01, (n_tight, 2))
    xy[~tight] = centres[np.arange(n_spread) % 4] + rng.normal(0.0, 2.0, (n_spread, 2))
    margin = np.where(tight, rng.uniform(0.00, 0.05, n), rng.uniform(0.10, 0.20, n))
    scores = pd.DataFrame(
        {
            "row_id": [f"{'t' if t else 's'}{i:03d}" for i, t in enumerate(tight)],
            "batch_id": "b3",
            "predicted": np.arange(n) % 3,
            "confidence": np.full(n, 0.45),
            "margin": margin,
        }
    )
    features = pd.DataFrame(
        {"x": xy[:, 0], "y": xy[:, 1], "scanner": pd.array(rng.choice(["A", "B"], n), dtype="str")}
    )
    return scores, features


CLUSTERS = {"min_confidence": 0.6, "budget": 20, "n_clusters": 8, "max_cluster_share": 0.25}


def test_cluster_cap_keeps_a_tight_cluster_from_taking_the_budget() -> None:
    scores, features = blob_batch()
    # Without the cap the tight blob (the least certain rows) takes the whole budget.
    plain = select(scores, settings(min_confidence=0.6, budget=20), features=features)
    assert len(plain) == 20 and all(r.startswith("t") for r in plain["row_id"])
    out = select(scores, settings(**CLUSTERS), features=features)
    cap = math.ceil(20 * 0.25)
    tight = out[out["row_id"].str.startswith("t")]
    # The blob is one cluster: it gets its share, the other clusters fill the budget.
    assert len(out) == 20
    assert len(tight) == cap and tight["cluster"].nunique() == 1
    assert out["cluster"].value_counts().max() <= cap
    assert (out["cluster"] >= 0).all()
    # Within the cap the blob's least certain rows win, and the whole is in priority order.
    assert set(tight["row_id"]) == set(plain["row_id"].iloc[:cap])
    assert out["priority"].is_monotonic_decreasing


def test_cluster_cap_and_class_cap_hold_together() -> None:
    scores, features = blob_batch()
    tight = scores["row_id"].str.startswith("t").to_numpy()
    # The blob is all class 0; the spread rows are classes 1 and 2.
    scores = scores.assign(predicted=np.where(tight, 0, 1 + np.arange(len(scores)) % 2))
    out = select(scores, settings(**CLUSTERS, max_class_share=0.4), features=features)
    assert len(out) == 20
    assert out["predicted"].value_counts().max() <= math.ceil(20 * 0.4)
    assert out["cluster"].value_counts().max() <= math.ceil(20 * 0.25)
    # Both caps bind: class 0 is the blob, which one cluster's share limits; with classes 1
    # and 2 capped at 8 each, 4 places stay empty.
    only_two = select(
        scores.assign(predicted=np.where(tight, 0, 1)),
        settings(**CLUSTERS, max_class_share=0.4),
        features=features,
    )
    assert only_two["predicted"].value_counts().to_dict() == {0: 5, 1: 8}


def test_cluster_selection_is_deterministic_for_a_seed() -> None:
    scores, features = blob_batch(n_tight=400, n_spread=400)  # more rows than the k-means sample
    first = select(scores, settings(**CLUSTERS, cluster_seed=3), features=features)
    again = select(scores, settings(**CLUSTERS, cluster_seed=3), features=features)
    pd.testing.assert_frame_equal(first, again)
    other = select(scores, settings(**CLUSTERS, cluster_seed=4), features=features)
    assert len(other) == 20 and other["cluster"].value_counts().max() <= 5


def test_cluster_cap_off_restores_the_class_only_selection() -> None:
    scores, features = blob_batch()
    old = select(scores, settings(min_confidence=0.6, budget=20), features=features)
    for off in ({"n_clusters": 0}, {"max_cluster_share": 0.0}):
        out = select(scores, settings(**{**CLUSTERS, **off}), features=features)
        pd.testing.assert_frame_equal(out, old)
        assert "cluster" not in out.columns


def test_clusters_are_fitted_on_the_candidates_only() -> None:
    """Rows no strategy flags (here: certain rows far away) change neither clusters nor picks."""
    scores, features = blob_batch()
    certain = scores.iloc[:50].assign(
        row_id=[f"c{i:03d}" for i in range(50)], confidence=0.99, margin=0.98
    )
    far = pd.DataFrame({"x": np.linspace(900, 1000, 50), "y": -900.0, "scanner": "A"})
    more = pd.concat([scores, certain], ignore_index=True)
    more_features = pd.concat([features, far.astype({"scanner": "str"})], ignore_index=True)
    base = select(scores, settings(**CLUSTERS), features=features)
    out = select(more, settings(**CLUSTERS), features=more_features)
    pd.testing.assert_frame_equal(out, base)


def test_one_cluster_of_candidates_gets_its_share_only() -> None:
    """Identical feature rows are one cluster: the cap holds and the budget is not filled."""
    scores, features = blob_batch()
    same = features.assign(x=1.0, y=2.0)
    out = select(scores, settings(**CLUSTERS), features=same)
    assert len(out) == math.ceil(20 * 0.25)
    assert set(out["cluster"]) == {0}


def test_without_numeric_features_rows_are_not_clustered() -> None:
    scores, features = blob_batch()
    plain = select(scores, settings(min_confidence=0.6, budget=20), features=features)
    for feats in (None, features[["scanner"]]):
        out = select(scores, settings(**CLUSTERS), features=feats)
        assert (out["cluster"] == -1).all()
        pd.testing.assert_frame_equal(out.drop(columns="cluster"), plain)


def test_cluster_cap_with_exclusions_and_missing_values() -> None:
    scores, features = blob_batch()
    features = features.assign(x=features["x"].where(np.arange(len(features)) % 7 != 0))
    exclude = set(scores["row_id"].iloc[::3])
    out = select(scores, settings(**CLUSTERS), features=features, exclude=exclude)
    assert len(out) == 20 and not set(out["row_id"]) & exclude
    assert out["cluster"].value_counts().max() <= 5


def test_cluster_cap_does_not_modify_inputs() -> None:
    scores, features = blob_batch()
    features = features.assign(x=features["x"].where(np.arange(len(features)) % 5 != 0))
    scores_before, features_before = scores.copy(deep=True), features.copy(deep=True)
    exclude = {"t000", "s150"}
    out = select(scores, settings(**CLUSTERS), features=features, exclude=exclude)
    assert len(out) == 20
    pd.testing.assert_frame_equal(scores, scores_before)
    pd.testing.assert_frame_equal(features, features_before)
    assert exclude == {"t000", "s150"}


def test_one_cluster_is_not_a_setting() -> None:
    with pytest.raises(ValueError, match="n_clusters"):
        EdgeCaseSettings(n_clusters=1)
    assert EdgeCaseSettings().n_clusters > 1 and 0 < EdgeCaseSettings().max_cluster_share < 1


# ------------------------------------------------------------------ inputs, empties
def test_inputs_are_not_modified(
    scores: pd.DataFrame, features: pd.DataFrame, rules: list[Rule]
) -> None:
    scores_before, features_before = scores.copy(deep=True), features.copy(deep=True)
    challenger = CHALLENGER.copy()
    exclude = {"r4"}
    rules_before = copy.deepcopy(rules)
    out = select(
        scores,
        settings(**ALL_ON, budget=4, max_class_share=0.5),
        features=features,
        challenger_predicted=challenger,
        rules=rules,
        exclude=exclude,
    )
    assert len(out) == 4
    pd.testing.assert_frame_equal(scores, scores_before)
    pd.testing.assert_frame_equal(features, features_before)
    assert np.array_equal(challenger, CHALLENGER)
    assert exclude == {"r4"} and rules == rules_before
    # The output owns its data: changing it does not reach the input.
    out.loc[:, "confidence"] = -1.0
    out.loc[:, "row_id"] = "x"
    pd.testing.assert_frame_equal(scores, scores_before)


def test_empty_input_gives_an_empty_frame_with_the_columns(rules: list[Rule]) -> None:
    empty = scores_frame(PROBS).iloc[:0]
    out = select(
        empty,
        settings(**ALL_ON),
        features=pd.DataFrame({"age": [], "scanner": []}),
        challenger_predicted=np.array([], dtype=object),
        rules=rules,
    )
    assert out.empty and list(out.columns) == EMPTY_COLUMNS


def test_no_strategy_gives_an_empty_frame_with_the_columns(scores: pd.DataFrame) -> None:
    out = select(scores, settings(), challenger_predicted=CHALLENGER)
    assert out.empty and list(out.columns) == EMPTY_COLUMNS
    out = select(scores, settings(), rules=[])
    assert out.empty and list(out.columns) == EMPTY_COLUMNS


def test_nothing_flagged_gives_an_empty_frame(scores: pd.DataFrame) -> None:
    out = select(scores, settings(min_confidence=0.1))
    assert out.empty and list(out.columns) == EMPTY_COLUMNS


# ------------------------------------------------------------------ rules file
def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "edge_rules.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def rules_error(path: Path) -> str:
    with pytest.raises(RulesError) as info:
        load_rules(path, KNOWN)
    msg = str(info.value)
    assert str(path) in msg
    return msg


def test_valid_rules_file_with_in_less_than_and_string_equals(
    tmp_path: Path, scores: pd.DataFrame, features: pd.DataFrame
) -> None:
    path = write(
        tmp_path,
        """\
# comments are fine
rules:
  - name: one_or_two_unsure
    description: the classic confusion
    when:
      - {column: predicted, op: in, value: [1, 2]}
      - {column: confidence, op: "<", value: 0.7}
  - name: scanner_b
    when: {column: scanner, value: B}
  - name: not_scanner_a_p0
    when:
      - {column: scanner, op: "!=", value: A}
      - {column: p_0, op: ">=", value: 0.4}
""",
    )
    rules = load_rules(path, KNOWN)
    assert [r.name for r in rules] == ["one_or_two_unsure", "scanner_b", "not_scanner_a_p0"]
    assert rules[0].description == "the classic confusion" and rules[1].description == ""
    assert rules[1].when == (Condition("scanner", "==", "B"),)  # one condition, op defaults to ==
    cols = {c: scores[c].to_numpy() for c in scores.columns}
    cols.update({c: features[c].to_numpy() for c in features.columns})
    masks = rule_masks(cols, rules, len(scores))
    hits = {name: [f"r{i}" for i in np.flatnonzero(m)] for name, m in masks.items()}
    assert hits == {
        "one_or_two_unsure": ["r1", "r3"],
        "scanner_b": ["r2", "r3", "r7"],
        "not_scanner_a_p0": ["r2", "r6", "r7"],
    }
    out = select(scores, settings(), features=features, rules=rules)
    assert reasons(out)["r3"] == {"rule:one_or_two_unsure", "rule:scanner_b"}
    assert reasons(out)["r7"] == {"rule:scanner_b", "rule:not_scanner_a_p0"}
    # Two rules on a row rank it above a row with one.
    assert picked(out)[0] in {"r3", "r7"} and picked(out)[1] in {"r3", "r7"}


def test_in_with_a_single_value_and_string_values(tmp_path: Path, scores: pd.DataFrame) -> None:
    path = write(
        tmp_path,
        "rules:\n  - name: twos\n    when: {column: predicted, op: in, value: '2'}\n",
    )
    masks = rule_masks({"predicted": scores["predicted"].to_numpy()}, load_rules(path, KNOWN), 8)
    assert np.flatnonzero(masks["twos"]).tolist() == [3, 5]


def test_missing_rules_file_means_no_rules(tmp_path: Path) -> None:
    assert load_rules(tmp_path / "absent.yaml", KNOWN) == []
    assert load_rules(write(tmp_path, ""), KNOWN) == []
    assert load_rules(write(tmp_path, "rules: []\n"), KNOWN) == []


def test_rules_error_unknown_column(tmp_path: Path) -> None:
    msg = rules_error(
        write(tmp_path, "rules:\n  - name: r1\n    when: {column: colour, op: '==', value: 1}\n")
    )
    assert "'r1'" in msg and "unknown column 'colour'" in msg


def test_rules_error_unknown_operator(tmp_path: Path) -> None:
    msg = rules_error(
        write(tmp_path, "rules:\n  - name: r2\n    when: {column: margin, op: '~=', value: 1}\n")
    )
    assert "'r2'" in msg and "unknown operator '~='" in msg


def test_rules_error_missing_value(tmp_path: Path) -> None:
    msg = rules_error(
        write(tmp_path, "rules:\n  - name: r3\n    when: {column: margin, op: '<'}\n")
    )
    assert "'r3'" in msg and "no 'value'" in msg and "'margin'" in msg


def test_rules_error_unknown_key_in_a_rule(tmp_path: Path) -> None:
    msg = rules_error(
        write(
            tmp_path,
            "rules:\n  - name: r4\n    severity: high\n    when: {column: margin, value: 1}\n",
        )
    )
    assert "'r4'" in msg and "unknown key(s) ['severity']" in msg


def test_rules_error_unknown_key_in_a_condition(tmp_path: Path) -> None:
    msg = rules_error(
        write(tmp_path, "rules:\n  - name: r5\n    when: {column: margin, value: 1, op2: '<'}\n")
    )
    assert "'r5'" in msg and "op2" in msg


def test_rules_error_unknown_top_level_key(tmp_path: Path) -> None:
    msg = rules_error(write(tmp_path, "rules: []\nrule: []\n"))
    assert "unknown top-level key(s) ['rule']" in msg


def test_rules_error_duplicate_rule_name(tmp_path: Path) -> None:
    cond = "{column: margin, op: '<', value: 0.1}"
    msg = rules_error(
        write(
            tmp_path,
            f"rules:\n  - name: twice\n    when: {cond}\n  - name: twice\n    when: {cond}\n",
        )
    )
    assert "'twice'" in msg and "duplicate rule name" in msg


def test_rules_error_rule_without_name_or_when(tmp_path: Path) -> None:
    msg = rules_error(write(tmp_path, "rules:\n  - when: {column: margin, value: 1}\n"))
    assert "rules[0]" in msg and "'name' and 'when'" in msg


def test_rules_error_invalid_yaml(tmp_path: Path) -> None:
    msg = rules_error(write(tmp_path, "rules:\n  - name: r6\n    when: {column: margin\n"))
    assert "not valid YAML" in msg


@pytest.mark.parametrize(
    "text",
    ["rules: {name: r7, when: {column: margin, value: 1}}\n", "- name: r7\n", "just text\n"],
    ids=["rules-is-a-mapping", "top-level-list", "top-level-scalar"],
)
def test_rules_error_not_a_list_of_rules(tmp_path: Path, text: str) -> None:
    msg = rules_error(write(tmp_path, text))
    assert "list under 'rules'" in msg


def test_rules_error_rule_with_no_condition(tmp_path: Path) -> None:
    rules_error(write(tmp_path, "rules:\n  - name: everything\n    when: []\n"))


def test_rules_error_duplicate_numeric_rule_name(tmp_path: Path) -> None:
    cond = "{column: margin, op: '<', value: 0.1}"
    rules_error(
        write(tmp_path, f"rules:\n  - name: 1\n    when: {cond}\n  - name: 1\n    when: {cond}\n")
    )


def test_in_on_a_float_column_matches_numbers() -> None:
    rule = Rule("small", "", (Condition("x", "in", [0, 1]),))
    masks = rule_masks({"x": np.array([0.0, 1.0, 2.0])}, [rule], 3)
    assert masks["small"].tolist() == [True, True, False]


def test_text_condition_after_a_numeric_one_keeps_missing_value_semantics() -> None:
    """The text condition is evaluated only on the rows the numeric one left (fewer than half
    here): a missing text is never equal to a value, so ``!=`` holds for it."""
    columns = {
        "x": np.array([1, 1, 1, 9, 9, 9, 9, 9]),
        "s": pd.Series(pd.array(["A", None, "C", "A", "B", None, "C", "A"], dtype="str")),
    }
    rules = [
        Rule("ne", "", (Condition("s", "!=", "A"), Condition("x", "<", 5))),
        Rule("eq", "", (Condition("s", "==", "C"), Condition("x", "<", 5))),
        Rule("in", "", (Condition("s", "in", ["A", "C"]), Condition("x", "<", 5))),
    ]
    masks = rule_masks(columns, rules, 8)
    assert np.flatnonzero(masks["ne"]).tolist() == [1, 2]
    assert np.flatnonzero(masks["eq"]).tolist() == [2]
    assert np.flatnonzero(masks["in"]).tolist() == [0, 2]
    # The same answers as every condition on every row.
    full = rule_masks({"x": columns["x"], "s": columns["s"].astype(object)}, rules, 8)
    assert all(np.array_equal(masks[k], full[k]) for k in masks)


# ------------------------------------------------------------------ text compare on Arrow buffers
@pytest.mark.parametrize("arrow_type", ["string", "large_string"])
def test_text_equal_on_arrow_buffers_matches_arrow(
    arrow_type: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The in-place comparison gives Arrow's answer (missing = no match) on chunked, sliced
    arrays with nulls, empty and multi-byte strings, by rows or every row, across blocks."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from pipelines.edge_cases import arrow as ec

    monkeypatch.setattr(ec, "_TEXT_BLOCK", 7)  # many blocks, some straddling chunk ends
    rng = np.random.default_rng(11)
    vocab = ["C", "CC", "", "Ç", "scanner C", "c", "CA", "AC", None]
    values = [vocab[i] for i in rng.integers(0, len(vocab), 300)]
    typ = getattr(pa, arrow_type)()
    whole = pa.array(values, type=typ)
    chunked = pa.chunked_array([whole.slice(0, 50), whole.slice(50, 1), whole.slice(51)])
    sliced = pa.array(["x", *values], type=typ).slice(1)  # a non-zero offset
    rows = rng.integers(0, len(values), 120)  # unsorted, repeated
    for arr in (whole, chunked, sliced):
        for texts in (["C"], ["CC", ""], ["Ç", "scanner C"], ["missing"]):
            expected = np.asarray(
                pc.is_in(whole, value_set=pa.array(texts, type=typ)).fill_null(False), dtype=bool
            )
            np.testing.assert_array_equal(ec._arrow_text_equal(arr, texts, None), expected)
            np.testing.assert_array_equal(ec._arrow_text_equal(arr, texts, rows), expected[rows])
    # Fixed-width codes (every row as long as the value: compared as one run of bytes),
    # with and without a missing value, in one block and across several.
    for codes in (["A", "B", "C"], ["AB", "CB", "AC"]):
        values = [codes[i] for i in rng.integers(0, 3, 40)]
        for arr in (pa.array(values, type=typ), pa.array([*values, None], type=typ)):
            for texts in ([codes[2]], [codes[0], codes[1]], ["A" * len(codes[0]) + "x"]):
                expected = np.asarray(
                    pc.is_in(arr, value_set=pa.array(texts, type=typ)).fill_null(False),
                    dtype=bool,
                )
                np.testing.assert_array_equal(ec._arrow_text_equal(arr, texts, None), expected)
    empty = pa.array(["", None, ""], type=typ)  # no text bytes at all
    np.testing.assert_array_equal(ec._arrow_text_equal(empty, ["C"], None), [False] * 3)
    np.testing.assert_array_equal(ec._arrow_text_equal(empty, [""], None), [True, False, True])
