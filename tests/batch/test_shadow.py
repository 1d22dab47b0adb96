"""Shadow evaluation, promotion and rollback: the statistics, then the whole path on real stores."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgeloop.core.config import GateSettings, ShadowSettings, load_settings
from pipelines.shadow import compare, decide, mcnemar_exact

CLASSES = [0, 1, 2]


def _preds(n: int, champ_acc: float, chall_acc: float, seed: int = 0):  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    a = np.where(rng.random(n) < champ_acc, y, (y + 1) % 3)
    b = np.where(rng.random(n) < chall_acc, y, (y + 2) % 3)
    return y, a, b


def test_clearly_better_challenger_is_promoted() -> None:
    y, a, b = _preds(600, 0.70, 0.90)
    cmp = compare(y, a, b, classes=CLASSES, settings=ShadowSettings(), seed=1)
    assert cmp.n == 600 and cmp.challenger > cmp.champion
    assert 0 < cmp.ci_low < cmp.delta < cmp.ci_high
    assert cmp.mcnemar_p < 0.001
    d = decide(cmp, ShadowSettings(), GateSettings())
    assert d.promote and "CI" in d.summary()


def test_equal_models_are_kept_and_the_reason_says_why() -> None:
    y, a, _ = _preds(600, 0.8, 0.8)
    cmp = compare(y, a, a.copy(), classes=CLASSES, settings=ShadowSettings(), seed=1)
    assert cmp.delta == 0 and cmp.agreement == 1.0 and cmp.mcnemar_p == 1.0
    d = decide(cmp, ShadowSettings(), GateSettings())
    assert not d.promote and "lower bound not above" in d.summary()


def test_too_few_rows_is_not_evidence() -> None:
    y, a, b = _preds(40, 0.5, 1.0)
    cmp = compare(y, a, b, classes=CLASSES, settings=ShadowSettings(min_samples=200), seed=1)
    d = decide(cmp, ShadowSettings(min_samples=200), GateSettings())
    assert not d.promote and "only 40 labeled rows" in d.summary()


def test_slice_floor_blocks_promotion() -> None:
    y, a, b = _preds(600, 0.70, 0.90)
    mask = np.zeros(600, dtype=bool)
    mask[:100] = True
    b = b.copy()
    b[:100] = (y[:100] + 1) % 3  # the challenger fails the whole slice
    cmp = compare(
        y, a, b, classes=CLASSES, settings=ShadowSettings(), seed=1, slice_masks={"s": mask}
    )
    d = decide(cmp, ShadowSettings(), GateSettings(slice_floors={"s": 0.5}))
    assert not d.promote and "slice s: challenger 0.0000 below floor" in d.summary()


def test_bootstrap_is_seeded_and_macro_f1_works() -> None:
    y, a, b = _preds(300, 0.7, 0.8)
    s = ShadowSettings(metric="macro_f1", bootstrap_samples=200)
    one = compare(y, a, b, classes=CLASSES, settings=s, seed=5)
    two = compare(y, a, b, classes=CLASSES, settings=s, seed=5)
    assert (one.ci_low, one.ci_high) == (two.ci_low, two.ci_high)
    assert one.metric == "macro_f1" and one.ci_low <= one.delta <= one.ci_high


def test_mcnemar_matches_the_binomial_definition() -> None:
    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(10, 10) == pytest.approx(1.0)
    assert mcnemar_exact(0, 10) == pytest.approx(2 * 0.5**10)


# ---------------------------------------------------------------------- real stores
@pytest.mark.slow
@pytest.mark.usefixtures("prefect_harness")
def test_score_shadow_promote_rollback_on_real_stores(project: Path, tmp_path: Path) -> None:
    from edgeloop.batch.scoring import read_scores
    from edgeloop.batch.shadow import shadow_evaluate
    from edgeloop.core.errors import GateError
    from edgeloop.models.promotion import Rollback, promote, rollback
    from edgeloop.tracking.registry import Registry
    from flows.ingest import ingest
    from flows.retrain import retrain
    from flows.score import score
    from tests.conftest import small_reference

    cfg = project / "edgeloop.yaml"
    cfg.write_text(cfg.read_text() + "shadow:\n  min_samples: 30\n  bootstrap_samples: 500\n")
    config = str(cfg)
    settings = load_settings(cfg)
    assert retrain(reason="v1", config=config)["alias"] == "champion"
    first = tmp_path / "b1.csv"
    small_reference(120, 50).to_csv(first, index=False)
    ingest([str(first)], config=config)
    written = score(config=config)
    assert {w["alias"] for w in written} == {"champion"}
    assert retrain(reason="v2", config=config)["alias"] == "challenger"
    # Batches after the challenger's deployment are scored by both.
    later = tmp_path / "b2.csv"
    small_reference(150, 51).to_csv(later, index=False)
    ingest([str(later)], config=config)
    written = score(config=config)
    assert {(w["alias"], w["version"]) for w in written} >= {("champion", "1"), ("challenger", "2")}
    assert len(read_scores(settings, "2")) == 120 + 150  # the challenger scored the older batch too

    report = shadow_evaluate(settings)

    # Only the batch ingested after deployment is evidence (the challenger trained on the other).
    assert report.comparison["n"] == 150
    assert report.champion == "1" and report.challenger == "2" and report.run_id
    reg = Registry(settings)
    if not report.promote:
        with pytest.raises(GateError) as info:
            promote(settings)
        assert info.value.result.promoted is False
        assert reg.aliases()["champion"] == "1"
        out = promote(settings, force=True, reason="on-call override for the test")
    else:
        out = promote(settings)
    assert out.promoted and out.new_champion == "2"
    assert reg.aliases() == {"champion": "2", "previous-champion": "1"}
    moves = [(e.alias, e.version) for e in reg.history()]
    assert ("champion", "2") in moves and ("challenger", "") in moves

    back = rollback(settings, "bad latency")
    assert back == Rollback(champion="1", rolled_back="2")
    assert reg.aliases() == {"champion": "1", "previous-champion": "2"}
    assert reg.history("champion")[-1].reason == "rollback: bad latency"
