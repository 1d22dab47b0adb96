"""Models load with the types edgeloop's code trusts (edgeloop/tracking/trusted.py), not the ones
the artifact lists: a model asking for more is refused, naming the type. Real MLflow store."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.pipeline import Pipeline

from edgeloop.core.config import load_settings
from edgeloop.core.errors import RegistryError, TrainingError
from edgeloop.models.training import _refuse_untrusted, _trusted_types
from edgeloop.tracking import trusted
from tests.conftest import new_project, small_reference

UNTRUSTED = f"{__name__}.Passthrough"


class Passthrough(TransformerMixin, BaseEstimator):  # type: ignore[misc]  # sklearn is untyped
    """A harmless transformer of a type edgeloop does not trust."""

    def fit(self, X: Any, y: Any = None) -> Passthrough:
        return self

    def transform(self, X: Any) -> Any:
        return X


def test_the_allow_list_names_real_types_per_family() -> None:
    names = set(trusted.COMMON)
    for family in trusted.FAMILIES:
        names.update(family.estimators + family.needs)
    functions = {"sklearn.utils.validation.check_array"}  # trusted by name, as skops checks them
    for name in sorted(names):
        module, _, cls = name.rpartition(".")
        found = getattr(importlib.import_module(module), cls)
        assert callable(found) if name in functions else isinstance(found, type), name
    tree = "sklearn.tree._tree.Tree"
    forest = trusted.trusted_for(["sklearn.ensemble._forest.RandomForestClassifier"])
    linear = trusted.trusted_for(["sklearn.linear_model._logistic.LogisticRegression"])
    assert tree in forest and tree not in linear
    assert "pipelines.train.TimeFeatures" in linear and "numpy.dtype" in linear
    assert "sklearn.neighbors._kd_tree.KDTree" in trusted.trusted_for(
        ["sklearn.neighbors._classification.KNeighborsClassifier"]
    )


@pytest.fixture(scope="module")
def logged(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A project; a normal model, one holding an untrusted type, one in cloudpickle, registered."""
    import mlflow
    import mlflow.sklearn

    from edgeloop.tracking.registry import Registry
    from edgeloop.tracking.store import ensure_experiment
    from pipelines.train import features, fit

    root = new_project(tmp_path_factory.mktemp("trusted"))
    settings = load_settings(root / "edgeloop.yaml")
    schema = settings.data_schema
    training = settings.training.model_copy(update={"params": {"n_estimators": 5}})
    normal = fit(small_reference(), schema, training, 0)
    untrusted = Pipeline([("passthrough", Passthrough()), ("model", normal)])
    exp = ensure_experiment(settings, "training")
    registry = Registry(settings)
    versions: dict[str, str] = {}
    for key, model, fmt, extra in (
        ("normal", normal, "skops", []),
        # The artifact lists its extra type (MLflow checks it loads with it): it must not count.
        ("untrusted", untrusted, "skops", [UNTRUSTED]),
        ("pickled", normal, "cloudpickle", []),
    ):
        with mlflow.start_run(experiment_id=exp, run_name=key) as run:
            info = mlflow.sklearn.log_model(
                model,
                name="model",
                serialization_format=fmt,
                skops_trusted_types=[*_trusted_types(model), *extra] if fmt == "skops" else None,
                pip_requirements=["scikit-learn"],
            )
        versions[key], _ = registry.register(info.model_uri, run.info.run_id, key, "test")
    x = features(small_reference(20, seed=5), schema)
    return {"settings": settings, "versions": versions, "normal": normal, "x": x, "root": root}


def test_registry_refuses_a_model_asking_for_an_untrusted_type(logged: dict[str, Any]) -> None:
    import mlflow.artifacts

    from edgeloop.tracking.registry import Registry

    registry = Registry(logged["settings"])
    v = logged["versions"]["untrusted"]
    # The artifact does ask for it...
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=registry.model_uri(v)))
    flavor = yaml.safe_load((local / "MLmodel").read_text())["flavors"]["sklearn"]
    assert UNTRUSTED in flavor["skops_trusted_types"]
    # ... and is refused, by version and by alias, naming the type.
    with pytest.raises(RegistryError) as refused:
        registry.load(v)
    message = str(refused.value)
    assert message.startswith(f"model v{v} needs skops type '{UNTRUSTED}'"), message
    assert "does not trust" in message and "not loaded" in message
    with pytest.raises(RegistryError, match=f"@untrusted needs skops type '{UNTRUSTED}'"):
        registry.load("untrusted")


def test_registry_refuses_a_pickled_model(logged: dict[str, Any]) -> None:
    from edgeloop.tracking.registry import Registry

    v = logged["versions"]["pickled"]
    with pytest.raises(RegistryError, match=f"model v{v} is saved as cloudpickle"):
        Registry(logged["settings"]).load(v)


def test_a_normal_model_loads_and_predicts_the_same(logged: dict[str, Any]) -> None:
    from mlflow.tracking import MlflowClient

    from edgeloop.serving.loading import load_version
    from edgeloop.tracking.registry import Registry

    settings, x = logged["settings"], logged["x"]
    v = logged["versions"]["normal"]
    expected = logged["normal"].predict_proba(x)
    model = Registry(settings).load(v)
    np.testing.assert_array_equal(model.predict_proba(x), expected)
    served = load_version(settings, MlflowClient(), "normal", v)
    np.testing.assert_array_equal(served.model.predict_proba(x), expected)
    with pytest.raises(RegistryError, match=f"needs skops type '{UNTRUSTED}'"):
        load_version(settings, MlflowClient(), "untrusted", logged["versions"]["untrusted"])


def test_retrain_refuses_to_log_a_model_edgeloop_would_not_load(logged: dict[str, Any]) -> None:
    _refuse_untrusted("sklearn.ensemble.RandomForestClassifier", logged["normal"])  # no error
    untrusted = Pipeline([("passthrough", Passthrough()), ("model", logged["normal"])])
    with pytest.raises(TrainingError) as refused:
        _refuse_untrusted("my.Estimator", untrusted)
    assert str(refused.value).startswith(
        f"the model of training.estimator 'my.Estimator' needs skops type '{UNTRUSTED}'"
    )
    assert "it was not logged" in str(refused.value)


@pytest.mark.parametrize(
    ("estimator", "params"),
    [
        ("sklearn.ensemble.RandomForestRegressor", {"n_estimators": 5}),
        ("sklearn.ensemble.ExtraTreesRegressor", {"n_estimators": 5}),
        ("sklearn.ensemble.HistGradientBoostingRegressor", {"max_iter": 10}),
        ("sklearn.ensemble.GradientBoostingRegressor", {"n_estimators": 5}),
    ],
)
def test_regressor_pipelines_need_only_trusted_types(estimator: str, params: dict) -> None:
    """Every type of a fitted regression pipeline is trusted (a full skops dump says which it
    holds), and it loads back with that list, predicting the same."""
    import skops.io

    from edgeloop.core.config import TrainingSettings
    from pipelines.train import features, fit
    from tests.conftest import housing_reference, housing_schema

    schema = housing_schema()
    data = housing_reference(200)
    if estimator.endswith("GradientBoostingRegressor") and "Hist" not in estimator:
        data = data.assign(age=data["age"].fillna(40.0))  # it refuses missing values
    model = fit(data, schema, TrainingSettings(estimator=estimator, params=params), 0)
    assert trusted.untrusted_in_model(model) == []
    blob = skops.io.dumps(model)
    loaded = skops.io.loads(blob, trusted=trusted.trusted_for_model(model))
    x = features(data.head(20), schema)
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))
    # The regressors' families are told apart from the classifiers' by their own names.
    names = set(trusted.trusted_for([f"{type(model[-1]).__module__}.{type(model[-1]).__name__}"]))
    tree = "sklearn.tree._tree.Tree"
    assert (tree in names) == ("Hist" not in estimator)
