"""The prediction service with regression models, for real: uvicorn on 127.0.0.1, the MLflow
registry on SQLite, the worker process and its SQLite prediction log; no mocks.

The project's config is made a regression one by hand (``schema`` of ``housing_schema`` and the
task's metrics): what is tested here is serving, not ``init``'s inference of the task. Models
are fitted with ``pipelines.train.fit`` and registered directly (no Prefect), as in
``test_service.py``, whose server and metric helpers this module uses.
"""

from __future__ import annotations

import copy
import math
import re
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml

from edgeloop.core.config import Settings, TrainingSettings, load_settings
from edgeloop.serving.metrics import Metrics
from edgeloop.serving.predlog import Entry, PredictionLog, RowBatch, read_predictions, row_hash
from tests.conftest import housing_reference, housing_schema, new_project
from tests.serving.test_service import metric, scrape, serving, wait_for

FEATURES = ["area", "rooms", "age", "district"]
ROW = {"area": 84.5, "rooms": 3, "age": 12.0, "district": "harbour"}
ROWS = [
    ROW,
    {"area": 190.0, "rooms": 6, "age": 70.5, "district": "centre"},
    {"area": 31.0, "rooms": 1, "age": 0.0, "district": "hills"},
    {"area": 120.0, "rooms": 4, "age": 33.3, "district": "docklands"},  # unseen category
    {"area": 55.5, "rooms": 2, "age": 5.0, "district": "north"},
]


def _regression_config(root: Path) -> None:
    """Turn the project's config into a regression one (housing schema, the task's metrics)."""
    path = root / "edgeloop.yaml"
    data = yaml.safe_load(path.read_text())
    data["schema"] = housing_schema().model_dump()
    data["training"]["estimator"] = "sklearn.ensemble.RandomForestRegressor"
    data["gates"].update(metric="r2", baseline="mean", class_recall_floors={})
    data["shadow"]["metric"] = "abs_error"
    data["edge_cases"]["min_margin"] = 0.0
    path.write_text(yaml.safe_dump(data, sort_keys=False))


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A regression project and its models, logged with skops as retrain logs them: a random
    forest, extra trees, hist gradient boosting, a forest whose signature lets ``age`` be null
    (trained on rows with missing ages), and a classifier (of the wrong task)."""
    import mlflow
    import mlflow.sklearn
    from mlflow.models import infer_signature

    from edgeloop.models.training import _trusted_types
    from edgeloop.tracking.store import ensure_experiment
    from pipelines.train import features, fit

    root = new_project(tmp_path_factory.mktemp("regression-service"))
    _regression_config(root)
    settings = load_settings(root / "edgeloop.yaml")
    schema = settings.data_schema
    assert schema.is_regression
    exp = ensure_experiment(settings, "training")
    train = housing_reference(400, seed=5)
    complete = housing_reference(30, seed=9).dropna(subset=["age"])
    x = features(complete, schema).astype({c: "float64" for c in schema.numeric})
    x_gaps = features(housing_reference(30, seed=5), schema).astype(
        {c: "float64" for c in schema.numeric}
    )
    assert x_gaps["age"].isna().any() and not x["age"].isna().any()

    def fitted(estimator: str, seed: int, **params: Any) -> Any:
        training = TrainingSettings(estimator=estimator, params=params)
        return fit(train, schema, training, seed)

    models: dict[str, Any] = {
        "forest": fitted("sklearn.ensemble.RandomForestRegressor", 0, n_estimators=25, n_jobs=-1),
        "extra": fitted("sklearn.ensemble.ExtraTreesRegressor", 1, n_estimators=25, n_jobs=-1),
        "hist": fitted("sklearn.ensemble.HistGradientBoostingRegressor", 2, max_iter=30),
    }
    models["gaps"] = models["forest"]
    as_classes = schema.model_copy(
        update={"task": "classification", "classes": [0, 1], "target_range": None}
    )
    models["classifier"] = fit(
        train.assign(price=(train["price"] > train["price"].median()).astype(int)),
        as_classes,
        TrainingSettings(params={"n_estimators": 5}),
        0,
    )
    logged: dict[str, tuple[str, str]] = {}
    for key, model in models.items():
        example = x_gaps if key == "gaps" else x
        output = model.predict(example)
        with mlflow.start_run(experiment_id=exp, run_name=key) as run:
            info = mlflow.sklearn.log_model(
                model,
                name="model",
                signature=infer_signature(example, output),
                serialization_format="skops",
                skops_trusted_types=_trusted_types(model),
                pip_requirements=["scikit-learn"],
                pyfunc_predict_fn="predict",
            )
        logged[key] = (info.model_uri, run.info.run_id)
    yield {"root": root, "models": models, "logged": logged}


@pytest.fixture()
def make_settings(stack: dict[str, Any], request: pytest.FixtureRequest) -> Callable[..., Settings]:
    """Settings for this test: its own model name and log, a short poll."""
    root: Path = stack["root"]
    name = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:40]

    def make() -> Settings:
        data = yaml.safe_load((root / "edgeloop.yaml").read_text())
        data["registry"] = {"model_name": f"{name}-model"}
        data["serving"] = {
            **data["serving"],
            "poll_seconds": 0.5,
            "log_path": f".edgeloop/{name}.db",
        }
        path = root / f"{name}.yaml"
        path.write_text(yaml.safe_dump(data))
        return load_settings(path)

    return make


def register(stack: dict[str, Any], settings: Settings, key: str, alias: str) -> str:
    from edgeloop.tracking.registry import Registry

    uri, run_id = stack["logged"][key]
    version, _ = Registry(settings).register(uri, run_id, alias, f"test: {key}")
    return version


def local(stack: dict[str, Any], key: str, rows: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """The fitted pipeline's own predict on ``rows`` (one thread: the forest then adds its trees
    in order, as the service does) and its members' spread as batch scoring measures it."""
    from pipelines.score import predict_with_spread

    model = copy.deepcopy(stack["models"][key])
    if hasattr(model[-1], "n_jobs"):
        model.set_params(model__n_jobs=None)
    frame = pd.DataFrame(rows)[FEATURES].astype({"rooms": "float64", "age": "float64"})
    return np.asarray(model.predict(frame)), predict_with_spread(model, frame)[1]


# ---------------------------------------------------------------------- tests
@pytest.mark.slow
def test_regression_champion_answers_values_with_spread_never_classes(
    stack: dict, make_settings: Callable
) -> None:
    from pipelines.score import regression_confidence, target_scale

    settings = make_settings()
    version = register(stack, settings, "forest", "champion")
    scale = target_scale(stack["models"]["forest"])
    with serving(settings) as client:
        ready = client.get("/readyz")
        assert ready.status_code == 200, ready.text
        champ = ready.json()["champion"]
        assert champ["version"] == version and champ["task"] == "regression"
        # The hand-written forest path was checked against the pipeline and is used.
        assert champ["fast_path"] is True and champ["members"] is True
        assert champ["target_scale"] == pytest.approx(scale) and scale > 0

        one = client.post("/predict", json=ROW)
        assert one.status_code == 200, one.text
        assert one.json()["model"] == {"alias": "champion", "version": version}
        [pred] = one.json()["predictions"]
        assert set(pred) == {"value", "spread", "confidence"}
        many = client.post("/predict", json={"rows": ROWS})
        assert many.status_code == 200, many.text
        listed = client.post("/predict", json=ROWS).json()["predictions"]
        assert listed == many.json()["predictions"]
        m = scrape(client)

    value, spread = local(stack, "forest", ROWS)
    got = many.json()["predictions"]
    # The value is the pipeline's own predict, to the last bit, for one row and for many.
    assert pred["value"] == value[0]
    assert [p["value"] for p in got] == value.tolist()
    assert np.allclose([p["spread"] for p in got], spread, rtol=1e-12, atol=1e-9)
    assert (spread > 0).all()
    conf = regression_confidence(np.array([p["spread"] for p in got]), scale)
    assert [p["confidence"] for p in got] == conf.tolist()
    assert all(0.0 <= p["confidence"] <= 1.0 for p in got)
    # Predictions counted, and their values in a histogram over schema.target_range.
    n = 1 + 2 * len(ROWS)
    assert metric(m, "edgeloop_predicted_rows_total", alias="champion") == n
    assert metric(m, "edgeloop_predicted_value_count") == n
    total = pred["value"] + 2 * sum(p["value"] for p in got)
    assert metric(m, "edgeloop_predicted_value_sum") == pytest.approx(total)
    assert metric(m, "edgeloop_predicted_value_bucket", le="+Inf") == n
    low, high = settings.data_schema.target_range or (0.0, 0.0)
    assert metric(m, "edgeloop_predicted_value_bucket", le=repr(high)) == n
    middle = low + (high - low) / 2
    below = sum(v <= middle for v in [pred["value"], *2 * [p["value"] for p in got]])
    assert metric(m, "edgeloop_predicted_value_bucket", le=repr(middle)) == below


@pytest.mark.slow
def test_bad_regression_inputs_are_4xx_naming_the_field(
    stack: dict, make_settings: Callable
) -> None:
    settings = make_settings()
    register(stack, settings, "forest", "champion")
    with serving(settings) as client:
        cases = [
            ({k: v for k, v in ROW.items() if k != "area"}, 422, "area", "missing field 'area'"),
            ({**ROW, "rooms": "three"}, 422, "rooms", "field 'rooms' must be a number"),
            ({**ROW, "age": None}, 422, "age", "null is not allowed for field 'age'"),
            ({**ROW, "price": 310.0}, 422, "price", "unexpected field 'price'"),
        ]
        for body, status, field, message in cases:
            res = client.post("/predict", json=body)
            assert res.status_code == status, (body, res.text)
            assert res.json()["field"] == field and message in res.json()["error"], res.text
        bad_row = client.post("/predict", json=[ROW, {**ROW, "district": 7}])
        assert bad_row.status_code == 422 and bad_row.json()["row"] == 1
        assert client.post("/predict", content=b"{").status_code == 415
        assert (
            client.post("/predict", content=b"{", headers={"content-type": "application/json"})
        ).status_code == 400


@pytest.mark.slow
def test_models_without_members_or_with_optional_inputs_use_the_generic_path(
    stack: dict, make_settings: Callable
) -> None:
    settings = make_settings()
    register(stack, settings, "hist", "champion")
    with serving(settings) as client:
        champ = client.get("/readyz").json()["champion"]
        assert champ["members"] is False and champ["fast_path"] is False
        res = client.post("/predict", json=ROWS)
        assert res.status_code == 200, res.text
        # No members: the value alone (no spread, no confidence to report).
        assert all(set(p) == {"value"} for p in res.json()["predictions"])
        assert [p["value"] for p in res.json()["predictions"]] == local(stack, "hist", ROWS)[
            0
        ].tolist()

        # A forest whose signature lets age be null: the generic path, nulls as NaN.
        version = register(stack, settings, "gaps", "champion")
        wait_for(
            lambda: client.get("/readyz").json()["champion"]["version"] == version,
            what="the new champion",
        )
        assert client.get("/readyz").json()["champion"]["fast_path"] is False
        rows = [ROWS[0], {**ROWS[1], "age": None}, {k: v for k, v in ROWS[2].items() if k != "age"}]
        res = client.post("/predict", json=rows)
        assert res.status_code == 200, res.text
    got = res.json()["predictions"]
    value, spread = local(stack, "gaps", rows)
    assert [p["value"] for p in got] == value.tolist()
    assert np.allclose([p["spread"] for p in got], spread, rtol=1e-12, atol=1e-9)


@pytest.mark.slow
def test_silent_mode_logs_both_regressors_values_as_floats(
    stack: dict, make_settings: Callable
) -> None:
    from pipelines.score import target_scale

    settings = make_settings()
    register(stack, settings, "forest", "champion")
    register(stack, settings, "extra", "challenger")
    path = settings.root / settings.serving.log_path
    with serving(settings) as client:
        ready = client.get("/readyz").json()
        assert ready["challenger"]["task"] == "regression"
        assert ready["worker"]["challenger_loaded"] == "2"
        ids = [
            client.post("/predict", json=ROWS).json()["request_id"],
            client.post("/predict", json=ROW).json()["request_id"],
        ]
        n = 2 * (len(ROWS) + 1)
        df = wait_for(
            lambda: d if len(d := read_predictions(path)) == n else None, what=f"{n} log records"
        )
        m = wait_for(
            lambda: (
                s
                if metric(s := scrape(client), "edgeloop_shadow_agreement_total", outcome="agree")
                + metric(s, "edgeloop_shadow_agreement_total", outcome="disagree")
                == len(ROWS) + 1
                else None
            ),
            what="shadow agreement counts",
        )
        assert metric(m, "edgeloop_predicted_rows_total", alias="challenger") == len(ROWS) + 1

    assert set(df["request_id"]) == set(ids)
    champ = df[df["alias"] == "champion"].set_index(["request_id", "row"])
    chall = df[df["alias"] == "challenger"].set_index(["request_id", "row"])
    assert (champ["row_hash"] == chall.loc[champ.index, "row_hash"]).all()
    assert champ["row_hash"].tolist()[: len(ROWS)] == [row_hash(r) for r in ROWS]
    assert set(champ["version"]) == {"1"} and set(chall["version"]) == {"2"}
    # Both models' values, as floats, beside each other; no class probabilities.
    assert champ["predicted"].dtype == "float64" and chall["predicted"].dtype == "float64"
    assert df["spread"].dtype == "float64" and (df["spread"] > 0).all()
    assert all(p == {} for p in df["probabilities"])
    for key, logged in (("forest", champ), ("extra", chall)):
        value, spread = local(stack, key, ROWS)
        assert logged["predicted"].iloc[: len(ROWS)].tolist() == value.tolist(), key
        assert np.allclose(logged["spread"].iloc[: len(ROWS)], spread, rtol=1e-12, atol=1e-9)
    with sqlite3.connect(path) as conn:
        types = {t for (t,) in conn.execute("SELECT DISTINCT typeof(predicted) FROM predictions")}
        spreads = {t for (t,) in conn.execute("SELECT DISTINCT typeof(spread) FROM predictions")}
    assert types == {"real"} and spreads == {"real"}
    # Agreement as the edge cases judge disagreement: within tolerance x the target's std.
    tolerance = settings.edge_cases.disagreement_tolerance * target_scale(stack["models"]["extra"])
    diff = (champ["predicted"] - chall.loc[champ.index, "predicted"]).abs()
    assert (
        metric(m, "edgeloop_shadow_agreement_total", outcome="agree") == (diff <= tolerance).sum()
    )


@pytest.mark.slow
def test_a_classifier_is_not_served_for_a_regression_project(
    stack: dict, make_settings: Callable
) -> None:
    settings = make_settings()
    version = register(stack, settings, "classifier", "champion")
    with serving(settings) as client:
        ready = client.get("/readyz")
        assert ready.status_code == 503
        reason = ready.json()["reason"]
        assert f"model v{version} is a classifier but schema.task is 'regression'" in reason
        res = client.post("/predict", json=ROW)
        assert res.status_code == 503 and "classifier" in res.json()["error"]
        assert metric(scrape(client), "edgeloop_registry_errors_total", kind="load") >= 1


def test_a_log_from_before_the_spread_column_reads_and_grows_it(tmp_path: Path) -> None:
    path = tmp_path / "v2.db"
    with sqlite3.connect(path) as conn:
        conn.execute(
            "CREATE TABLE predictions (id INTEGER PRIMARY KEY, ts REAL NOT NULL, request_id TEXT"
            " NOT NULL, row INTEGER NOT NULL, row_hash TEXT NOT NULL, alias TEXT NOT NULL, version"
            " TEXT NOT NULL, predicted, probabilities TEXT NOT NULL, latency_ms REAL NOT NULL,"
            " row_key TEXT)"
        )
        conn.execute(
            "INSERT INTO predictions (ts, request_id, row, row_hash, alias, version, predicted,"
            " probabilities, latency_ms) VALUES (1.0, 'r', 0, 'h', 'champion', '1', 2, '{}', 1.0)"
        )
    assert read_predictions(path)["spread"].isna().all()
    plog = PredictionLog(path, max_pending_rows=10)
    plog.start()
    batch = RowBatch([ROW, ROWS[1]])
    # A regressor's values (one model without members: NaN spread, stored as NULL).
    assert plog.submit(
        Entry(2.0, "s", "champion", "3", batch, [250.5, 410.0], (), (), 1.0, [4.5, 0.25])
    )
    assert plog.submit(
        Entry(2.0, "s", "challenger", "4", batch, [251.0, 399.0], (), (), 1.0, [math.nan] * 2)
    )
    assert plog.flush(10)
    plog.close()
    df = read_predictions(path)
    assert df["predicted"].tolist() == [2, 250.5, 410.0, 251.0, 399.0]
    assert df["spread"].isna().tolist() == [True, False, False, True, True]
    assert df["spread"].iloc[1:3].tolist() == [4.5, 0.25]
    assert df["probabilities"].iloc[1] == {}


def test_predicted_value_histogram_buckets_as_prometheus_does() -> None:
    from prometheus_client import generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    metrics = Metrics(regression=True, value_range=[0.0, 100.0])
    assert metrics.values is not None
    metrics.values.observe(np.array([10.0]))  # on a bound: counted in it (le)
    metrics.values.observe(np.array([5.0, 10.0, 95.0, 250.0, math.nan, -3.0]))
    text = generate_latest(metrics.registry).decode()
    samples = {
        (s.name, s.labels.get("le")): s.value
        for f in text_string_to_metric_families(text)
        if f.name == "edgeloop_predicted_value"
        for s in f.samples
    }
    assert samples[("edgeloop_predicted_value_bucket", "0.0")] == 1  # -3
    assert samples[("edgeloop_predicted_value_bucket", "10.0")] == 4
    assert samples[("edgeloop_predicted_value_bucket", "90.0")] == 4
    assert samples[("edgeloop_predicted_value_bucket", "100.0")] == 5
    assert samples[("edgeloop_predicted_value_bucket", "+Inf")] == 6  # NaN is no prediction
    assert samples[("edgeloop_predicted_value_count", None)] == 6
    assert samples[("edgeloop_predicted_value_sum", None)] == pytest.approx(367.0)
    # A classification service has no such histogram; one without a range has count and sum.
    assert Metrics().values is None
    bare = Metrics(regression=True).values
    assert bare is not None and bare.bounds == []
