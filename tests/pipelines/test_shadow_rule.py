"""The sequential promotion rule: the Horvitz–Thompson estimate, the confidence sequence, the
decision's states. Simulated data, seeded: deterministic and fast (vectorised over sequences)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from edgeloop.core.config import GateSettings, ShadowSettings
from edgeloop.core.errors import EdgeloopError
from pipelines.shadow import (
    KEEP,
    NEED_MORE,
    PROMOTE,
    PromotionDecision,
    compare,
    confidence_sequence,
    cs_half_width,
    cs_rho,
    decide,
    horvitz_thompson,
    rows_needed,
)

ALPHA = 0.05
CLASSES = [0, 1, 2]


def _null_terms(rng: np.random.Generator, sequences: int, rows: int, delta: float = 0.0):  # type: ignore[no-untyped-def]
    """HT terms of ``sequences`` streams: d in {-1, 0, 1} (mean ``delta``), 15 % of the rows
    labeled with pi = 1 (edge cases), the others with pi = 0.04 (weights of 25: heavy tails)."""
    up, down = 0.07 + delta / 2, 0.07 - delta / 2
    u = rng.random((sequences, rows))
    d = np.where(u < up, 1.0, np.where(u < up + down, -1.0, 0.0))
    edge = rng.random((sequences, rows)) < 0.15
    pi = np.where(edge, 1.0, 0.04)
    labeled = edge | (rng.random((sequences, rows)) < 0.04)
    return np.where(labeled, d / pi, 0.0)


def _bounds_at_looks(z: np.ndarray, looks: np.ndarray, tuned: int = 1000):  # type: ignore[no-untyped-def]
    """Mean, std and the CS half-width of every sequence after each look (vectorised: the
    half-width is linear in the std)."""
    s1, s2 = np.cumsum(z, axis=1)[:, looks - 1], np.cumsum(z * z, axis=1)[:, looks - 1]
    mean = s1 / looks
    std = np.sqrt(np.maximum(s2 / looks - mean**2, 0.0))
    unit = np.array([cs_half_width(int(t), 1.0, ALPHA, cs_rho(ALPHA, tuned)) for t in looks])
    return mean, std, std * unit


# ---------------------------------------------------------------------- validity
def test_repeated_looks_keep_false_promotions_below_alpha_where_a_fixed_test_does_not() -> None:
    """400 streams of an equal challenger, looked at after each of 20 batches of 150 rows."""
    z = _null_terms(np.random.default_rng(7), 400, 3000)
    looks = np.arange(1, 21) * 150
    mean, std, half = _bounds_at_looks(z, looks)
    sequential = float(((mean - half) > 0).any(axis=1).mean())
    # The same looks with a fixed-sample 95 % interval each time: the peeking problem.
    fixed = float(((mean - 1.96 * std / np.sqrt(looks)) > 0).any(axis=1).mean())
    assert sequential <= 0.6 * ALPHA, sequential
    assert fixed > ALPHA, fixed  # the check can fail: a non-sequential rule does


def test_the_sequence_covers_a_nonzero_delta_once_warm_and_finds_a_real_one() -> None:
    """The coverage is asymptotic: a stream whose heavy terms (weight 25) have not shown up
    yet can miss on the far side at the first looks, never across the threshold."""
    looks = np.arange(1, 21) * 150
    mean, _std, half = _bounds_at_looks(
        _null_terms(np.random.default_rng(8), 300, 3000, 0.04), looks
    )
    assert float(((mean + half) < 0).any(axis=1).mean()) <= 0.01  # a better one is never "keep"
    missed = ((mean - half) > 0.04) | ((mean + half) < 0.04)
    assert float(missed[:, 4:].any(axis=1).mean()) <= 2 * ALPHA  # from the 5th look on
    # Power: with a clear lift most streams get a lower bound above 0 within the 20 looks.
    mean, _std, half = _bounds_at_looks(
        _null_terms(np.random.default_rng(9), 300, 3000, 0.12), looks
    )
    assert float(((mean - half) > 0).any(axis=1).mean()) > 0.5


def test_one_sided_bound_is_inside_the_two_sided_one_and_shrinks() -> None:
    rho = cs_rho(ALPHA, 1000)
    widths = [cs_half_width(n, 1.0, ALPHA, rho) for n in (10, 100, 1000, 10_000)]
    assert widths == sorted(widths, reverse=True)
    for n, w in zip((10, 100, 1000, 10_000), widths, strict=True):
        r2 = rho * rho
        two_sided = math.sqrt(
            2 * (n * r2 + 1) / (n * n * r2) * math.log(math.sqrt(n * r2 + 1) / ALPHA)
        )
        assert 0 < w < two_sided
        # and wider than any fixed-sample one-sided 95 % interval
        assert w > 1.645 / math.sqrt(n)
    assert cs_half_width(0, 1.0, ALPHA, rho) == math.inf
    assert cs_half_width(50, 0.0, ALPHA, rho) == 0.0


def test_rows_needed_is_where_the_bound_first_reaches_the_gap() -> None:
    rho = cs_rho(ALPHA, 1000)
    n = rows_needed(0.05, 0.8, ALPHA, rho, 300)
    assert n is not None and n > 300
    assert cs_half_width(n, 0.8, ALPHA, rho) < 0.05 <= cs_half_width(n - 1, 0.8, ALPHA, rho)
    assert rows_needed(0.0, 0.8, ALPHA, rho, 300) is None
    assert rows_needed(1e-9, 0.8, ALPHA, rho, 300) is None  # out of reach


# ---------------------------------------------------------------------- the estimate
def test_horvitz_thompson_is_unbiased_where_edge_cases_alone_are_not() -> None:
    """A fixed population whose paired difference depends on the champion's confidence: the
    champion is wrong on its uncertain rows, where the challenger is often right."""
    rng = np.random.default_rng(3)
    n = 2000
    conf = rng.random(n)
    d = np.where(rng.random(n) < 0.3 * (1 - conf), 1.0, 0.0) - np.where(rng.random(n) < 0.18, 1.0, 0.0) * (conf > 0.5)  # fmt: skip
    truth = float(d.mean())
    edge = conf < np.quantile(conf, 0.1)  # the 10 % least confident: deterministic, pi = 1
    q = np.where(edge, 1.0, np.clip(0.01 + 0.06 * (d != 0) + 0.02 * rng.random(n), 0, 1))
    draws = 3000
    est = np.empty(draws)
    for i in range(draws):
        labeled = edge | (rng.random(n) < q)
        est[i] = horvitz_thompson(d, q, labeled).mean()
    se = est.std() / math.sqrt(draws)
    assert abs(est.mean() - truth) < 4 * se + 1e-4
    edge_only = float(d[edge].mean())
    assert edge_only - truth > 0.1  # the champion-chosen rows overstate the challenger


def test_horvitz_thompson_refuses_a_labeled_row_without_a_probability() -> None:
    with pytest.raises(EdgeloopError, match="inclusion probability"):
        horvitz_thompson([1.0, 0.0], [0.0, 1.0], [True, False])
    z = horvitz_thompson([1.0, -1.0, 1.0], [0.5, 0.25, 0.0], [True, True, False])
    assert z.tolist() == [2.0, -4.0, 0.0]


def test_compare_weights_labeled_rows_and_uses_every_row() -> None:
    y = np.array([0, 1, 2, 0, 1, 2, 0, 1])
    champ = np.array([0, 2, 2, 1, 1, 0, 0, 1])
    chall = np.array([0, 1, 2, 0, 1, 2, 1, 1])
    labeled = np.array([1, 1, 0, 1, 0, 1, 1, 0], dtype=bool)
    pi = np.array([1.0, 0.5, 1.0, 0.25, 1.0, 1.0, 0.5, 1.0])
    y_obj = np.where(labeled, y, -1).astype(object)
    y_obj[~labeled] = None  # unlabeled rows' truth is never read
    cmp = compare(y_obj, champ, chall, classes=CLASSES, settings=ShadowSettings(), seed=0,
                  labeled=labeled, inclusion_prob=pi, legacy=np.arange(8) == 0)  # fmt: skip
    d = (chall == y).astype(float) - (champ == y).astype(float)
    assert cmp.n_rows == 8 and cmp.n == cmp.n_labeled == 5
    assert cmp.delta == pytest.approx(float(np.sum(np.where(labeled, d / pi, 0.0)) / 8))
    w = 1 / pi[labeled]
    assert cmp.champion == pytest.approx(float(np.average(champ[labeled] == y[labeled], weights=w)))
    assert cmp.n_disagreements == 4 and cmp.legacy_rows == 1
    assert cmp.agreement == pytest.approx(4 / 8)  # over every row, labeled or not
    assert cmp.cs_low < cmp.delta < cmp.cs_high
    assert None not in (cmp.to_dict()["cs_low"], cmp.to_dict()["cs_std"])


# ---------------------------------------------------------------------- the decision
def _terms_comparison(
    delta: float, rows: int, seed: int = 0, settings: ShadowSettings | None = None
):  # type: ignore[no-untyped-def]
    """A comparison of ``rows`` fully labeled rows whose accuracy delta is about ``delta``."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, rows)
    champ_right = rng.random(rows) < 0.75
    chall_right = np.where(rng.random(rows) < 0.6, champ_right, rng.random(rows) < 0.75 + delta)
    champ = np.where(champ_right, y, (y + 1) % 3)
    chall = np.where(chall_right, y, (y + 2) % 3)
    return compare(y, champ, chall, classes=CLASSES, settings=settings or ShadowSettings(), seed=1)


def test_states_promote_keep_and_need_more() -> None:
    s, g = ShadowSettings(), GateSettings()
    better = decide(_terms_comparison(0.15, 3000), s, g)
    assert better.state == PROMOTE and better.promote and "lower bound above" in better.summary()
    assert better.labels_needed is None
    worse = decide(_terms_comparison(-0.15, 3000), s, g)
    assert worse.state == KEEP and not worse.promote and "not better" in worse.summary()
    close = decide(_terms_comparison(0.03, 300), s, g, labels_per_day=40.0)
    assert close.state == NEED_MORE and not close.promote
    assert close.labels_needed is not None and close.labels_needed > 0
    assert close.days_needed == pytest.approx(close.labels_needed / 40.0)
    assert f"need about {close.labels_needed} more labels (≈ " in close.summary()
    assert "days at the current labeling rate" in close.summary()
    unknown = decide(_terms_comparison(0.03, 300), s, g)
    assert unknown.days_needed is None and "labeling rate unknown" in unknown.summary()


def test_need_more_labels_is_about_right() -> None:
    """After the labels the estimate asked for, the same challenger is decided."""
    s, g = ShadowSettings(), GateSettings()
    first = decide(_terms_comparison(0.06, 400, seed=4), s, g)
    assert first.state == NEED_MORE and first.labels_needed
    later = decide(_terms_comparison(0.06, 400 + 2 * first.labels_needed, seed=4), s, g)
    assert later.state == PROMOTE


def test_identical_predictions_are_kept_and_few_disagreements_are_not_evidence() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 500)
    a = np.where(rng.random(500) < 0.8, y, (y + 1) % 3)
    same = decide(compare(y, a, a.copy(), classes=CLASSES, settings=ShadowSettings(), seed=1),
                  ShadowSettings(), GateSettings())  # fmt: skip
    assert same.state == KEEP and "same class on every row" in same.summary()
    b = a.copy()
    b[:4] = y[:4]  # four disagreements, all won by the challenger
    a[:4] = (y[:4] + 1) % 3
    few = decide(compare(y, a, b, classes=CLASSES, settings=ShadowSettings(), seed=1),
                 ShadowSettings(min_labeled_disagreements=10), GateSettings())  # fmt: skip
    assert few.state == NEED_MORE and "only 4 labeled disagreements" in few.summary()


def test_slice_floor_blocks_promotion() -> None:
    cmp = _terms_comparison(0.15, 3000)
    cmp = type(cmp)(**{**cmp.__dict__, "slices": {"s": {"rows": 100.0, "champion": 0.7, "challenger": 0.2}}})  # fmt: skip
    d = decide(cmp, ShadowSettings(), GateSettings(slice_floors={"s": 0.5}))
    assert (
        d.state == KEEP
        and not d.promote
        and "slice s: challenger 0.2000 below floor" in d.summary()
    )


def test_macro_f1_keeps_the_fixed_sample_rule_with_min_samples() -> None:
    s = ShadowSettings(metric="macro_f1", min_samples=200, bootstrap_samples=100)
    few = decide(_terms_comparison(0.3, 40, settings=s), s, GateSettings())
    assert (
        few.state == NEED_MORE
        and few.labels_needed == 160
        and "only 40 labeled rows" in few.summary()
    )
    many = decide(_terms_comparison(0.3, 300, settings=s), s, GateSettings())
    assert many.state == PROMOTE and "CI" in many.summary()


def test_a_decision_built_the_old_way_has_its_state() -> None:
    assert PromotionDecision(True, ["x"]).state == PROMOTE
    assert PromotionDecision(False, ["x"]).summary() == "keep champion: x"


def test_no_rows_is_need_more_without_an_estimate() -> None:
    cmp = compare(np.array([]), np.array([]), np.array([]), classes=CLASSES, settings=ShadowSettings(), seed=0)  # fmt: skip
    d = decide(cmp, ShadowSettings(), GateSettings())
    assert (
        d.state == NEED_MORE and d.labels_needed is None and "no rows scored by both" in d.summary()
    )
    assert (
        cmp.to_dict()["cs_low"] is None
        and confidence_sequence([], alpha=0.05, tuned_rows=10).n == 0
    )


def test_a_failing_slice_the_challenger_improves_does_not_block_promotion() -> None:
    cmp = _terms_comparison(0.15, 3000)
    drifted = {"s": {"rows": 100.0, "champion": 0.31, "challenger": 0.46}}
    better = type(cmp)(**{**cmp.__dict__, "slices": drifted})
    d = decide(better, ShadowSettings(), GateSettings(slice_floors={"s": 0.5}))
    assert d.promote and "above the champion's 0.3100: promoting raises the slice" in d.summary()
    worse = {"s": {"rows": 100.0, "champion": 0.46, "challenger": 0.31}}
    kept = decide(type(cmp)(**{**cmp.__dict__, "slices": worse}), ShadowSettings(),
                  GateSettings(slice_floors={"s": 0.5}))  # fmt: skip
    assert kept.state == KEEP and "(champion 0.4600)" in kept.summary()
