"""Other model kinds through the loop on real stores: a LightGBM classifier, a HistGradientBoosting
model with native categoricals, and a custom training function (``training.fit``): retrain and
register, a challenger, score with both, edge cases queued and exported, shadow evaluation."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from edgeloop.core.config import Settings, load_settings
from edgeloop.core.errors import GateError
from tests.conftest import git_commit_all, new_project, production_batch

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_harness")]

CUSTOM = '''
from sklearn.compose import make_column_transformer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler


def fit(x, y, seed):
    """A team's own model: scaled numerics and one-hot regions into a logistic regression."""
    pre = make_column_transformer(
        (OneHotEncoder(handle_unknown="ignore"), ["region"]), remainder=StandardScaler()
    )
    return make_pipeline(pre, LogisticRegression(max_iter=500, random_state=seed)).fit(x, y)
'''


def _retrain(root: Path, **kw: object) -> dict:
    from flows.retrain import retrain

    try:
        return retrain(config=str(root / "edgeloop.yaml"), **kw)
    except GateError as exc:
        return exc.result


def _loop(root: Path, tmp_path: Path) -> dict:
    """Champion, a forced challenger, a batch scored by both, edge cases, shadow evaluation."""
    from edgeloop.batch.annotation import export_tasks, read_queue
    from flows.ingest import ingest
    from flows.score import score
    from flows.shadow_evaluate import shadow_evaluate_flow

    config = str(root / "edgeloop.yaml")
    first = _retrain(root, reason="first")
    assert (first["status"], first["alias"]) == ("registered", "champion"), first
    second = _retrain(root, reason="challenger", force=True)
    assert (second["status"], second["alias"]) == ("registered", "challenger"), second
    batch = tmp_path / "batch.csv"
    production_batch(120, seed=31).to_csv(batch, index=False)
    ingest([str(batch)], config=config)
    score(config=config)
    scores = sorted((root / "scores").glob("*/*.parquet"))
    assert sorted(p.name for p in scores) == ["challenger-v2.parquet", "champion-v1.parquet"]
    champion = pd.read_parquet(scores[1])
    assert champion["confidence"].between(0, 1).all() and len(champion) == 120
    settings = load_settings(config)
    queue = read_queue(settings)
    edge = settings.edge_cases
    cases = queue[queue["purpose"] == "edge_case"]
    assert 0 < len(cases) <= edge.budget - round(edge.evaluation_share * edge.budget)
    assert (queue["purpose"] == "evaluation").any()  # the sample beside them
    out = export_tasks(settings, tmp_path / "export", formats=("csv",))
    assert out["tasks"] == len(read_queue(settings))
    report = shadow_evaluate_flow(config=config)
    _served(settings)
    return report


def _served(settings: Settings) -> None:
    """The prediction service answers with the champion, the challenger in shadow."""
    from tests.serving.test_service import serving

    row = production_batch(1, seed=41).iloc[0].to_dict()
    with serving(settings) as client:
        res = client.post("/predict", json=row)
        assert res.status_code == 200, res.text
        body = res.json()
        (answer,) = body["predictions"]
        assert answer["class"] in settings.data_schema.classes
        assert sum(answer["probabilities"].values()) == pytest.approx(1.0)
        ready = client.get("/readyz").json()
        assert ready["champion"]["version"] == "1" and ready["challenger"]["version"] == "2"


def _judged(report: dict) -> None:
    """The challenger was scored beside the champion on the whole batch, whose labels are
    pending: no evidence yet, no verdict."""
    assert report["comparison"]["pending_rows"] == 120, report
    assert report["state"] == "need_more" and report["promote"] is False


def test_a_lightgbm_classifier_project_runs_the_loop(tmp_path: Path) -> None:
    root = new_project(
        tmp_path,
        training={
            "estimator": "lightgbm.LGBMClassifier",
            "params": {"n_estimators": 40, "verbose": -1, "n_jobs": 1},
        },
    )
    report = _loop(root, tmp_path)
    _judged(report)
    from edgeloop.tracking.registry import Registry

    model = Registry(load_settings(root / "edgeloop.yaml")).load("champion")
    assert type(model.named_steps["model"]).__name__ == "LGBMClassifier"


def test_a_hist_gradient_boosting_project_keeps_categories_native(tmp_path: Path) -> None:
    root = new_project(
        tmp_path,
        training={
            "estimator": "sklearn.ensemble.HistGradientBoostingClassifier",
            "params": {"max_iter": 40},
        },
    )
    report = _loop(root, tmp_path)
    _judged(report)
    from edgeloop.tracking.registry import Registry

    model = Registry(load_settings(root / "edgeloop.yaml")).load("challenger")
    assert list(model.named_steps["model"].categorical_features) == [0]  # region, as codes


def test_a_custom_training_function_project_runs_the_loop(tmp_path: Path) -> None:
    root = new_project(tmp_path, training={"fit": "team_model:fit", "params": {}})
    (root / "team_model.py").write_text(CUSTOM, encoding="utf-8")
    git_commit_all(root, "the team's model")
    report = _loop(root, tmp_path)
    _judged(report)
    from edgeloop.tracking.registry import Registry

    model = Registry(load_settings(root / "edgeloop.yaml")).load("champion")
    assert type(model[-1]).__name__ == "LogisticRegression"


def test_the_training_functions_source_is_part_of_the_code_hash(tmp_path: Path) -> None:
    from edgeloop.models.cache import code_hash

    module = tmp_path / "hashed_team_model.py"
    module.write_text(CUSTOM, encoding="utf-8")
    plain, first = code_hash(tmp_path), code_hash(tmp_path, "hashed_team_model:fit")
    assert first != plain
    module.write_text(CUSTOM.replace("max_iter=500", "max_iter=800"), encoding="utf-8")
    assert code_hash(tmp_path, "hashed_team_model:fit") not in (first, plain)
