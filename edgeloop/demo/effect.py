"""The demo's honest measure of the loop: frozen first model, the loop's champion, an oracle.

For each batch, on all its rows with their true labels (the demo knows them; a real project
does not): the accuracy of the first model, frozen; of the champion that scored the batch when
it arrived; and of an *oracle*, the same training code (``pipelines.train.split`` + ``fit``,
same config and seeds) fitted on every true label available before the batch arrived
(reference plus all rows of the earlier batches). The oracle is what a loop that labels
everything would reach; the frozen model is what no loop reaches.

Recovery = sum over drifted batches of rows * (loop - frozen) / rows * (oracle - frozen): the
share of the gap the loop closed. A batch is *drifted* when the oracle beats the frozen model
by at least ``DRIFT_GAP`` (on undrifted batches the gap is noise and the ratio meaningless).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from edgeloop.core.config import Settings
from edgeloop.core.keys import BATCH_ID, ROW_ID
from edgeloop.core.layout import Layout
from pipelines import train as tr

#: Oracle minus frozen accuracy from which a batch counts as drifted (for recovery).
DRIFT_GAP = 0.05


@dataclass(frozen=True)
class BatchEffect:
    """One batch: accuracies on all its rows and the labels the loop spent on it."""

    batch: str
    rows: int
    frozen: float
    loop: float
    oracle: float
    labels: int
    loop_version: str


@dataclass(frozen=True)
class LoopEffect:
    """Every batch, the recovery on the drifted ones and the share of rows the loop labeled."""

    batches: list[BatchEffect]
    recovery: float | None
    labeled_share: float
    drifted_batches: list[str]
    drift_gap: float = DRIFT_GAP

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def oracle_accuracy(
    settings: Settings, dataset: pd.DataFrame, truth: dict[str, Any], batch_id: str
) -> float:
    """Accuracy on ``batch_id`` of the pipeline fitted on every true label before it arrived.

    ``dataset`` is the project's dataset (reference + accepted batches, in arrival order);
    ``truth`` maps row id to true label for the production rows.
    """
    schema = settings.data_schema
    batches = list(dict.fromkeys(dataset[BATCH_ID].astype(str)))
    earlier = set(batches[: batches.index(batch_id)]) if batch_id in batches else set(batches)
    known = dataset[dataset[BATCH_ID].astype(str).isin(earlier)].copy()
    filled = known[ROW_ID].astype(str).map(truth)
    known[schema.target] = known[schema.target].where(known[schema.target].notna(), filled)
    split = tr.split(known, schema, settings.training, settings.seeds.split)
    model = tr.fit(split.train, schema, settings.training, settings.seeds.train)
    rows = dataset[dataset[BATCH_ID].astype(str) == batch_id]
    y = rows[ROW_ID].astype(str).map(truth).to_numpy()
    return float((model.predict(tr.features(rows, schema)) == y).mean())


def loop_effect(batches: list[BatchEffect], drift_gap: float = DRIFT_GAP) -> LoopEffect:
    """Recovery on the drifted batches (None when no batch drifted) and the labeled share."""
    drifted = [b for b in batches if b.oracle - b.frozen >= drift_gap]
    gap = sum(b.rows * (b.oracle - b.frozen) for b in drifted)
    gained = sum(b.rows * (b.loop - b.frozen) for b in drifted)
    rows = sum(b.rows for b in batches)
    return LoopEffect(
        batches=batches,
        recovery=gained / gap if gap > 0 else None,
        labeled_share=sum(b.labels for b in batches) / rows if rows else 0.0,
        drifted_batches=[b.batch for b in drifted],
        drift_gap=drift_gap,
    )


def write_loop_effect(settings: Settings, effect: LoopEffect) -> Path:
    """``reports/loop-effect.json`` (read by ``edgeloop status`` and the weekly review)."""
    path = Layout.of(settings).loop_effect
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(effect.to_dict(), indent=2) + "\n")
    tmp.replace(path)
    return path
