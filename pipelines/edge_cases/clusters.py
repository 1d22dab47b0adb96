"""The cluster cap's clusters: a seeded k-means on a sample of the candidates' standardised
numeric features, in a few lines of NumPy."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from pipelines.edge_cases.arrow import _Column, _excluded_at

#: Candidates sampled per cluster to fit the clusters: ~32 rows per centre place the centres well
#: enough for a cap, and k-means on 256 rows (8 clusters) costs ~2.5 ms, where reading every
#: candidate's features (~40 % of a 1M-row batch) would cost more than the rest of the selection.
SAMPLE_PER_CLUSTER = 32


@dataclass(frozen=True, eq=False)  # eq=False: arrays and frames do not compare as a bool
class _Clusters:
    """k-means centres in standardised feature space, the batch's numeric features they are
    read from, and how to standardise a row."""

    # A column selection of the batch's frame: under pandas' copy-on-write a view, no copy.
    # Made once per selection: pandas rebuilds a column selection on each `iloc[rows, cols]`.
    numeric: pd.DataFrame
    mean: np.ndarray
    scale: np.ndarray
    centers: np.ndarray

    def assign(self, rows: np.ndarray) -> np.ndarray:
        """The nearest centre of each row (positions in the batch)."""
        # Read the rows in batch order (kinder to the caches than priority order), then put
        # the labels back in the caller's order.
        order = np.argsort(rows, kind="stable")
        z = _standardise(_matrix(self.numeric, rows[order]), self.mean, self.scale)
        labels = np.empty(len(rows), dtype=np.int64)
        labels[order] = _nearest(z, self.centers)
        return labels


def _fit_clusters(
    features: pd.DataFrame,
    idx: np.ndarray,
    ids: _Column,
    exclude: set[str] | frozenset[str],
    n_clusters: int,
    seed: int,
) -> _Clusters | None:
    """k-means (k-means++ start, Lloyd iterations) on a seeded sample of the candidates that are
    not excluded, on their numeric features standardised with the sample's mean and std.

    Why not scikit-learn: on this sample (256 rows x 64 features, 8 clusters) its MiniBatchKMeans
    took ~90 ms of CPU and KMeans(n_init=1) ~20 ms, mostly per-call set-up and BLAS threads; these
    few NumPy lines take ~2.5 ms, the whole selection of a 1M-row batch ~30 ms.
    None when there is no numeric feature or no candidate left to sample.
    """
    columns = [
        j
        for j, dtype in enumerate(features.dtypes)
        if pd.api.types.is_numeric_dtype(dtype)  # booleans too, as 0/1
    ]
    if not columns:
        return None
    rng = np.random.default_rng(seed)
    size = SAMPLE_PER_CLUSTER * n_clusters
    sample = idx if len(idx) <= size else np.sort(rng.choice(idx, size, replace=False))
    if exclude:
        sample = sample[~_excluded_at(ids, sample, exclude)]
    if len(sample) == 0:
        return None
    numeric = features.iloc[:, columns]
    x = _matrix(numeric, sample)
    seen = ~np.isnan(x)
    counts = seen.sum(axis=0)
    mean = np.where(seen, x, 0.0).sum(axis=0) / np.maximum(counts, 1)
    var = np.where(seen, (x - mean) ** 2, 0.0).sum(axis=0) / np.maximum(counts, 1)
    # A constant column carries no distance: scale 1 leaves it at 0 for every row.
    scale = np.where(var > 0, np.sqrt(var), 1.0)
    z = _standardise(x, mean, scale)
    return _Clusters(numeric, mean, scale, _kmeans(z, n_clusters, rng))


def _matrix(numeric: pd.DataFrame, rows: np.ndarray) -> np.ndarray:
    """The numeric features of ``rows`` as float64 (missing: NaN); only those rows are read."""
    x: np.ndarray = numeric.iloc[rows].to_numpy(dtype=np.float64, na_value=np.nan)
    return x


def _standardise(x: np.ndarray, mean: np.ndarray, scale: np.ndarray) -> np.ndarray:
    z: np.ndarray = (x - mean) / scale
    z[np.isnan(z)] = 0.0  # a missing value sits at the mean
    return z


def _nearest(z: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """Index of the nearest centre per row (ties: the lower index)."""
    # |z - c|^2 = |z|^2 - 2 z.c + |c|^2, and |z|^2 is the same for every centre of a row.
    # einsum, not `@`: a BLAS product this size wakes OpenBLAS's threads, which then spin on
    # the other core; measured, that doubled the CPU time of the whole selection on 2 cores.
    d: np.ndarray = (centers * centers).sum(axis=1) - 2.0 * np.einsum("ij,kj->ik", z, centers)
    nearest: np.ndarray = d.argmin(axis=1)
    return nearest


def _kmeans(z: np.ndarray, k: int, rng: np.random.Generator, max_iter: int = 10) -> np.ndarray:
    """Centres: k-means++ start, then Lloyd iterations until no row changes cluster (at most
    ``max_iter``: a cap needs coarse clusters, not the last digit of the centres).

    Fewer than ``k`` centres when the sample has fewer distinct rows (k-means++ stops when every
    row sits on a centre): identical rows always share one cluster.
    """
    centers = [z[int(rng.integers(len(z)))]]
    d2 = ((z - centers[0]) ** 2).sum(axis=1)
    while len(centers) < k:
        total = float(d2.sum())
        if not total > 0:
            break
        cum = np.cumsum(d2)
        j = int(np.searchsorted(cum, rng.random() * total, side="right"))
        if j >= len(z) or d2[j] <= 0:  # rounding at the top end: the last row off-centre
            j = int(np.flatnonzero(d2 > 0)[-1])
        centers.append(z[j])
        d2 = np.minimum(d2, ((z - z[j]) ** 2).sum(axis=1))
    c = np.array(centers)
    labels = _nearest(z, c)
    for _ in range(max_iter):
        # Per-centre means: rows grouped by label, one reduceat (no BLAS, see _nearest).
        order = np.argsort(labels, kind="stable")
        counts = np.bincount(labels, minlength=len(c))
        filled = np.flatnonzero(counts)  # an emptied centre stays where it was
        starts = np.r_[0, np.cumsum(counts)[:-1]][filled]
        c[filled] = np.add.reduceat(z[order], starts, axis=0) / counts[filled, None]
        new = _nearest(z, c)
        if np.array_equal(new, labels):
            break
        labels = new
    return c


def _labels(model: _Clusters | None, rows: np.ndarray) -> np.ndarray:
    """Cluster ids of ``rows`` (-1 for every row when there are no clusters)."""
    if model is None:
        return np.full(len(rows), -1, dtype=np.int64)
    return model.assign(rows)
