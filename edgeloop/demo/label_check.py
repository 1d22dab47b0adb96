"""How well the label-quality check finds the simulated annotator's wrong answers (demo only).

The demo's SIMULATED ANNOTATOR (the stand-in) answers from held-back truth with a known error
rate, so the demo can measure what no real project can: of the rows it answered wrong (first
answer different from the truth), how many the check flagged (recall), and of the rows the
check ever flagged, how many were wrong (precision).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import pandas as pd

from edgeloop.batch.annotation import read_labels
from edgeloop.core.config import Settings
from edgeloop.core.layout import Layout
from pipelines.label_quality import precision_recall


@dataclass(frozen=True)
class FlaggingQuality:
    """Flagged rows against the annotator's wrong first answers, over the annotated rows."""

    annotated: int
    wrong: int
    flagged: int
    caught: int
    precision: float
    recall: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def line(self) -> str:
        def pct(v: float) -> str:
            return "n/a" if v != v else f"{v:.2f}"

        return (
            f"suspect labels: {self.flagged} of {self.annotated} annotated rows flagged;"
            f" {self.caught} of the simulated annotator's {self.wrong} wrong answers caught"
            f" (precision {pct(self.precision)}, recall {pct(self.recall)})"
        )


def flagging_quality(settings: Settings, truth: dict[str, Any]) -> FlaggingQuality:
    """Every row ever flagged (any label-quality file) against ``truth`` (row id -> class)."""
    labels = read_labels(settings)
    first = labels.drop_duplicates("row_id", keep="first").set_index("row_id")["label"]
    first = first[first.index.isin(truth)]
    files = sorted(Layout.of(settings).label_quality.glob("*.parquet"))
    ever = set()
    for f in files:
        ever |= set(pd.read_parquet(f, columns=["row_id"])["row_id"].astype(str))
    wrong = [str(first[r]) != str(truth[r]) for r in first.index]
    flagged = [r in ever for r in first.index]
    precision, recall = precision_recall(flagged, wrong)
    return FlaggingQuality(
        annotated=len(first),
        wrong=int(sum(wrong)),
        flagged=int(sum(flagged)),
        caught=int(sum(w and f for w, f in zip(wrong, flagged, strict=True))),
        precision=precision,
        recall=recall,
    )
