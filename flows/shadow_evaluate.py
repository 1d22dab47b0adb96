"""Prefect flow: compare champion and challenger on shadow-scored rows (docs/loop.md, the
promotion rule)."""

from __future__ import annotations

from typing import Any

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from edgeloop.batch.scoring import score_batches
from edgeloop.batch.shadow import ShadowReport, shadow_evaluate
from edgeloop.core.config import Settings, load_settings


@task(name="score-batches", cache_policy=NO_CACHE)
def score_task(settings: Settings) -> list[dict[str, Any]]:
    """Bring every batch's shadow scores up to date first."""
    return score_batches(settings)


@task(name="compare-models", cache_policy=NO_CACHE)
def compare_task(settings: Settings) -> ShadowReport:
    """The paired comparison, the promotion rule, the MLflow run."""
    return shadow_evaluate(settings)


def _num(v: Any, spec: str = "+.4f") -> str:
    return "n/a" if v is None else format(v, spec)


@flow(name="shadow-evaluate")
def shadow_evaluate_flow(config: str = "edgeloop.yaml") -> dict[str, Any]:
    """Evaluate the challenger against the champion on the rows both scored (the promotion rule).

    Args:
        config: Path of the edgeloop.yaml to use.
    """
    settings = load_settings(config)
    score_task(settings)
    report = compare_task(settings)
    c = report.comparison
    head = {"promote": "promote", "keep": "keep champion"}.get(report.state, "need more labels")
    lines = [
        f"# Shadow: v{report.challenger} vs champion v{report.champion}",
        "",
        f"**{head}** — {report.summary}",
        "",
        f"- rule: {c.get('rule')}; rows scored by both: {c.get('n_rows')}, labeled: {c['n']},"
        f" labeled disagreements: {c.get('n_disagreements')}, agreement: {c['agreement']}",
        f"- {c['metric']} delta {_num(c['delta'])}"
        + (" (in the training target's std, clipped to ±1)" if c["metric"] == "abs_error" else "")
        + f"; {'absolute-error' if c['metric'] == 'abs_error' else 'accuracy'} confidence sequence"
        f" [{_num(c.get('cs_low'))}, {_num(c.get('cs_high'))}] (valid at every look)",
    ]
    if report.state == "need_more":
        lines.append(f"- labels needed: {report.labels_needed}, days: {_num(report.days_needed, '.1f')}"
                     f" at {_num(report.labels_per_day, '.1f')} labels/day")  # fmt: skip
    lines.append(f"- MLflow run: `{report.run_id}`")
    create_markdown_artifact(key="shadow-evaluation", markdown="\n".join(lines) + "\n")
    return report.to_dict()
