"""The evaluation sample (``pipelines.edge_cases.evaluation``): pure and fast, on score frames
built like ``pipelines.score.score_frame``'s, champion and challenger from random
probabilities."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from edgeloop.core.keys import QUEUE_INCLUSION_PROB
from pipelines.edge_cases import (
    comparison_weights,
    evaluation_sample,
    excluded_mask,
    inclusion_probabilities,
)

CLASSES = [0, 1, 2]


def scores_frame(probs: np.ndarray, batch: str = "b1") -> pd.DataFrame:
    top2 = np.sort(probs, axis=1)[:, -2:]
    out = pd.DataFrame(
        {
            "row_id": [f"r{i}" for i in range(len(probs))],
            "batch_id": batch,
            "predicted": np.asarray(CLASSES, dtype=object)[probs.argmax(axis=1)],
            "confidence": top2[:, 1],
            "margin": top2[:, 1] - top2[:, 0],
        }
    )
    for j, c in enumerate(CLASSES):
        out[f"p_{c}"] = probs[:, j]
    return out


def pair(n: int, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Champion and challenger scores of the same ``n`` rows; they disagree on about a third."""
    rng = np.random.default_rng(seed)
    a = rng.dirichlet([1.0, 1.0, 1.0], size=n)
    b = np.where(rng.random((n, 1)) < 0.6, a, rng.dirichlet([1.0, 1.0, 1.0], size=n))
    return scores_frame(a), scores_frame(b)


def test_expected_size_and_every_eligible_row_positive() -> None:
    champ, chall = pair(500)
    exclude = np.zeros(500, dtype=bool)
    exclude[:40] = True
    w = comparison_weights(champ, chall)
    q = inclusion_probabilities(w, ~exclude, 20, 0.5)
    assert q.sum() == pytest.approx(20)
    assert (q[40:] > 0).all() and (q[40:] <= 1).all()
    assert (q[:40] == 0).all()
    # Disagreements weigh more than agreements; the uniform share bounds the ratio.
    disagree = (champ["predicted"] != chall["predicted"]).to_numpy()
    assert q[40:][disagree[40:]].mean() > 2 * q[40:][~disagree[40:]].mean()
    # No challenger: every eligible row alike.
    flat = inclusion_probabilities(comparison_weights(champ, None), ~exclude, 20, 0.5)
    assert flat[40:] == pytest.approx(np.full(460, 20 / 460))


def test_capping_at_one_keeps_the_expected_size() -> None:
    """A few rows with huge weights: capped at 1, the rest share what is left."""
    w = np.ones(100)
    w[:5] = 1000.0
    q = inclusion_probabilities(w, np.ones(100, dtype=bool), 20, 0.1)
    assert q.sum() == pytest.approx(20)
    assert (q[:5] == 1.0).all()
    s = 0.1 + 0.9 * w / w.mean()
    c = q[5:] / s[5:]
    assert c == pytest.approx(np.full(95, c[0]))  # still proportional below the cap
    assert q[5:] == pytest.approx(np.full(95, 15 / 95))
    # More than the eligible rows asked for: all of them, surely; nothing asked: none.
    assert (inclusion_probabilities(w, np.ones(100, dtype=bool), 150, 0.5) == 1).all()
    assert (inclusion_probabilities(w, np.ones(100, dtype=bool), 0, 0.5) == 0).all()
    with pytest.raises(ValueError, match="uniform_share"):
        inclusion_probabilities(w, np.ones(100, dtype=bool), 5, 0.0)


def test_sample_size_matches_in_expectation_and_is_deterministic() -> None:
    champ, chall = pair(400)
    exclude = np.zeros(400, dtype=bool)
    exclude[::7] = True
    before = (champ.copy(), chall.copy(), exclude.copy())
    first = evaluation_sample(champ, challenger=chall, exclude=exclude, expected_size=10, seed=3)
    again = evaluation_sample(champ, challenger=chall, exclude=exclude, expected_size=10, seed=3)
    pd.testing.assert_frame_equal(first, again)
    # Inputs are not modified.
    pd.testing.assert_frame_equal(champ, before[0])
    pd.testing.assert_frame_equal(chall, before[1])
    assert (exclude == before[2]).all()
    assert list(first.columns) == [
        "row_id",
        "batch_id",
        "predicted",
        "confidence",
        "margin",
        QUEUE_INCLUSION_PROB,
        "challenger_predicted",
    ]
    assert not set(first["row_id"]) & set(champ["row_id"][exclude])
    q = inclusion_probabilities(comparison_weights(champ, chall), ~exclude, 10, 0.5)
    by_id = dict(zip(champ["row_id"], q, strict=True))
    assert first[QUEUE_INCLUSION_PROB].tolist() == [by_id[r] for r in first["row_id"]]
    sizes = [
        len(evaluation_sample(champ, challenger=chall, exclude=exclude, expected_size=10, seed=s))
        for s in range(400)
    ]
    # Poisson sampling: the size varies, its mean is the expected size (sd of the mean < 0.16).
    assert np.mean(sizes) == pytest.approx(10, abs=0.5)
    assert len(set(sizes)) > 3
    other = evaluation_sample(champ, challenger=chall, exclude=exclude, expected_size=10, seed=4)
    assert first["row_id"].tolist() != other["row_id"].tolist()


def test_horvitz_thompson_total_is_unbiased() -> None:
    """Over many seeds the importance-weighted total of the sampled rows' paired difference is
    the total over every eligible row, although the sample favours disagreements."""
    champ, chall = pair(300, seed=1)
    rng = np.random.default_rng(5)
    # The challenger is right more often: the paired difference is positive on disagreements.
    truth = np.where(
        rng.random(300) < 0.6, chall["predicted"].to_numpy(), rng.integers(0, 3, size=300)
    )
    d = (chall["predicted"].to_numpy() == truth).astype(float) - (
        champ["predicted"].to_numpy() == truth
    )
    exclude = np.zeros(300, dtype=bool)
    exclude[:30] = True
    q = inclusion_probabilities(comparison_weights(champ, chall), ~exclude, 15, 0.5)
    d_by_id = dict(zip(champ["row_id"], d, strict=True))
    sims = 2000
    totals, naive = np.empty(sims), np.empty(sims)
    for s in range(sims):
        got = evaluation_sample(
            champ, challenger=chall, exclude=exclude, expected_size=15, seed=10_000 + s
        )
        dd = np.array([d_by_id[r] for r in got["row_id"]])
        totals[s] = float((dd / got[QUEUE_INCLUSION_PROB].to_numpy()).sum())
        naive[s] = dd.mean() * (~exclude).sum() if len(dd) else 0.0
    target = d[~exclude].sum()
    # The design's exact variance: sum of d^2 (1 - q) / q over the eligible rows.
    keep = ~exclude
    sd = float(np.sqrt((d[keep] ** 2 * (1 - q[keep]) / q[keep]).sum() / sims))
    assert abs(totals.mean() - target) < 4 * sd, (totals.mean(), target, sd)
    # Unweighted, the same rows overstate the difference: the sample favours disagreements.
    assert abs(naive.mean() - target) > 4 * float(naive.std() / np.sqrt(sims))


def test_no_challenger_and_empty_inputs() -> None:
    champ, _ = pair(50)
    got = evaluation_sample(champ, expected_size=5, seed=0)
    assert "challenger_predicted" not in got.columns
    assert got[QUEUE_INCLUSION_PROB].tolist() == pytest.approx([0.1] * len(got))
    empty = evaluation_sample(champ.iloc[:0], expected_size=5, seed=0)
    assert len(empty) == 0 and QUEUE_INCLUSION_PROB in empty.columns
    none = evaluation_sample(champ, exclude=np.ones(50, dtype=bool), expected_size=5, seed=0)
    assert len(none) == 0
    with pytest.raises(ValueError, match="same order"):
        evaluation_sample(champ, challenger=champ.iloc[::-1], expected_size=5, seed=0)


@pytest.mark.parametrize("dtype", ["string[pyarrow]", "object", "str"])
def test_excluded_mask_matches_a_set_lookup(dtype: str) -> None:
    ids = pd.Series([f"b-{i}" for i in range(30_000)] + [None]).astype(dtype)
    exclude = {f"b-{i}" for i in range(0, 30_000, 7)} | {"elsewhere"}
    got = excluded_mask(ids, exclude)
    assert got.tolist() == [v in exclude for v in ids.tolist()]
    assert not excluded_mask(ids, set()).any()


def test_disagreements_first_draws_among_disagreements_until_all_are_taken() -> None:
    champ, chall = pair(600, seed=3)
    apart = (champ["predicted"] != chall["predicted"]).to_numpy()
    n_apart = int(apart.sum())
    few = evaluation_sample(champ, challenger=chall, expected_size=20, disagreements_first=True,
                            seed=1)  # fmt: skip
    ids = set(champ.loc[apart, "row_id"])
    assert set(few["row_id"]) <= ids and len(few) > 5
    # The weights stay small: about (disagreements / 20), not (rows / 20).
    assert (1 / few[QUEUE_INCLUSION_PROB]).max() < 3 * n_apart / 20
    # More asked than there are disagreements: all of them surely, the rest among the others.
    many = evaluation_sample(champ, challenger=chall, expected_size=n_apart + 30,
                             disagreements_first=True, seed=1)  # fmt: skip
    sure = many[many["row_id"].isin(ids)]
    assert len(sure) == n_apart and (sure[QUEUE_INCLUSION_PROB] == 1.0).all()
    others = many[~many["row_id"].isin(ids)]
    assert len(others) > 10 and (others[QUEUE_INCLUSION_PROB] < 1).all()
    # Without a challenger there is nothing to disagree with: the plain design.
    alone = evaluation_sample(champ, expected_size=20, disagreements_first=True, seed=1)
    assert alone[QUEUE_INCLUSION_PROB].to_numpy() == pytest.approx(np.full(len(alone), 20 / 600))


def test_disagreements_first_keeps_the_paired_estimate_unbiased() -> None:
    """Over many seeded draws the Horvitz-Thompson mean of d (0 where the models agree)
    matches the true mean over every row."""
    rng = np.random.default_rng(0)
    champ, chall = pair(400, seed=5)
    y = rng.integers(0, 3, 400)
    d = (chall["predicted"].to_numpy() == y).astype(float) - (champ["predicted"].to_numpy() == y)
    index = {r: i for i, r in enumerate(champ["row_id"])}
    estimates = []
    for seed in range(400):
        s = evaluation_sample(champ, challenger=chall, expected_size=15,
                              disagreements_first=True, seed=seed)  # fmt: skip
        rows = s["row_id"].map(index).to_numpy()
        estimates.append(float((d[rows] / s[QUEUE_INCLUSION_PROB].to_numpy()).sum() / 400))
    spread = np.std(estimates) / np.sqrt(len(estimates))
    assert abs(np.mean(estimates) - d.mean()) < 4 * spread
