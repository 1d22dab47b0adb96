"""The types edgeloop lets skops load: fixed here, per estimator family, never the artifact's.

MLflow stores the ``skops_trusted_types`` given at save time in the model's ``MLmodel`` file and
trusts them again at load, so a crafted artifact could list any type. edgeloop ignores that
list: a model loads with skops's own defaults (scikit-learn's public estimators, primitives)
plus ``COMMON`` plus the extra types of the estimator families found in it, and is refused,
naming the type, if it asks for anything else. Pickle and cloudpickle artifacts can run any
code when loaded: they are refused too (retrain logs skops only).

A family is recognised by its estimator's type in the file; the artifact can only pick among
the families listed here. ``EDGELOOP_EXTRA_TRUSTED_TYPES`` (comma-separated type names) adds
types for a deployment that reviewed them (a custom estimator of its own, or a test's); it is
read from the environment of the process that loads, never from the artifact.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from zipfile import BadZipFile, ZipFile

import skops.io
from mlflow.models import Model
from skops.io.exceptions import UntrustedTypesFoundException

from edgeloop.core.errors import RegistryError

EXTRA_ENV = "EDGELOOP_EXTRA_TRUSTED_TYPES"

#: What every edgeloop pipeline holds (``pipelines.train.build_pipeline``), whatever the estimator.
COMMON: tuple[str, ...] = (
    "sklearn.pipeline.Pipeline",
    "sklearn.compose._column_transformer.ColumnTransformer",
    "sklearn.preprocessing._encoders.OneHotEncoder",
    "sklearn.preprocessing._encoders.OrdinalEncoder",
    "sklearn.impute._base.SimpleImputer",
    "pipelines.train.TimeFeatures",
    "numpy.dtype",
)


@dataclass(frozen=True)
class Family:
    """Estimators that need the same types beyond skops's defaults."""

    name: str
    estimators: tuple[str, ...]
    needs: tuple[str, ...]


_TREE = "sklearn.tree._tree.Tree"
FAMILIES: tuple[Family, ...] = (
    Family(
        "trees",
        (
            "sklearn.ensemble._forest.RandomForestClassifier",
            "sklearn.ensemble._forest.ExtraTreesClassifier",
            "sklearn.tree._classes.DecisionTreeClassifier",
            "sklearn.tree._classes.ExtraTreeClassifier",
            # Regression forests: the same Tree, holding leaf values instead of class counts.
            "sklearn.ensemble._forest.RandomForestRegressor",
            "sklearn.ensemble._forest.ExtraTreesRegressor",
            "sklearn.tree._classes.DecisionTreeRegressor",
            "sklearn.tree._classes.ExtraTreeRegressor",
        ),
        (_TREE,),
    ),
    Family(
        "gradient-boosting",
        (
            "sklearn.ensemble._gb.GradientBoostingClassifier",
            "sklearn.ensemble._gb.GradientBoostingRegressor",
        ),
        (_TREE,),
    ),
    # skops does not trust TreePredictor by default: its node indices are not bounds-checked,
    # so a crafted file can crash the process. Trusted here for models edgeloop trained; the
    # registry is the project's own store.
    Family(
        "hist-gradient-boosting",
        (
            "sklearn.ensemble._hist_gradient_boosting.gradient_boosting.HistGradientBoostingClassifier",
            "sklearn.ensemble._hist_gradient_boosting.gradient_boosting.HistGradientBoostingRegressor",
        ),
        (
            "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
            # With categorical features the estimator keeps its own encoder, whose numeric
            # branch is a partial of check_array (skops checks the function by name too).
            "functools.partial",
            "sklearn.utils.validation.check_array",
        ),
    ),
    Family("logistic-regression", ("sklearn.linear_model._logistic.LogisticRegression",), ()),
    Family(
        "k-neighbors",
        ("sklearn.neighbors._classification.KNeighborsClassifier",),
        (
            "sklearn.neighbors._kd_tree.KDTree",
            "sklearn.neighbors._ball_tree.BallTree",
            "sklearn.metrics._dist_metrics.EuclideanDistance64",
            "sklearn.metrics._dist_metrics.ManhattanDistance64",
            "sklearn.metrics._dist_metrics.MinkowskiDistance64",
            "sklearn.metrics._dist_metrics.ChebyshevDistance64",
        ),
    ),
    # Not scikit-learn types, so not trusted by skops by default: the estimators, their Booster
    # (state: the model as LightGBM's own text format) and the OrderedDict of its params.
    Family(
        "lightgbm",
        ("lightgbm.sklearn.LGBMClassifier", "lightgbm.sklearn.LGBMRegressor"),
        (
            "lightgbm.sklearn.LGBMClassifier",
            "lightgbm.sklearn.LGBMRegressor",
            "lightgbm.basic.Booster",
            "collections.OrderedDict",
        ),
    ),
)


def _extra() -> list[str]:
    return [t.strip() for t in os.environ.get(EXTRA_ENV, "").split(",") if t.strip()]


def trusted_for(type_names: Iterable[str]) -> list[str]:
    """The types trusted for a model holding ``type_names``: common, its families', extras."""
    present = set(type_names)
    allowed = set(COMMON) | set(_extra())
    for family in FAMILIES:
        if present.intersection(family.estimators):
            allowed.update(family.needs)
    return sorted(allowed)


def _type_name(obj: Any) -> str:
    cls = type(obj)
    return f"{cls.__module__}.{cls.__name__}"


def _parts(obj: Any) -> Iterator[str]:
    """``obj``'s type and its steps' (pipelines and column transformers, nested)."""
    yield _type_name(obj)
    for attr in ("steps", "transformers"):
        for item in getattr(obj, attr, None) or []:
            if isinstance(item, tuple) and len(item) >= 2:
                yield from _parts(item[1])


def trusted_for_model(model: Any) -> list[str]:
    """What to pass as ``skops_trusted_types`` when logging ``model`` (a pipeline or estimator)."""
    return trusted_for(_parts(model))


def untrusted_in_model(model: Any) -> list[str]:
    """The types of ``model`` that edgeloop would refuse to load (a full dump: slow, for errors)."""
    found = skops.io.get_untrusted_types(data=skops.io.dumps(model))
    return sorted(set(found) - set(trusted_for_model(model)))


def _types_in(node: Any) -> Iterator[str]:
    """Every ``module.Class`` named in a skops schema (plain JSON: nothing is constructed)."""
    if isinstance(node, dict):
        if isinstance(node.get("__module__"), str) and isinstance(node.get("__class__"), str):
            yield f"{node['__module__']}.{node['__class__']}"
        for value in node.values():
            yield from _types_in(value)
    elif isinstance(node, list):
        for value in node:
            yield from _types_in(value)


def refusal(what: str, type_names: list[str], outcome: str = "it was not loaded") -> str:
    """The error for a model asking for ``type_names`` (not trusted here)."""
    named = ", ".join(repr(t) for t in type_names) or "an unknown type"
    plural = len(type_names) > 1
    return (
        f"{what} needs skops type{'s' if plural else ''} {named}, which edgeloop does not"
        f" trust; {outcome}. Use a supported estimator (edgeloop/tracking/trusted.py lists"
        f" them), or, after reviewing {'them' if plural else 'it'}, list"
        f" {'them' if plural else 'it'} in ${EXTRA_ENV}"
    )


def load_model(model_dir: str | Path, what: str) -> Any:
    """The scikit-learn model of a local MLflow model directory, loaded with the fixed list.

    ``what`` names the model in errors (``model v3``). Raises ``RegistryError`` for a model
    that is not skops or asks for a type not trusted here.
    """
    directory = Path(model_dir).resolve()
    conf = Model.load(str(directory)).flavors.get("sklearn")
    if conf is None:
        raise RegistryError(f"{what} is not a scikit-learn model: edgeloop cannot load it")
    fmt = conf.get("serialization_format", "pickle")
    if fmt != "skops":
        raise RegistryError(
            f"{what} is saved as {fmt}, which can run any code when loaded: edgeloop loads only"
            " skops models (as retrain logs them); retrain it"
        )
    path = (directory / str(conf.get("pickled_model", ""))).resolve()
    if not path.is_file() or not path.is_relative_to(directory):
        raise RegistryError(f"{what}: its model file is missing from {directory}")
    try:
        with ZipFile(path) as archive:
            allowed = trusted_for(_types_in(json.loads(archive.read("schema.json"))))
        return skops.io.load(path, trusted=allowed)
    except UntrustedTypesFoundException:
        refused = sorted(set(skops.io.get_untrusted_types(file=path)) - set(allowed))
        raise RegistryError(refusal(what, refused)) from None
    except (BadZipFile, KeyError, ValueError) as exc:
        raise RegistryError(f"{what}: {path.name} is not a readable skops file ({exc})") from None
