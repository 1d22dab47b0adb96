"""Shadow evaluation on the batch path: champion vs challenger on the same labeled rows.

It compares the two models on rows that (a) both scored after the challenger was deployed and
(b) have ground truth in the dataset; its decision and evidence are an MLflow run in
``<project>-shadow`` (``latest_evaluation`` finds it again for ``promote``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import mlflow
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from edgeloop.batch.scoring import read_scores
from edgeloop.core import keys
from edgeloop.core.config import Settings
from edgeloop.core.errors import EdgeloopError
from edgeloop.core.keys import CHALLENGER, CHAMPION, SHADOW_EXPERIMENT
from edgeloop.data.store import DataStore
from edgeloop.tracking.registry import Registry
from edgeloop.tracking.store import ensure_experiment
from pipelines import shadow as sh
from pipelines.evaluate import slice_mask
from pipelines.train import target


def _deployed_at(reg: Registry, version: str) -> str:
    """When ``version`` became challenger (rows scored before that are not shadow evidence)."""
    moves = [e for e in reg.history(CHALLENGER) if e.version == version]
    return moves[-1].at if moves else ""


@dataclass(frozen=True)
class ShadowReport:
    """A shadow evaluation: the comparison, the decision and where it is recorded."""

    champion: str
    challenger: str
    comparison: dict[str, Any]
    promote: bool
    summary: str
    run_id: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def shadow_evaluate(settings: Settings) -> ShadowReport:
    """Compare champion and challenger on labeled rows both scored in shadow; log an MLflow run."""
    reg = Registry(settings)
    aliases = reg.aliases()
    if CHAMPION not in aliases or CHALLENGER not in aliases:
        raise EdgeloopError(
            f"shadow evaluation needs a champion and a challenger in {reg.name} (aliases: {aliases or 'none'})"
        )
    champ_v, chall_v = aliases[CHAMPION], aliases[CHALLENGER]
    schema = settings.data_schema
    data = DataStore(settings).load_dataset()
    labeled = data[data[schema.target].notna()]
    a = read_scores(settings, champ_v)[[keys.ROW_ID, "predicted"]].rename(
        columns={"predicted": "champion"}
    )
    b = read_scores(settings, chall_v)[[keys.ROW_ID, "predicted"]].rename(
        columns={"predicted": "challenger"}
    )
    # Only rows that arrived after the challenger was deployed: it may have trained on earlier ones.
    deployed = _deployed_at(reg, chall_v)
    ledger_times = {e.batch_id: e.at for e in DataStore(settings).ledger()}
    rows = labeled.merge(a, on=keys.ROW_ID).merge(b, on=keys.ROW_ID)
    if deployed:
        rows = rows[rows[keys.BATCH_ID].map(lambda bid: ledger_times.get(bid, "") >= deployed)]
    y = target(rows, schema)
    cmp = sh.compare(
        y,
        rows["champion"].to_numpy(),
        rows["challenger"].to_numpy(),
        classes=list(schema.classes),
        settings=settings.shadow,
        seed=settings.seeds.split,
        slice_masks={sl.name: slice_mask(rows, sl) for sl in settings.training.slices},
    )
    decision = sh.decide(cmp, settings.shadow, settings.gates)
    exp = ensure_experiment(settings, SHADOW_EXPERIMENT)
    with mlflow.start_run(experiment_id=exp, run_name=f"shadow v{chall_v} vs v{champ_v}") as run:
        mlflow.set_tags(
            {
                keys.TAG_KIND: keys.KIND_SHADOW,
                keys.TAG_CHAMPION_VERSION: champ_v,
                keys.TAG_CHALLENGER_VERSION: chall_v,
                keys.TAG_DECISION: "promote" if decision.promote else "keep",
                keys.TAG_DEPLOYED_AT: deployed,
                keys.TAG_NOTE: decision.summary(),
            }
        )
        mlflow.log_params({"min_samples": settings.shadow.min_samples, "metric": settings.shadow.metric,
                           "confidence": settings.shadow.confidence, "bootstrap_samples": settings.shadow.bootstrap_samples})  # fmt: skip
        numbers = {
            k: v for k, v in cmp.to_dict().items() if isinstance(v, (int, float)) and v is not None
        }
        mlflow.log_metrics({k: float(v) for k, v in numbers.items() if not math.isnan(float(v))})
        mlflow.log_dict(
            {"comparison": cmp.to_dict(), "decision": decision.reasons}, "shadow/evaluation.json"
        )
        run_id = run.info.run_id
    return ShadowReport(
        champ_v, chall_v, cmp.to_dict(), decision.promote, decision.summary(), run_id
    )


def latest_evaluation(settings: Settings, champion: str, challenger: str) -> Run | None:
    """The newest shadow-evaluation run for exactly this pair of versions."""
    exp = ensure_experiment(settings, SHADOW_EXPERIMENT)
    runs = MlflowClient().search_runs(
        [exp],
        filter_string=(
            f"tags.`{keys.TAG_CHAMPION_VERSION}` = '{champion}' and "
            f"tags.`{keys.TAG_CHALLENGER_VERSION}` = '{challenger}'"
        ),
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return runs[0] if runs else None
