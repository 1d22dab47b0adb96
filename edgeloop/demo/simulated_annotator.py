"""The demo's SIMULATED ANNOTATOR: the one stand-in edgeloop's demo uses.

It answers queued tasks from held-back ground truth (``incoming/demo/truth/``), after a
configurable delay and with a configurable error rate, and writes its answers in Label Studio's
export format, so they go through exactly the import path real annotators' labels take.
It is never used outside the demo.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

SIMULATED_ANNOTATOR = "simulated-annotator (demo stand-in)"


def answer_tasks(
    tasks: list[dict[str, Any]],
    truth: dict[str, Any],
    *,
    classes: list[Any],
    delay_hours: float,
    error_rate: float,
    seed: int,
) -> list[dict[str, Any]]:
    """Label Studio export items for ``tasks`` (task-import JSON) using ``truth[row_id]``.

    A wrong label (another class, uniformly) is given with probability ``error_rate``; each
    answer is timestamped ``delay_hours`` after the task surfaced.
    """
    rng = np.random.default_rng(seed)
    out = []
    for t in tasks:
        row_id = t["data"]["row_id"]
        if row_id not in truth:
            continue
        label = truth[row_id]
        if rng.random() < error_rate:
            label = rng.choice([c for c in classes if str(c) != str(label)])
        surfaced = datetime.fromisoformat(t["data"]["surfaced_at"])
        pred = t["predictions"][0]["result"][0]
        out.append(
            {
                "data": t["data"],
                "annotations": [
                    {
                        "completed_by": SIMULATED_ANNOTATOR,
                        "created_at": (surfaced + timedelta(hours=delay_hours)).isoformat(),
                        "was_cancelled": False,
                        "result": [{**pred, "value": {"choices": [str(label)]}}],
                    }
                ],
            }
        )
    return out


def write_answers(path: Path, answers: list[dict[str, Any]]) -> Path:
    path.write_text(json.dumps(answers, indent=1, default=str), encoding="utf-8")
    return path
