"""Synthetic batches for scale work: seeded, fast, shaped like a real tabular stream.

``synthetic_frame`` wraps ``sklearn.datasets.make_classification`` (or, with
``task="regression"``, ``make_regression``) and adds one categorical column, ``region``, so a
batch exercises both numeric and string expectations. The same seed always gives the same frame
(values, dtypes and row order); 1M rows take a couple of seconds.

Columns, in order: ``f00`` .. ``f19`` (float64), ``region`` (pandas ``str``: north, south,
east, west) and, when labeled, ``label`` (int64 classes ``0 .. n_classes - 1``) or, for
regression, ``value`` (float64: a linear function of half the features plus noise and an
offset per region, so the categorical column matters).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

    from edgeloop.core.config import SchemaSettings

TARGET = "label"
REGRESSION_TARGET = "value"
REGION = "region"
REGIONS = ("north", "south", "east", "west")
WRITABLE_SUFFIXES = (".parquet", ".pq", ".csv")


def feature_names(n_features: int = 20) -> list[str]:
    """``f00``, ``f01``, ... (zero-padded to at least two digits)."""
    width = max(2, len(str(n_features - 1)))
    return [f"f{i:0{width}d}" for i in range(n_features)]


def synthetic_schema(n_features: int = 20, *, n_classes: int = 3) -> SchemaSettings:
    """The schema of ``synthetic_frame(..., n_features=n_features, n_classes=n_classes)``."""
    from edgeloop.core.config import SchemaSettings

    return SchemaSettings(
        features=[*feature_names(n_features), REGION],
        categorical=[REGION],
        target=TARGET,
        classes=list(range(n_classes)),
    )


def _informative(n_features: int, n_classes: int) -> tuple[int, int, int]:
    """(n_informative, n_redundant, n_clusters_per_class) that make_classification accepts."""
    # make_classification needs n_classes * n_clusters_per_class <= 2 ** n_informative.
    clusters = 2
    needed = math.ceil(math.log2(n_classes * clusters))
    if needed > n_features:
        clusters = 1
        needed = max(1, math.ceil(math.log2(n_classes)))
    if needed > n_features:
        raise ValueError(f"{n_classes} classes need at least {needed} features, got {n_features}")
    informative = min(n_features, max(needed, n_features // 2))
    redundant = min(n_features - informative, n_features // 5)
    return informative, redundant, clusters


def synthetic_frame(
    rows: int,
    *,
    seed: int,
    n_features: int = 20,
    n_classes: int = 3,
    labeled: bool = True,
    task: str = "classification",
) -> pd.DataFrame:
    """A seeded batch: numeric features, a ``region`` column and ``label`` (or ``value``).

    ``labeled=False`` drops the target, as production batches arrive. The same arguments
    always give an identical frame.
    """
    import numpy as np
    import pandas as pd

    if rows < 1:
        raise ValueError(f"rows must be at least 1, got {rows}")
    if task == "regression":
        return _regression_frame(rows, seed=seed, n_features=n_features, labeled=labeled)
    if task != "classification":
        raise ValueError(f"task must be 'classification' or 'regression', got {task!r}")
    from sklearn.datasets import make_classification

    if n_classes < 2:
        raise ValueError(f"n_classes must be at least 2, got {n_classes}")
    informative, redundant, clusters = _informative(n_features, n_classes)
    # shuffle=False and our own permutation: sklearn's row shuffle costs ~2 s at 1M rows,
    # a single numpy take ~0.3 s; without any shuffle rows would be sorted by class.
    x, y = make_classification(
        n_samples=rows,
        n_features=n_features,
        n_informative=informative,
        n_redundant=redundant,
        n_classes=n_classes,
        n_clusters_per_class=clusters,
        shuffle=False,
        random_state=seed,
    )
    rng = np.random.default_rng(seed)
    order = rng.permutation(rows)
    x = x.take(order, axis=0)[:, rng.permutation(n_features)]
    y = y.take(order)
    # Region shares are drawn from the seed too, so two seeds give differently mixed batches.
    shares = rng.dirichlet(np.full(len(REGIONS), 4.0))
    codes = rng.choice(len(REGIONS), size=rows, p=shares)
    df = pd.DataFrame(x, columns=feature_names(n_features))
    df[REGION] = pd.Categorical.from_codes(codes, categories=list(REGIONS)).astype("str")
    if labeled:
        df[TARGET] = y.astype(np.int64)
    return df


def _regression_frame(rows: int, *, seed: int, n_features: int, labeled: bool) -> pd.DataFrame:
    import numpy as np
    import pandas as pd
    from sklearn.datasets import make_regression

    x, y = make_regression(
        n_samples=rows,
        n_features=n_features,
        n_informative=max(1, n_features // 2),
        noise=10.0,
        shuffle=False,
        random_state=seed,
    )
    rng = np.random.default_rng(seed)
    x = x[:, rng.permutation(n_features)]
    shares = rng.dirichlet(np.full(len(REGIONS), 4.0))
    codes = rng.choice(len(REGIONS), size=rows, p=shares)
    df = pd.DataFrame(x, columns=feature_names(n_features))
    df[REGION] = pd.Categorical.from_codes(codes, categories=list(REGIONS)).astype("str")
    if labeled:
        offsets = np.array([0.0, 40.0, -25.0, 15.0])
        df[REGRESSION_TARGET] = (y + offsets[codes]).astype(np.float64)
    return df


def write_synthetic(path: Path, rows: int, seed: int, *, task: str = "classification") -> Path:
    """Write ``synthetic_frame(rows, seed=seed, task=task)`` as Parquet (``.parquet``/``.pq``)
    or CSV."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in WRITABLE_SUFFIXES:
        raise ValueError(
            f"{path}: unsupported extension {suffix!r}; use one of {WRITABLE_SUFFIXES}"
        )
    df = synthetic_frame(rows, seed=seed, task=task)
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".csv":
        df.to_csv(path, index=False)
    else:
        df.to_parquet(path, index=False)
    return path
