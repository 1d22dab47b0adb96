"""Batch scoring with champion and challenger, shadow evaluation, promotion and rollback.

Scores live in ``scores/<batch_id>/<alias>-v<version>.parquet`` (git-ignored, derived data:
any of it can be recomputed from the dataset and the registry). Shadow evaluation compares the
two models on rows that (a) both scored after the challenger was deployed and (b) have ground
truth in the dataset; its decision and evidence are an MLflow run in ``<project>-shadow``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeloop.core.config import Settings
from edgeloop.core.errors import EdgeloopError, PromotionGateError
from edgeloop.tracking.registry import CHALLENGER, CHAMPION, PREVIOUS, Registry

if TYPE_CHECKING:
    import pandas as pd

SHADOW_EXPERIMENT = "shadow"


def scores_root(settings: Settings) -> Path:
    return settings.root / "scores"


def score_batches(settings: Settings, batch_ids: list[str] | None = None) -> list[dict[str, Any]]:
    """Score accepted batches with the champion and, in shadow, the challenger.

    Each (batch, model version) is scored once: files already written are kept as they are.
    Returns one entry per file written.
    """
    from edgeloop.data.store import DataStore
    from pipelines.score import score_frame

    reg = Registry(settings)
    aliases = reg.aliases()
    if CHAMPION not in aliases:
        return []
    store = DataStore(settings)
    data = store.load_dataset()
    batches = [b for b in data["batch_id"].unique() if b != "reference"]
    if batch_ids:
        batches = [b for b in batches if b in set(batch_ids)]
    written = []
    models: dict[str, Any] = {}
    for alias in (CHAMPION, CHALLENGER):
        if alias not in aliases:
            continue
        version = aliases[alias]
        for batch in batches:
            path = scores_root(settings) / str(batch) / f"{alias}-v{version}.parquet"
            if path.exists():
                continue
            if version not in models:
                models[version] = reg.load(version)
            rows = data[data["batch_id"] == batch]
            scored = score_frame(models[version], rows, settings.data_schema)
            scored["alias"], scored["version"] = alias, version
            path.parent.mkdir(parents=True, exist_ok=True)
            scored.to_parquet(path, index=False)
            written.append(
                {"batch_id": batch, "alias": alias, "version": version, "rows": len(scored)}
            )
    return written


def read_scores(settings: Settings, version: str) -> pd.DataFrame:
    """Every batch score written by one model version."""
    import pandas as pd

    files = sorted(scores_root(settings).glob(f"*/*-v{version}.parquet"))
    if not files:
        return pd.DataFrame(columns=["row_id", "batch_id", "predicted"])
    return pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)


def _deployed_at(reg: Registry, version: str) -> str:
    """When ``version`` became challenger (rows scored before that are not shadow evidence)."""
    moves = [e for e in reg.history(CHALLENGER) if e.version == version]
    return moves[-1].at if moves else ""


@dataclass
class ShadowReport:
    """A shadow evaluation: the comparison, the decision and where it is recorded."""

    champion: str
    challenger: str
    comparison: dict[str, Any]
    promote: bool
    summary: str
    run_id: str = ""

    def to_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return asdict(self)


def shadow_evaluate(settings: Settings) -> ShadowReport:
    """Compare champion and challenger on labeled rows both scored in shadow; log an MLflow run."""
    import mlflow

    from edgeloop.data.store import DataStore
    from edgeloop.tracking.store import ensure_experiment
    from pipelines import shadow as sh
    from pipelines.evaluate import slice_mask
    from pipelines.train import target

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
    a = read_scores(settings, champ_v)[["row_id", "predicted"]].rename(
        columns={"predicted": "champion"}
    )
    b = read_scores(settings, chall_v)[["row_id", "predicted"]].rename(
        columns={"predicted": "challenger"}
    )
    # Only rows that arrived after the challenger was deployed: it may have trained on earlier ones.
    deployed = _deployed_at(reg, chall_v)
    ledger_times = {e.batch_id: e.at for e in DataStore(settings).ledger()}
    rows = labeled.merge(a, on="row_id").merge(b, on="row_id")
    if deployed:
        rows = rows[rows["batch_id"].map(lambda bid: ledger_times.get(bid, "") >= deployed)]
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
                "edgeloop.kind": "shadow-evaluation",
                "edgeloop.champion_version": champ_v,
                "edgeloop.challenger_version": chall_v,
                "edgeloop.decision": "promote" if decision.promote else "keep",
                "edgeloop.deployed_at": deployed,
                "mlflow.note.content": decision.summary(),
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


def latest_evaluation(settings: Settings, champion: str, challenger: str) -> Any | None:
    """The newest shadow-evaluation run for exactly this pair of versions."""
    from mlflow.tracking import MlflowClient

    from edgeloop.tracking.store import ensure_experiment

    exp = ensure_experiment(settings, SHADOW_EXPERIMENT)
    runs = MlflowClient().search_runs(
        [exp],
        filter_string=(
            f"tags.`edgeloop.champion_version` = '{champion}' and "
            f"tags.`edgeloop.challenger_version` = '{challenger}'"
        ),
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return runs[0] if runs else None


def promote(settings: Settings, *, force: bool = False, reason: str = "") -> dict[str, Any]:
    """Move ``champion`` to the challenger when the shadow evidence says so (or ``force``).

    The old champion keeps the alias ``previous-champion`` for ``rollback``. Raises
    ``PromotionGateError`` (with the evidence) when the rule does not hold.
    """
    reg = Registry(settings)
    aliases = reg.aliases()
    if CHALLENGER not in aliases:
        raise EdgeloopError(
            f"no challenger to promote in {reg.name} (aliases: {aliases or 'none'})"
        )
    champ_v, chall_v = aliases.get(CHAMPION, ""), aliases[CHALLENGER]
    evidence = latest_evaluation(settings, champ_v, chall_v) if champ_v else None
    if evidence is None and champ_v and not force:
        report = shadow_evaluate(settings)
        evidence_id, decision, note = report.run_id, report.promote, report.summary
    elif evidence is not None:
        evidence_id = evidence.info.run_id
        decision = evidence.data.tags.get("edgeloop.decision") == "promote"
        note = evidence.data.tags.get("mlflow.note.content", "")
    else:
        evidence_id, decision, note = "", False, "no shadow evaluation"
    result = {
        "champion": champ_v,
        "challenger": chall_v,
        "evidence_run_id": evidence_id,
        "evidence": note,
    }
    if not decision and not force:
        raise PromotionGateError(f"not promoted: {note}", {**result, "promoted": False})
    why = (
        f"forced by a human: {reason}" if force else f"shadow evidence (run {evidence_id}): {note}"
    )
    if reason and not force:
        why = f"{reason}; {why}"
    if champ_v:
        reg.move_alias(PREVIOUS, champ_v, f"was champion before v{chall_v}")
    reg.move_alias(CHAMPION, chall_v, why)
    reg.remove_alias(CHALLENGER, f"promoted to champion: {why}")
    return {
        **result,
        "promoted": True,
        "forced": force,
        "new_champion": chall_v,
        "previous_champion": champ_v,
    }


def rollback(settings: Settings, reason: str = "") -> dict[str, Any]:
    """Give ``champion`` back to ``previous-champion`` (and keep the rolled-back one as previous)."""
    reg = Registry(settings)
    aliases = reg.aliases()
    if PREVIOUS not in aliases:
        raise EdgeloopError(f"nothing to roll back to: {reg.name} has no '{PREVIOUS}' alias")
    current, previous = aliases.get(CHAMPION, ""), aliases[PREVIOUS]
    why = f"rollback: {reason}" if reason else "rollback"
    reg.move_alias(CHAMPION, previous, why)
    if current:
        reg.move_alias(PREVIOUS, current, f"rolled back from v{current}")
    return {"champion": previous, "rolled_back": current}
