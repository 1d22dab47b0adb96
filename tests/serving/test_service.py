"""The prediction service for real: uvicorn on 127.0.0.1, the MLflow registry on SQLite, no mocks.

One project for the module (made like the ``project`` fixture, with ``init --data``); each test
gets its own registered model name, prediction log and config file in it, so tests do not see
each other's aliases. Models are fitted here and registered directly (no Prefect).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest
import yaml
from sklearn.base import BaseEstimator, ClassifierMixin, TransformerMixin
from sklearn.pipeline import Pipeline

from edgeloop.core.config import Settings, load_settings
from edgeloop.serving.predlog import Entry, PredictionLog, RowBatch, read_predictions, row_hash
from edgeloop.tracking.trusted import EXTRA_ENV
from tests.conftest import new_project, small_reference

FEATURES = ["age", "income", "score", "region"]
ROW = {"age": 41, "income": 52_000.5, "score": 0.7, "region": "north"}
ROWS = [
    ROW,
    {"age": 70, "income": 80_000.0, "score": 1.1, "region": "south"},
    {"age": 19, "income": 31_000.0, "score": 0.1, "region": "east"},
    {"age": 55, "income": 64_000.0, "score": 0.5, "region": "west"},  # unseen category
]

# Releases the hanging challenger (its predict_proba waits on this, at most 30 s).
_RELEASE = threading.Event()


class Raising(ClassifierMixin, BaseEstimator):
    """A challenger that fails on every call."""

    def fit(self, X: Any, y: Any) -> Raising:
        self.classes_ = np.unique(y)
        return self

    def predict_proba(self, X: Any) -> Any:
        raise RuntimeError("challenger exploded")

    def predict(self, X: Any) -> Any:
        return self.predict_proba(X)


class Hanging(ClassifierMixin, BaseEstimator):
    """A challenger that hangs for 30 s (or until the test releases it)."""

    def fit(self, X: Any, y: Any) -> Hanging:
        self.classes_ = np.unique(y)
        return self

    def predict_proba(self, X: Any) -> Any:
        _RELEASE.wait(30)
        return np.full((len(X), len(self.classes_)), 1.0 / len(self.classes_))

    def predict(self, X: Any) -> Any:
        return self.classes_[np.zeros(len(X), dtype=int)]


class Passthrough(TransformerMixin, BaseEstimator):  # type: ignore[misc]  # sklearn is untyped
    """A harmless transformer of a type edgeloop does not trust: its model must not load."""

    def fit(self, X: Any, y: Any = None) -> Passthrough:
        return self

    def transform(self, X: Any) -> Any:
        return X


# ---------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A project (as ``init --data`` makes it) and five models logged with skops: two forests, a
    failing and a hanging challenger, and a forest behind a transformer of an untrusted type."""
    import mlflow
    import mlflow.sklearn
    from mlflow.models import infer_signature

    from edgeloop.models.training import _trusted_types
    from edgeloop.tracking.store import ensure_experiment
    from pipelines.train import features, fit

    tmp = tmp_path_factory.mktemp("service")
    root = new_project(tmp)

    settings = load_settings(root / "edgeloop.yaml")
    schema = settings.data_schema
    exp = ensure_experiment(settings, "training")
    train = small_reference()
    x = features(small_reference(5, seed=9), schema).astype({c: "float64" for c in schema.numeric})
    models: dict[str, Any] = {}
    for key, seed in (("forest_a", 0), ("forest_b", 1)):
        training = settings.training.model_copy(
            update={"params": {"n_estimators": 20, "n_jobs": -1}}
        )
        models[key] = fit(train, schema, training, seed)
    models["raising"] = Raising().fit(x, train["label"])
    models["hanging"] = Hanging().fit(x, train["label"])
    models["untrusted"] = Pipeline([("passthrough", Passthrough()), ("model", models["forest_a"])])
    # The two misbehaving challengers are this module's own types: trusted, as a deployment
    # would trust a reviewed type, through the environment (the worker process inherits it).
    # Passthrough is not: its model must be refused.
    previous = os.environ.get(EXTRA_ENV)
    os.environ[EXTRA_ENV] = f"{__name__}.Raising,{__name__}.Hanging"
    logged: dict[str, tuple[str, str]] = {}
    for key, model in models.items():
        out = np.full((len(x), 3), 1 / 3)
        with mlflow.start_run(experiment_id=exp, run_name=key) as run:
            info = mlflow.sklearn.log_model(
                model,
                name="model",
                signature=infer_signature(x, out),
                # As retrain logs them: skops, with the types edgeloop trusts for the model
                # (the untrusted model's artifact lists its extra type: it must not count).
                serialization_format="skops",
                skops_trusted_types=[*_trusted_types(model), f"{__name__}.Passthrough"],
                pip_requirements=["scikit-learn"],
            )
        logged[key] = (info.model_uri, run.info.run_id)
    try:
        yield {"root": root, "models": models, "logged": logged}
    finally:
        _RELEASE.set()
        if previous is None:
            os.environ.pop(EXTRA_ENV, None)
        else:
            os.environ[EXTRA_ENV] = previous


@pytest.fixture()
def make_settings(stack: dict[str, Any], request: pytest.FixtureRequest) -> Callable[..., Settings]:
    """Settings for this test: its own model name and log, a short poll, serving overrides."""
    root: Path = stack["root"]
    name = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:40]

    def make(**serving: Any) -> Settings:
        data = yaml.safe_load((root / "edgeloop.yaml").read_text())
        data["registry"] = {"model_name": f"{name}-model"}
        data["serving"] = {
            **data.get("serving", {}),
            "poll_seconds": 0.5,
            "log_path": f".edgeloop/{name}.db",
            **serving,
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


@contextlib.contextmanager
def serving(settings: Settings, **kw: Any) -> Iterator[httpx.Client]:
    """A real uvicorn server on a free 127.0.0.1 port, in a thread; stopped on exit."""
    import uvicorn

    from edgeloop.serving.app import create_app

    app = create_app(settings, **kw)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive(), "the server failed to start"
        assert time.monotonic() < deadline, "the server did not start within 60 s"
        time.sleep(0.02)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            yield client
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


def wait_for(check: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value is not None and value is not False:  # a DataFrame has no truth value
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def scrape(client: httpx.Client) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """/metrics parsed as Prometheus text: (sample name, sorted labels) -> value."""
    from prometheus_client.parser import text_string_to_metric_families

    res = client.get("/metrics")
    assert res.status_code == 200 and res.headers["content-type"].startswith("text/plain")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(res.text)
        for s in family.samples
    }


def metric(samples: dict, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def local_proba(stack: dict[str, Any], key: str, rows: list[dict]) -> np.ndarray:
    frame = pd.DataFrame(rows)[FEATURES].astype({"age": "float64"})
    return stack["models"][key].predict_proba(frame)


# ---------------------------------------------------------------------- tests
@pytest.mark.slow
def test_predict_one_and_many_rows_champion_alone(stack: dict, make_settings: Callable) -> None:
    settings = make_settings()
    version = register(stack, settings, "forest_a", "champion")
    with serving(settings) as client:
        ready = client.get("/readyz")
        assert ready.status_code == 200
        body = ready.json()
        assert body["champion"]["version"] == version and body["champion"]["fast_path"] is True
        # No challenger: the champion serves alone, and readiness says why there is none.
        assert body["challenger"] is None and "challenger" in body["challenger_reason"]
        assert client.get("/healthz").json() == {"status": "ok"}

        one = client.post("/predict", json=ROW)
        assert one.status_code == 200, one.text
        out = one.json()
        assert out["model"] == {"alias": "champion", "version": version}
        assert re.fullmatch(r"[0-9a-f]{32}", out["request_id"])
        assert one.headers["x-request-id"] == out["request_id"]
        [pred] = out["predictions"]
        expected = local_proba(stack, "forest_a", [ROW])[0]
        assert list(pred["probabilities"]) == ["0", "1", "2"]
        assert np.allclose(list(pred["probabilities"].values()), expected, rtol=0, atol=1e-12)
        assert pred["class"] == int(np.argmax(expected))

        big = [{**r, "income": r["income"] + i} for i in range(10) for r in ROWS]
        for rows, payload in ((ROWS, ROWS), (ROWS, {"rows": ROWS}), (big, {"rows": big})):
            expected = local_proba(stack, "forest_a", rows)
            many = client.post("/predict", json=payload)
            assert many.status_code == 200, many.text
            preds = many.json()["predictions"]
            assert len(preds) == len(rows)
            got = np.array([list(p["probabilities"].values()) for p in preds])
            assert np.allclose(got, expected, rtol=0, atol=1e-12)
            assert [p["class"] for p in preds] == expected.argmax(axis=1).tolist()
            assert all(p["class"] in (0, 1, 2) for p in preds)

        m = scrape(client)
        assert metric(m, "edgeloop_requests_total", endpoint="predict", status="200") == 4
        rows = 1 + 2 * len(ROWS) + len(big)
        assert metric(m, "edgeloop_predicted_rows_total", alias="champion") == rows
        assert metric(m, "edgeloop_predicted_rows_total", alias="challenger") == 0
        assert metric(m, "edgeloop_model_version", alias="champion") == int(version)
        assert metric(m, "edgeloop_model_version", alias="challenger") == 0
        assert metric(m, "edgeloop_predict_latency_seconds_count") == 4


@pytest.mark.slow
def test_bad_inputs_are_4xx_naming_the_field(stack: dict, make_settings: Callable) -> None:
    settings = make_settings(max_rows_per_request=50, max_body_bytes=8192)
    register(stack, settings, "forest_a", "champion")
    cases: list[tuple[Any, int, str | None, int | None]] = [
        ({k: v for k, v in ROW.items() if k != "income"}, 422, "income", 0),
        ({**ROW, "age": "forty"}, 422, "age", 0),
        ({**ROW, "region": 3}, 422, "region", 0),
        ({**ROW, "score": True}, 422, "score", 0),
        ({**ROW, "score": None}, 422, "score", 0),
        ({**ROW, "colour": "red"}, 422, "colour", 0),
        ([ROW, {**ROW, "age": [1]}], 422, "age", 1),
        ([ROW, 7], 422, None, 1),
        ([], 422, None, None),
        ({"rows": []}, 422, None, None),
        ({"rows": "x"}, 422, "rows", None),
        ([ROW] * 51, 422, None, None),  # more than max_rows_per_request
        # Batches of well-formed rows take a column-at-a-time path: errors are still named.
        ([ROW] * 20 + [{**ROW, "income": "lots"}], 422, "income", 20),
        ([ROW] * 20 + [{**ROW, "region": None}], 422, "region", 20),
        ([ROW] * 20 + [{**ROW, "extra": 1}], 422, "extra", 20),
    ]
    with serving(settings) as client:
        for payload, status, field, row in cases:
            res = client.post("/predict", json=payload)
            assert res.status_code == status, (payload, res.text)
            body = res.json()
            assert set(body) == {"error", "field", "row"}, body
            assert (body["field"], body["row"]) == (field, row), (payload, body)
            if field:
                assert repr(field) in body["error"] or field in body["error"]
        assert "max_rows_per_request" in client.post("/predict", json=[ROW] * 51).json()["error"]

        res = client.post(
            "/predict", content=b'{"age": 41,', headers={"content-type": "application/json"}
        )
        assert res.status_code == 400 and "not valid JSON" in res.json()["error"]
        res = client.post("/predict", content=b"x" * 9000)
        assert res.status_code == 413 and "max_body_bytes" in res.json()["error"]

        def chunks() -> Iterator[bytes]:  # no Content-Length: the limit holds while streaming
            for _ in range(10):
                yield b" " * 1000

        res = client.post("/predict", content=chunks())
        assert res.status_code == 413
        # The service still answers good requests.
        assert client.post("/predict", json=ROW).status_code == 200
        m = scrape(client)
        assert (
            metric(m, "edgeloop_requests_total", endpoint="predict", status="422") == len(cases) + 1
        )
        assert metric(m, "edgeloop_requests_total", endpoint="predict", status="413") == 2
        assert metric(m, "edgeloop_requests_total", endpoint="predict", status="400") == 1


@pytest.mark.slow
def test_a_body_not_sent_as_json_is_a_415(
    stack: dict[str, Any], make_settings: Callable[..., Settings]
) -> None:
    """JSON by Content-Type only: application/json (a UTF-8 charset allowed) or a +json type."""
    settings = make_settings(max_body_bytes=8192)
    register(stack, settings, "forest_a", "champion")
    body = b'{"age": 41, "income": 52000.5, "score": 0.7, "region": "north"}'
    refused = [
        ("text/plain", "'text/plain'"),
        ("application/x-www-form-urlencoded", "'application/x-www-form-urlencoded'"),
        ("text/json", "'text/json'"),
        ("application/json; charset=latin-1", "UTF-8 only"),
        (None, "no Content-Type"),
    ]
    accepted = [
        "application/json",
        "application/json; charset=utf-8",
        'Application/JSON;charset="UTF-8"',
        "application/vnd.edgeloop+json",
    ]
    with serving(settings) as client:
        for content_type, named in refused:
            headers = {"content-type": content_type} if content_type else {}
            res = client.post("/predict", content=body, headers=headers)
            assert res.status_code == 415, (content_type, res.text)
            assert res.headers["content-type"] == "application/json"
            error = res.json()
            assert set(error) == {"error", "field", "row"}, error
            assert (error["field"], error["row"]) == (None, None)
            assert named in error["error"] and "'application/json'" in error["error"], error
        for content_type in accepted:
            res = client.post("/predict", content=body, headers={"content-type": content_type})
            assert res.status_code == 200, (content_type, res.text)
        # The other answers keep their order: too big is a 413, bad JSON a 400, whatever the type.
        res = client.post("/predict", content=b"x" * 9000, headers={"content-type": "text/plain"})
        assert res.status_code == 413
        res = client.post(
            "/predict", content=b'{"age": 41,', headers={"content-type": "application/json"}
        )
        assert res.status_code == 400
        m = scrape(client)
        assert metric(m, "edgeloop_requests_total", endpoint="predict", status="415") == len(
            refused
        )


@pytest.mark.slow
def test_a_model_asking_for_an_untrusted_type_is_never_served(
    stack: dict[str, Any], make_settings: Callable[..., Settings]
) -> None:
    settings = make_settings()
    bad = register(stack, settings, "untrusted", "champion")
    with serving(settings) as client:
        ready = client.get("/readyz")
        assert ready.status_code == 503
        reason = ready.json()["reason"]
        assert f"v{bad}" in reason and "does not trust" in reason, reason
        assert f"'{__name__}.Passthrough'" in reason, reason
        res = client.post("/predict", json=ROW)
        assert res.status_code == 503 and "does not trust" in res.json()["error"]
        # A trusted model moved to champion is served at once.
        good = register(stack, settings, "forest_a", "champion")
        wait_for(lambda: client.get("/readyz").status_code == 200, what="the trusted model")
        assert client.post("/predict", json=ROW).json()["model"]["version"] == good


@pytest.mark.slow
def test_no_champion_starts_503_then_recovers(stack: dict, make_settings: Callable) -> None:
    settings = make_settings()
    with serving(settings) as client:
        assert client.get("/healthz").status_code == 200
        ready = client.get("/readyz")
        assert ready.status_code == 503
        reason = ready.json()["reason"]
        assert f"registered model '{settings.model_name}' holds alias 'champion'" in reason
        assert "does not exist yet" in reason
        res = client.post("/predict", json=ROW)
        assert res.status_code == 503 and settings.model_name in res.json()["error"]

        # The model exists, but nothing holds `champion` yet: the reason names the alias.
        register(stack, settings, "forest_b", "challenger")
        wait_for(
            lambda: "aliases: challenger=v1" in client.get("/readyz").json().get("reason", ""),
            what="the reason to list the aliases",
        )
        res = client.post("/predict", json=ROW)
        assert res.status_code == 503 and "alias 'champion'" in res.json()["error"]

        version = register(stack, settings, "forest_a", "champion")
        wait_for(lambda: client.get("/readyz").status_code == 200, what="recovery")
        res = client.post("/predict", json=ROW)
        assert res.status_code == 200 and res.json()["model"]["version"] == version


@pytest.mark.slow
def test_alias_move_is_picked_up_without_restart(stack: dict, make_settings: Callable) -> None:
    from edgeloop.tracking.registry import Registry

    settings = make_settings()
    v1 = register(stack, settings, "forest_a", "champion")
    with serving(settings) as client:
        assert client.post("/predict", json=ROW).json()["model"]["version"] == v1
        v2 = register(stack, settings, "forest_b", "champion")
        wait_for(
            lambda: client.post("/predict", json=ROWS).json()["model"]["version"] == v2,
            what="the new champion",
        )
        got = client.post("/predict", json=ROWS).json()["predictions"]
        probs = np.array([list(p["probabilities"].values()) for p in got])
        assert np.allclose(probs, local_proba(stack, "forest_b", ROWS), rtol=0, atol=1e-12)
        assert metric(scrape(client), "edgeloop_model_version", alias="champion") == int(v2)
        # A rollback is just another alias move.
        Registry(settings).move_alias("champion", v1, "test: rollback")
        wait_for(
            lambda: client.post("/predict", json=ROW).json()["model"]["version"] == v1,
            what="the rollback",
        )


@pytest.mark.slow
def test_failing_challenger_never_affects_answers(stack: dict, make_settings: Callable) -> None:
    settings = make_settings()
    register(stack, settings, "forest_a", "champion")
    bad = register(stack, settings, "raising", "challenger")
    with serving(settings) as client:
        assert client.get("/readyz").json()["challenger"]["version"] == bad
        expected = local_proba(stack, "forest_a", ROWS)
        for _ in range(10):
            res = client.post("/predict", json=ROWS)
            assert res.status_code == 200
            got = np.array([list(p["probabilities"].values()) for p in res.json()["predictions"]])
            assert np.allclose(got, expected, rtol=0, atol=1e-12)
        samples = wait_for(
            lambda: (
                m
                if (m := scrape(client)).get(
                    ("edgeloop_model_errors_total", (("alias", "challenger"), ("version", bad)))
                )
                else None
            ),
            what="challenger errors in /metrics",
        )
        assert metric(samples, "edgeloop_requests_total", endpoint="predict", status="200") == 10
        assert (
            "edgeloop_model_errors_total",
            (("alias", "champion"), ("version", "1")),
        ) not in samples
        assert client.get("/readyz").status_code == 200


@pytest.mark.slow
def test_hung_challenger_never_delays_answers(stack: dict, make_settings: Callable) -> None:
    from edgeloop.serving.worker import SHADOW_LINGER_SECONDS

    settings = make_settings(shadow_queue_size=5)
    register(stack, settings, "forest_a", "champion")
    register(stack, settings, "hanging", "challenger")
    _RELEASE.clear()
    try:
        with serving(settings, shadow_stall_seconds=1.5) as client:
            # The first request's shadow work hangs the worker (alone in its batch)...
            assert client.post("/predict", json=ROW).status_code == 200
            wait_for(
                lambda: metric(scrape(client), "edgeloop_shadow_queue_depth") == 0,
                what="the worker to take the first request",
            )
            time.sleep(4 * SHADOW_LINGER_SECONDS)
            # ... and the champion keeps answering at full speed.
            latencies = []
            for _ in range(50):
                t0 = time.perf_counter()
                res = client.post("/predict", json=ROW)
                latencies.append(time.perf_counter() - t0)
                assert res.status_code == 200
            p99 = float(np.percentile(latencies, 99))
            assert p99 < 1.0, f"p99 {p99:.3f} s with a challenger hung for 30 s"
            m = scrape(client)
            # 5 wait in the queue; the other 45 were dropped (queue full, or stalled once the
            # worker has been stuck for 1.5 s) and counted.
            assert metric(m, "edgeloop_shadow_queue_depth") == 5
            dropped = {
                labels: v
                for (name, labels), v in m.items()
                if name == "edgeloop_shadow_dropped_total"
            }
            assert sum(dropped.values()) == 45, dropped
            # Once it is stuck past the limit, readiness says so and new work is dropped at once.
            ready = wait_for(
                lambda: (r := client.get("/readyz").json())["challenger"]["healthy"] is False and r,
                what="the stall to be reported",
            )
            assert "stuck" in ready["challenger"]["reason"] and ready["ready"] is True
            before = metric(
                scrape(client), "edgeloop_shadow_dropped_total", reason="challenger_stalled"
            )
            for _ in range(10):
                assert client.post("/predict", json=ROW).status_code == 200
            m = scrape(client)
            after = metric(m, "edgeloop_shadow_dropped_total", reason="challenger_stalled")
            assert after - before == 10
            assert metric(m, "edgeloop_shadow_healthy") == 0
            _RELEASE.set()  # let the worker go so the server stops promptly
    finally:
        _RELEASE.set()


@pytest.mark.slow
def test_prediction_log_pairs_both_models_by_row_hash(stack: dict, make_settings: Callable) -> None:
    settings = make_settings()
    register(stack, settings, "forest_a", "champion")
    register(stack, settings, "forest_b", "challenger")
    start = time.time()
    with serving(settings) as client:
        ids = [
            client.post("/predict", json=ROWS).json()["request_id"],
            client.post("/predict", json={**ROW, "age": 41.0}).json()["request_id"],
        ]
        path = settings.root / settings.serving.log_path
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

    assert set(df["alias"]) == {"champion", "challenger"}
    assert set(df["request_id"]) == set(ids)
    champ = df[df["alias"] == "champion"].set_index(["request_id", "row"])
    chall = df[df["alias"] == "challenger"].set_index(["request_id", "row"])
    assert (champ["row_hash"] == chall.loc[champ.index, "row_hash"]).all()
    assert set(champ["version"]) == {"1"} and set(chall["version"]) == {"2"}
    # The hash is the canonical row's: 41 and 41.0 are the same row.
    hashes = champ["row_hash"].tolist()
    assert hashes[:4] == [row_hash(r) for r in ROWS] and hashes[4] == hashes[0]
    expected = local_proba(stack, "forest_b", ROWS)
    got = np.array([list(p.values()) for p in chall["probabilities"].iloc[:4]])
    assert np.allclose(got, expected, rtol=0, atol=1e-12)
    assert chall["predicted"].iloc[:4].tolist() == expected.argmax(axis=1).tolist()
    assert (df["latency_ms"] > 0).all() and str(df["ts"].dt.tz) == "UTC"
    # The read API's filters.
    assert len(read_predictions(path, alias="challenger")) == len(ROWS) + 1
    assert len(read_predictions(path, since=start - 1)) == n
    assert len(read_predictions(path, since=time.time() + 60)) == 0


def _alive(pid: int) -> bool:
    """Is ``pid`` a running process (a zombie, exited but not reaped, is not)?"""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.mark.slow
def test_worker_process_is_gone_after_the_service_stops(
    stack: dict, make_settings: Callable
) -> None:
    settings = make_settings()
    register(stack, settings, "forest_a", "champion")
    register(stack, settings, "forest_b", "challenger")
    with serving(settings) as client:
        worker = client.get("/readyz").json()["worker"]
        pid = worker["pid"]
        assert worker["alive"] and pid != os.getpid() and _alive(pid)
        assert worker["challenger_loaded"] == "2"
        assert client.post("/predict", json=ROWS).status_code == 200
    # The service's shutdown stopped (and reaped) it: no orphan left behind.
    assert not _alive(pid)


@pytest.mark.slow
def test_killed_worker_is_restarted_counted_and_logs_both_models(
    stack: dict, make_settings: Callable
) -> None:
    settings = make_settings()
    register(stack, settings, "forest_a", "champion")
    register(stack, settings, "forest_b", "challenger")
    path = settings.root / settings.serving.log_path

    def logged(request_id: str) -> pd.DataFrame | None:
        df = read_predictions(path)
        df = df[df["request_id"] == request_id]
        return df if len(df) == 2 * len(ROWS) else None

    with serving(settings) as client:
        old = client.get("/readyz").json()["worker"]["pid"]
        first = client.post("/predict", json=ROWS).json()["request_id"]
        wait_for(lambda: logged(first), what="the first request in the log")
        os.kill(old, signal.SIGKILL)
        worker = wait_for(
            lambda: (
                w
                if (w := client.get("/readyz").json()["worker"])["pid"] != old
                and w["alive"]
                and w["challenger_loaded"] == "2"
                else None
            ),
            timeout=60,
            what="a new worker process with the challenger loaded",
        )
        assert worker["restarts"] == 1 and not _alive(old)
        assert metric(scrape(client), "edgeloop_worker_restarts_total") == 1
        # Answers never stopped, and the new worker logs both models again.
        res = client.post("/predict", json=ROWS)
        assert res.status_code == 200
        df = wait_for(lambda: logged(res.json()["request_id"]), what="the log after restart")
        by_alias = {a: g for a, g in df.groupby("alias")}
        assert set(by_alias["champion"]["version"]) == {"1"}
        assert set(by_alias["challenger"]["version"]) == {"2"}
        assert by_alias["champion"]["row_hash"].tolist() == [row_hash(r) for r in ROWS]
        assert by_alias["challenger"]["row_hash"].tolist() == [row_hash(r) for r in ROWS]
        expected = local_proba(stack, "forest_b", ROWS)
        got = np.array([list(p.values()) for p in by_alias["challenger"]["probabilities"]])
        assert np.allclose(got, expected, rtol=0, atol=1e-12)
        wait_for(
            lambda: (
                metric(scrape(client), "edgeloop_predicted_rows_total", alias="challenger")
                >= len(ROWS)
            ),
            what="challenger rows counted by the new worker",
        )
    assert not _alive(worker["pid"])


@pytest.mark.slow
def test_metrics_are_prometheus_text(stack: dict, make_settings: Callable) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    settings = make_settings()
    register(stack, settings, "forest_a", "champion")
    with serving(settings) as client:
        client.post("/predict", json=ROW)
        families = {
            f.name: f.type for f in text_string_to_metric_families(client.get("/metrics").text)
        }
    assert families["edgeloop_requests"] == "counter"
    assert families["edgeloop_predict_latency_seconds"] == "histogram"
    for name in (
        "edgeloop_shadow_agreement",
        "edgeloop_model_errors",
        "edgeloop_shadow_dropped",
        "edgeloop_prediction_log_dropped",
    ):
        assert families[name] == "counter", name
    assert families["edgeloop_model_version"] == "gauge"
    assert families["edgeloop_shadow_healthy"] == "gauge"


def test_the_rows_own_id_is_accepted_and_logged_never_given_to_the_model(
    stack: dict, make_settings: Callable
) -> None:
    settings = make_settings()
    data = yaml.safe_load(settings.source.read_text())
    data["schema"]["id"] = "customer_id"
    settings.source.write_text(yaml.safe_dump(data))
    settings = load_settings(settings.source)
    register(stack, settings, "forest_a", "champion")
    with serving(settings) as client:
        with_ids = [{**r, "customer_id": f"C-{i:04d}"} for i, r in enumerate(ROWS)]
        answer = client.post("/predict", json=with_ids)
        assert answer.status_code == 200, answer.text
        plain = client.post("/predict", json=ROWS)
        assert answer.json()["predictions"] == plain.json()["predictions"]
        stray = client.post("/predict", json={**ROW, "customer_id": "C-1", "colour": "red"})
        assert stray.status_code == 422 and "colour" in stray.json()["error"]
        path = settings.root / settings.serving.log_path
        n = 2 * len(ROWS)
        df = wait_for(
            lambda: d if len(d := read_predictions(path)) == n else None, what=f"{n} log records"
        )
    logged = df.set_index("request_id")
    keys = logged.loc[answer.json()["request_id"], "row_key"].tolist()
    assert keys == [f"C-{i:04d}" for i in range(len(ROWS))]
    assert logged.loc[plain.json()["request_id"], "row_key"].isna().all()


def test_a_log_from_before_the_row_key_column_reads_and_grows_it(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:
        conn.execute(
            "CREATE TABLE predictions (id INTEGER PRIMARY KEY, ts REAL NOT NULL, request_id TEXT"
            " NOT NULL, row INTEGER NOT NULL, row_hash TEXT NOT NULL, alias TEXT NOT NULL, version"
            " TEXT NOT NULL, predicted, probabilities TEXT NOT NULL, latency_ms REAL NOT NULL)"
        )
        conn.execute(
            "INSERT INTO predictions (ts, request_id, row, row_hash, alias, version, predicted,"
            " probabilities, latency_ms) VALUES (1.0, 'r', 0, 'h', 'champion', '1', 0, '{}', 1.0)"
        )
    old = read_predictions(path)
    assert len(old) == 1 and old["row_key"].isna().all()
    plog = PredictionLog(path, max_pending_rows=10, key_field="customer_id")
    plog.start()
    batch = RowBatch([{**ROW, "customer_id": 7}])
    assert plog.submit(
        Entry(2.0, "s", "champion", "1", batch, [0], [[1.0, 0.0, 0.0]], ["0", "1", "2"], 1.0)
    )
    assert plog.flush(10)
    plog.close()
    keys = read_predictions(path)["row_key"]
    assert keys.isna().tolist() == [True, False] and keys.iloc[1] == "7"


def test_prediction_log_is_bounded_and_drops_are_counted(tmp_path: Path) -> None:
    dropped: list[int] = []
    plog = PredictionLog(tmp_path / "p.db", max_pending_rows=3, on_drop=dropped.append)

    def entry(n: int) -> Entry:
        rows = [ROW] * n
        return Entry(
            1.0,
            "r",
            "champion",
            "1",
            RowBatch(rows),
            [0] * n,
            [[1.0, 0.0, 0.0]] * n,
            ["0", "1", "2"],
            1.0,
        )

    # Not started: nothing drains, so the bound is what stops the queue growing.
    assert plog.submit(entry(2)) and not plog.submit(entry(2)) and plog.submit(entry(1))
    assert dropped == [2] and plog.dropped_rows == 2 and plog.pending_rows == 3
    plog.start()
    assert plog.flush(10)
    plog.close()
    df = read_predictions(tmp_path / "p.db")
    assert len(df) == 3 and df["predicted"].tolist() == [0, 0, 0]
    assert read_predictions(tmp_path / "missing.db").empty


def _non_loopback_address() -> str | None:
    """This machine's outward IPv4 address, if it has one (no packet is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("10.255.255.255", 1))
        except OSError:
            return None
        address = s.getsockname()[0]
    return None if address.startswith("127.") else address


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_serve_command_binds_localhost_and_port_in_use_exits_2(
    stack: dict, make_settings: Callable
) -> None:
    settings = make_settings()
    version = register(stack, settings, "forest_a", "champion")
    exe = Path(sys.executable).with_name("edgeloop")
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_HOME"}
    port = _free_port()
    proc = subprocess.Popen(
        [str(exe), "serve", "--port", str(port), "--config", str(settings.source)],
        cwd=settings.root,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:

            def ready() -> bool:
                assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
                with contextlib.suppress(httpx.TransportError):
                    return client.get("/readyz").status_code == 200
                return False

            wait_for(ready, timeout=90, what="edgeloop serve to be ready")
            res = client.post("/predict", json=ROW)
            assert res.status_code == 200 and res.json()["model"]["version"] == version
            worker_pid = client.get("/readyz").json()["worker"]["pid"]
            assert _alive(worker_pid)
        # Bound to loopback only by default: another address of this machine is refused.
        other = _non_loopback_address()
        if other:
            with pytest.raises(OSError):
                socket.create_connection((other, port), timeout=2).close()
        # A second server on the same port: a clear error, exit 2, nothing else started.
        second = subprocess.run(
            [str(exe), "serve", "--port", str(port), "--config", str(settings.source)],
            cwd=settings.root,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert second.returncode == 2, second.stderr
        assert f"port {port}" in second.stderr and "already in use" in second.stderr
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    assert proc.returncode == 0
    # Ctrl-C reached the whole process group; the worker went with the server, not before.
    assert not _alive(worker_pid)
