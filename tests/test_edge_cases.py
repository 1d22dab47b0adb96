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

from edgeloop.config import EdgeCaseSettings
from pipelines.edge_cases import (
    SCORE_COLUMNS,
    Condition,
    Rule,
    RulesError,
    load_rules,
    rule_masks,
    select,
)

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
    """Every strategy off, no budget, no diversity cap, unless asked."""
    base: dict[str, object] = {
        "min_confidence": 0.0,
        "min_margin": 0.0,
        "disagreement": False,
        "budget": 0,
        "max_class_share": 1.0,
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
