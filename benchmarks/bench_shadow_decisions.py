"""Shadow decisions under repeated looks: false promotions and labels to promote, new rule vs today's.

A simulated champion and challenger with known accuracies score ``--batches`` batches of
``--rows`` rows; each batch's ``--budget`` labels go to edge cases (the champion's least
confident rows and the disagreements, highest priority first, as ``pipelines.edge_cases``
ranks them: inclusion probability 1) and, for the new rule, ``--evaluation-share`` of the budget
to an evaluation sample drawn with ``pipelines.edge_cases.inclusion_probabilities`` (weights as
``comparison_weights`` computes them). The decision is checked after every batch, and a
promotion is final. **Goal:** false promotion rate at most 0.05 over the looks when the
challenger is equal or worse. Prints one JSON object last.

New rule: ``pipelines.shadow`` (Horvitz–Thompson paired estimate, confidence sequence, ``decide``
with the default ``ShadowSettings``). Today's rule (the baseline, reimplemented here): a paired
bootstrap 95 % interval of the accuracy delta on the labeled edge cases only (the whole budget),
promote when its lower bound is above 0 and at least ``min_samples`` rows are labeled (200, the
default, and 50, the demo's config).

Each simulated row has a shared difficulty ``g`` and a model-specific part ``h``: a model is
right with probability ``sigmoid(a + 4 g + h)`` (its confidence; ``a`` set for the target
accuracy; the models then disagree on about 20 % of the rows and exactly one is right on about
14 %); both wrong means the same wrong class half of the time (three classes).

The arm ``new_evidence_one_look_interval`` decides on the new rule's evidence with a fixed-sample
95 % normal interval at each look (what repeated looks do to a test that is not sequential).
The arm ``new`` draws the evaluation sample disagreements first, as shipped
(``disagreements_first_probabilities``; with accuracy ``d_i = 0`` exactly where the models agree,
so a label there adds nothing to the comparison); the arm ``new_sample_on_all_rows`` is the same
rule with the sample drawn from every row not chosen as an edge case (the first design).
"""

from __future__ import annotations

import json
import math
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import _harness
import numpy as np

sys.path.insert(0, str(_harness.ROOT))

from edgeloop.core.config import GateSettings, ShadowSettings
from pipelines.edge_cases import disagreements_first_probabilities, inclusion_probabilities
from pipelines.shadow import (
    RULE_SEQUENTIAL,
    ShadowComparison,
    confidence_sequence,
    decide,
    horvitz_thompson,
)

SHARED, OWN = 4.0, 1.0
BOOTSTRAP = 2000
BASELINE_MIN_SAMPLES = (200, 50)
#: The new rule's evidence with a fixed-sample 95 % interval at each look: the peeking problem.
FIXED = "new_evidence_one_look_interval"


def _sigmoid(x: np.ndarray) -> np.ndarray:
    out: np.ndarray = 1.0 / (1.0 + np.exp(-x))
    return out


def intercept(accuracy: float) -> float:
    """``a`` with E[sigmoid(a + s Z)] = accuracy, Z standard normal, s² = SHARED² + OWN²."""
    x, w = np.polynomial.hermite_e.hermegauss(80)
    w = w / w.sum()
    s = math.hypot(SHARED, OWN)
    lo, hi = -10.0, 10.0
    for _ in range(80):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if float(w @ _sigmoid(mid + s * x)) < accuracy else (lo, mid)
    return (lo + hi) / 2


@dataclass
class Batch:
    d: np.ndarray  # challenger right - champion right
    disagree: np.ndarray
    conf_a: np.ndarray
    conf_b: np.ndarray


def traffic(rng: np.random.Generator, rows: int, a_champ: float, a_chall: float) -> Batch:
    g = rng.normal(size=rows)
    pa = _sigmoid(a_champ + SHARED * g + OWN * rng.normal(size=rows))
    pb = _sigmoid(a_chall + SHARED * g + OWN * rng.normal(size=rows))
    ra, rb = rng.random(rows) < pa, rng.random(rows) < pb
    same_wrong = rng.random(rows) < 0.5
    disagree = (ra != rb) | (~ra & ~rb & ~same_wrong)
    return Batch(rb.astype(float) - ra.astype(float), disagree, pa, pb)


def edge_cases(b: Batch, k: int) -> np.ndarray:
    """The ``k`` flagged rows of highest priority (2 per strategy hit + 1 - margin), as a mask."""
    low = b.conf_a < 0.6
    margin = np.clip(1.5 * b.conf_a - 0.5, 0.0, 1.0)  # top-1 minus top-2 of three classes
    small = margin < 0.2
    hits = low.astype(int) + small + b.disagree
    priority = np.where(hits > 0, 2.0 * hits + 1.0 - margin, -np.inf)
    order = np.argsort(-priority, kind="stable")[:k]
    mask = np.zeros(len(b.d), dtype=bool)
    mask[order[np.isfinite(priority[order])]] = True
    return mask


def weights(b: Batch) -> np.ndarray:
    """``comparison_weights`` on the simulated probabilities (the rest of the mass spread 60/40)."""
    pa_b, pb_a = 0.6 * (1 - b.conf_a), 0.6 * (1 - b.conf_b)
    one_right = ((b.conf_a + pb_a) + (b.conf_b + pa_b)) / 2
    gap = np.abs(b.conf_a - np.where(b.disagree, pb_a, b.conf_b))
    w: np.ndarray = np.maximum(np.where(b.disagree, np.sqrt(np.clip(one_right, 0, 1)), 0.0), gap)
    return w


@dataclass
class Arm:
    """One rule's running evidence and its first promotion."""

    z: list[np.ndarray] = field(default_factory=list)
    labels: int = 0
    disagreements: int = 0
    counts: np.ndarray = field(default_factory=lambda: np.zeros(3, dtype=np.int64))  # -1, 0, +1
    promoted_at: int | None = None
    promoted_labels: int | None = None


def new_rule_look(arm: Arm, shadow: ShadowSettings, gates: GateSettings) -> bool:
    z = np.concatenate(arm.z)
    cs = confidence_sequence(z, alpha=1 - shadow.confidence, tuned_rows=shadow.cs_tuned_rows)
    cmp = ShadowComparison(
        n=arm.labels, metric="accuracy", champion=math.nan, challenger=math.nan, delta=cs.mean,
        ci_low=math.nan, ci_high=math.nan, confidence=shadow.confidence, agreement=math.nan,
        mcnemar_p=math.nan, only_champion_right=0, only_challenger_right=0,
        rule=RULE_SEQUENTIAL, n_rows=len(z), n_labeled=arm.labels,
        n_disagreements=arm.disagreements, cs_low=cs.low, cs_high=cs.high, cs_std=cs.std,
    )  # fmt: skip
    return decide(cmp, shadow, gates).promote


def baseline_look(arm: Arm, min_samples: int, rng: np.random.Generator) -> bool:
    n = int(arm.counts.sum())
    if n < min_samples:
        return False
    # The paired bootstrap of a mean of {-1, 0, +1}: a multinomial draw of the three counts.
    draws = rng.multinomial(n, arm.counts / n, size=BOOTSTRAP)
    deltas = (draws[:, 2] - draws[:, 0]) / n
    return bool(np.quantile(deltas, 0.025) > 0)


def _new_rule_batch(arm: Arm, b: Batch, edge: np.ndarray, q: np.ndarray, rng: np.random.Generator) -> None:  # fmt: skip
    drawn = ~edge & (rng.random(len(b.d)) < q)
    labeled = edge | drawn
    arm.z.append(horvitz_thompson(b.d, np.where(edge, 1.0, q), labeled))
    arm.labels += int(labeled.sum())
    arm.disagreements += int((labeled & b.disagree).sum())


def _median(values: list[int | None]) -> float | None:
    """The median with None as +infinity; None when more than half never got there."""
    m = statistics.median([math.inf if v is None else v for v in values])
    return None if math.isinf(m) else m


def simulate(opts: Any, chall_acc: float, rng: np.random.Generator) -> dict[str, Any]:
    shadow, gates = ShadowSettings(), GateSettings()
    a_champ, a_chall = intercept(opts.champion_accuracy), intercept(chall_acc)
    eval_size = round(opts.evaluation_share * opts.budget)
    names = [
        "new",
        "new_sample_on_all_rows",
        FIXED,
        *(f"today_min{m}" for m in BASELINE_MIN_SAMPLES),
    ]
    arms: dict[str, list[Arm]] = {name: [] for name in names}
    final_new, final_edge, truth = [], [], []
    for _ in range(opts.sims):
        run = {name: Arm() for name in names}
        all_d: list[np.ndarray] = []
        for t in range(1, opts.batches + 1):
            b = traffic(rng, opts.rows, a_champ, a_chall)
            all_d.append(b.d)
            # New rule: edge cases (pi 1) + the evaluation sample (pi q_i) of the other rows.
            edge = edge_cases(b, opts.budget - eval_size)
            w = weights(b)
            q = disagreements_first_probabilities(w, ~edge, b.disagree, eval_size, opts.uniform_share)  # fmt: skip
            _new_rule_batch(run["new"], b, edge, q, rng)
            fixed, new = run[FIXED], run["new"]
            fixed.z, fixed.labels = new.z, new.labels  # the same evidence, another decision
            q = inclusion_probabilities(w, ~edge, eval_size, opts.uniform_share)
            _new_rule_batch(run["new_sample_on_all_rows"], b, edge, q, rng)
            # Today's rule: the whole budget on edge cases, their plain mean.
            today = edge_cases(b, opts.budget)
            counts = np.bincount((b.d[today] + 1).astype(int), minlength=3)
            for name, arm in run.items():
                if name.startswith("today"):
                    arm.counts += counts
                    arm.labels += int(today.sum())
                    hit = baseline_look(arm, int(name.removeprefix("today_min")), rng)
                elif name == FIXED:
                    z = np.concatenate(arm.z)
                    hit = bool(z.mean() - 1.96 * z.std() / math.sqrt(len(z)) > 0)
                else:
                    hit = new_rule_look(arm, shadow, gates)
                if arm.promoted_at is None and hit:
                    arm.promoted_at, arm.promoted_labels = t, arm.labels
        for name, arm in run.items():
            arms[name].append(arm)
        final_new.append(float(np.concatenate(run["new"].z).mean()))
        c = run[names[-1]].counts
        final_edge.append(float((c[2] - c[0]) / c.sum()) if c.sum() else 0.0)
        truth.append(float(np.concatenate(all_d).mean()))
    out: dict[str, Any] = {"challenger_accuracy": round(chall_acc, 4)}
    for name, runs in arms.items():
        out[name] = {
            "promotion_rate": round(sum(r.promoted_at is not None for r in runs) / len(runs), 4),
            # Over every run, one that never promoted counting as "later than the last batch".
            "median_batches_to_promote": _median([r.promoted_at for r in runs]),
            "median_labels_to_promote": _median([r.promoted_labels for r in runs]),
        }
    out["estimate_of_the_delta"] = {
        "true_mean_over_traffic": round(statistics.fmean(truth), 4),
        "new_horvitz_thompson_mean": round(statistics.fmean(final_new), 4),
        "today_edge_cases_only_mean": round(statistics.fmean(final_edge), 4),
    }
    return out


def main() -> int:
    parser = _harness.arguments(__doc__)
    parser.add_argument("--sims", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--rows", type=int, default=150, help="rows per batch")
    parser.add_argument("--budget", type=int, default=25, help="labels per batch")
    parser.add_argument("--evaluation-share", type=float, default=0.2)
    parser.add_argument("--uniform-share", type=float, default=0.5)
    parser.add_argument("--champion-accuracy", type=float, default=0.80)
    parser.add_argument("--better", type=float, default=0.05, help="the better challenger's lift")
    parser.add_argument("--worse", type=float, default=0.03, help="the worse challenger's drop")
    _harness.add_output(parser, "shadow_decisions.json", "the new rule's false promotion rate is above 0.05")  # fmt: skip
    opts = parser.parse_args()
    started = time.perf_counter()
    rng = np.random.default_rng(opts.seed)
    acc = opts.champion_accuracy
    scenarios = {
        "equal": simulate(opts, acc, rng),
        "worse": simulate(opts, acc - opts.worse, rng),
        "better": simulate(opts, acc + opts.better, rng),
    }
    rules = [
        k
        for k in scenarios["equal"]
        if isinstance(scenarios["equal"][k], dict) and "promotion_rate" in scenarios["equal"][k]
    ]
    summary = {
        rule: {
            "false_promotion_rate_equal": scenarios["equal"][rule]["promotion_rate"],
            "false_promotion_rate_worse": scenarios["worse"][rule]["promotion_rate"],
            "promotion_rate_better": scenarios["better"][rule]["promotion_rate"],
            "median_labels_to_promote_better": scenarios["better"][rule]["median_labels_to_promote"],
            "median_batches_to_promote_better": scenarios["better"][rule]["median_batches_to_promote"],
        }
        for rule in rules
    }  # fmt: skip
    worst = max(summary["new"]["false_promotion_rate_equal"], summary["new"]["false_promotion_rate_worse"])  # fmt: skip
    out = {
        **_harness.stamp("shadow_decisions"),
        "sims": opts.sims,
        "seed": opts.seed,
        "setup": {k: v for k, v in vars(opts).items() if k not in ("out", "check", "sims", "seed")},
        "goal": "false promotion rate <= 0.05 over all looks (equal or worse challenger)",
        "goal_met": worst <= 0.05,
        "summary": summary,
        "scenarios": scenarios,
        "seconds": round(time.perf_counter() - started, 1),
    }
    _harness.write_results(opts.out, out)
    print(json.dumps({k: v for k, v in out.items() if k != "scenarios"}, default=str))
    return 1 if opts.check and not out["goal_met"] else 0


if __name__ == "__main__":
    sys.exit(main())
