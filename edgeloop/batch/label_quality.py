"""Suspect labels: after each label import, which labeled rows look mislabeled.

``check_label_quality`` scores the dataset's labeled rows with ``pipelines.label_quality``
(every annotated row, then a seeded sample of the others up to
``annotation.suspect_max_rows``) and writes one Parquet file per check under
``data/label_quality/`` (versioned with the dataset; the latest file is the current state):
per flagged row its id, batch, label source, the given and the suggested class with their
out-of-sample probabilities, the quality score, when it was first flagged and its status:

* ``suspect``: open; with ``annotation.exclude_suspects`` the label is left out of training
  and the holdout (``DataStore.load_training_dataset``) and the row is queued for review;
* ``confirmed``: an answer for the row was imported after it was first flagged (it has more
  answers than ``labels_at_flag``: a person looked again); it is kept, whatever the model
  thinks, and never flagged again.

The file is created in the caller's data change (``track``: a killed import leaves none).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd

from edgeloop.batch.annotation import now_iso, read_labels
from edgeloop.core import keys
from edgeloop.core.config import Settings
from edgeloop.core.layout import Layout
from edgeloop.data.lock import atomic_path
from edgeloop.data.store import DataStore
from pipelines.label_quality import score_labels

#: Columns of a label-quality file.
COLUMNS = [
    "row_id",
    "batch_id",
    "label_source",
    "given",
    "suggested",
    "p_given",
    "p_suggested",
    "quality",
    "flagged_at",
    "labels_at_flag",
    "status",
]


@dataclass(frozen=True)
class LabelQuality:
    """One check: rows scored, suspects open (new this time), confirmed, the file written."""

    scored: int
    suspects: int
    new_suspects: int
    confirmed: int
    folds: int
    path: str = ""
    skipped: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        if self.skipped:
            return f"label quality: not checked ({self.skipped})"
        return (
            f"label quality: {self.suspects} suspect labels of {self.scored} scored"
            f" ({self.new_suspects} new, {self.confirmed} confirmed by a later label)"
        )


def read_suspects(settings: Settings) -> pd.DataFrame:
    """The latest label-quality file (every flagged row, suspect or confirmed)."""
    latest = DataStore(settings).label_quality()
    return pd.DataFrame(columns=COLUMNS) if latest is None else latest


def _rows_to_score(settings: Settings, data: pd.DataFrame) -> pd.DataFrame:
    target = settings.data_schema.target
    labeled = data[data[target].notna()]
    cap = settings.annotation.suspect_max_rows
    if len(labeled) <= cap:
        return labeled
    annotated = labeled["label_source"] == "annotation"
    rest = labeled[~annotated]
    room = max(cap - int(annotated.sum()), 0)
    sample = rest.sample(n=min(room, len(rest)), random_state=settings.seeds.split)
    return pd.concat([labeled[annotated], sample]).sort_index()


def check_label_quality(settings: Settings) -> LabelQuality:
    """Score the labeled rows, carry earlier flags forward, write the new state (see module)."""
    ann = settings.annotation
    if not ann.suspect_labels:
        return LabelQuality(0, 0, 0, 0, ann.suspect_folds, skipped="annotation.suspect_labels off")
    data = DataStore(settings).load_dataset()
    rows = _rows_to_score(settings, data)
    if len(rows) < max(2 * ann.suspect_folds, 20):
        return LabelQuality(len(rows), 0, 0, 0, ann.suspect_folds, skipped="too few labels")
    found = score_labels(
        rows, settings.data_schema, settings.training, folds=ann.suspect_folds,
        seed=settings.seeds.train,
    )  # fmt: skip
    stamp = now_iso()
    earlier = read_suspects(settings).reindex(columns=COLUMNS).set_index("row_id")
    labels = read_labels(settings)
    answers = labels.groupby(labels["row_id"].astype("str")).size()
    info = rows.set_index(rows[keys.ROW_ID].astype("str"))
    flagged = found.rows[found.rows["suspect"]].copy()
    # Rows flagged before: an answer imported after the first flag (more answers for the row
    # than when it was flagged) confirms them.
    old = earlier.reindex(earlier.index.union(flagged["row_id"]))
    first = old["flagged_at"].astype("object")
    count = answers.reindex(old.index).fillna(0).astype("int64")
    at_flag = pd.to_numeric(old["labels_at_flag"], errors="coerce")
    confirmed = first.notna() & at_flag.notna() & (count > at_flag)
    confirmed |= old["status"].eq("confirmed").fillna(False).astype(bool)
    out = flagged.set_index("row_id").reindex(old.index)
    for col in ("given", "suggested", "p_given", "p_suggested", "quality"):
        out[col] = out[col].where(out[col].notna(), old[col])
    out["flagged_at"] = first.where(first.notna(), stamp)
    out["labels_at_flag"] = at_flag.where(at_flag.notna(), count).astype("int64")
    out["status"] = np.where(confirmed, "confirmed", "suspect")
    # A row no longer flagged and never confirmed drops out (its label now looks right).
    keep = confirmed | out.index.isin(flagged["row_id"])
    out = out[keep]
    out["batch_id"] = (
        info[keys.BATCH_ID].reindex(out.index).astype("str").to_numpy()
        if keys.BATCH_ID in info
        else ""
    )
    out["label_source"] = info["label_source"].reindex(out.index).astype("str").to_numpy()
    out = out.reset_index(names="row_id").reindex(columns=COLUMNS)
    folder = Layout.of(settings).label_quality
    path = folder / f"{len(list(folder.glob('*.parquet'))) + 1:06d}.parquet"
    with atomic_path(path) as tmp:
        out.astype({"given": "str", "suggested": "str"}).to_parquet(tmp, index=False)
    open_now = out["status"] == "suspect"
    before = set(earlier.index[earlier["status"] == "suspect"])
    return LabelQuality(
        scored=len(rows),
        suspects=int(open_now.sum()),
        new_suspects=int((open_now & ~out["row_id"].isin(before)).sum()),
        confirmed=int((~open_now).sum()),
        folds=ann.suspect_folds,
        path=str(path.relative_to(settings.root)),
    )
