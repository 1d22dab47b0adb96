"""Promotion and rollback: the ``champion`` alias moves only on shadow evidence (or a recorded
override), and one command gives it back.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from edgeloop.batch.shadow import latest_evaluation, shadow_evaluate
from edgeloop.core import keys
from edgeloop.core.config import Settings
from edgeloop.core.errors import EdgeloopError, PromotionGateError
from edgeloop.core.keys import CHALLENGER, CHAMPION, PREVIOUS
from edgeloop.tracking.registry import Registry


@dataclass(frozen=True)
class Promotion:
    """The outcome of ``promote``: the evidence it read, and what moved."""

    champion: str
    challenger: str
    evidence_run_id: str
    evidence: str
    promoted: bool
    forced: bool = False
    new_champion: str = ""
    previous_champion: str = ""

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        if not self.promoted:  # what a refused promotion has always reported
            for k in ("forced", "new_champion", "previous_champion"):
                out.pop(k)
        return out


@dataclass(frozen=True)
class Rollback:
    """The outcome of ``rollback``: the champion now, and the version rolled back from."""

    champion: str
    rolled_back: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def promote(settings: Settings, *, force: bool = False, reason: str = "") -> Promotion:
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
        decision = evidence.data.tags.get(keys.TAG_DECISION) == "promote"
        note = evidence.data.tags.get(keys.TAG_NOTE, "")
    else:
        evidence_id, decision, note = "", False, "no shadow evaluation"
    refused = Promotion(champ_v, chall_v, evidence_id, note, promoted=False)
    if not decision and not force:
        raise PromotionGateError(f"not promoted: {note}", refused)
    why = (
        f"forced by a human: {reason}" if force else f"shadow evidence (run {evidence_id}): {note}"
    )
    if reason and not force:
        why = f"{reason}; {why}"
    if champ_v:
        reg.move_alias(PREVIOUS, champ_v, f"was champion before v{chall_v}")
    reg.move_alias(CHAMPION, chall_v, why)
    reg.remove_alias(CHALLENGER, f"promoted to champion: {why}")
    return Promotion(
        champ_v,
        chall_v,
        evidence_id,
        note,
        promoted=True,
        forced=force,
        new_champion=chall_v,
        previous_champion=champ_v,
    )


def rollback(settings: Settings, reason: str = "") -> Rollback:
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
    return Rollback(champion=previous, rolled_back=current)
