"""What does edge-case selection cost on a 1M-row scored batch?

In one process, on one seeded synthetic batch scored the way ``pipelines.score.score_frame``
scores it (the real function, with a stand-in model returning seeded Dirichlet probabilities
over 10 classes: ``row_id``, ``batch_id``, ``predicted``, ``confidence``, ``margin``, ``p_*``),
written to Parquet and read back as ``edgeloop.batch.annotation.surface`` reads it:

* ``select``: ``pipelines.edge_cases.select`` with every strategy on: low confidence, small
  margin, disagreement with a challenger's predictions, the demo's two failure-trigger rules on
  64 pixel features + ``scanner``, budget 1000 with ``max_class_share`` 0.4 and the cluster cap
  at its defaults (``n_clusters`` 8, ``max_cluster_share`` 0.25, ``cluster_seed`` 0), and an
  exclusion set of 50k ids, half of them in the batch;
* ``bare_topk`` (the goal's baseline): a bare NumPy top-k of the same scores, least confidence
  on the probability matrix of the same frame: ``P = scores[p_cols].to_numpy()`` (a view here:
  the ``p_*`` columns are one float64 block), ``conf = P.max(axis=1)``,
  ``np.argpartition(conf, k - 1)[:k]`` with k = budget (the k smallest top-1 probabilities are
  the k largest ``1 - max``; the ``1 -`` pass is left out so as not to slow the baseline);
* informational: ``select_no_clusters`` (``n_clusters`` 0: the cost of the cluster cap),
  ``argpartition_only`` (one argpartition of the frame's ``confidence`` column, the floor of
  any top-k on this frame) and ``numpy_floor`` (the strategies' masks on arrays extracted
  beforehand + one argpartition of the priority; no exclusion, no diversity).

Goals: ``select`` <= 0.5 s and <= 2x ``bare_topk`` (wall medians after one warm-up call; CPU
medians are recorded beside them: on a shared machine they are the steadier figure).

Also: a cProfile of one ``select`` call, ``select``'s phases replayed one by one, ``select``
with growing exclusion sets, and the peak extra memory of ``select`` seen by ``tracemalloc``
with strategies switched on one at a time, relative to the size of the scores frame, to show
whether a strategy copies the batch. Arrow buffers (the ``str`` columns) are not seen by
tracemalloc; the growth of Arrow's pool peak is recorded beside it.

    .venv/bin/python benchmarks/bench_selection.py [--rows 1000000] [--repeat 9] [--check]

Writes ``benchmarks/results/selection.json``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import _harness
import numpy as np
import pandas as pd
from _harness import (
    Timings,
    add_output,
    arguments,
    load_average,
    medians,
    stamp,
    write_results,
)

from edgeloop.core.config import EdgeCaseSettings, SchemaSettings
from edgeloop.data.readers import load_rules
from edgeloop.demo.data import DEMO_RULES
from pipelines import edge_cases as ec
from pipelines.edge_cases import SCORE_COLUMNS, Rule, select
from pipelines.score import score_frame

GOAL_SECONDS = 0.5
GOAL_RATIO = 2.0
BATCH = "000042-5eedf00dcafe"


# ---------------------------------------------------------------------- the batch
class StandIn:
    """A "model" whose ``predict_proba`` returns precomputed probabilities."""

    def __init__(self, proba: np.ndarray, classes: list[int]) -> None:
        self.proba = proba
        self.classes_ = np.asarray(classes)

    def predict_proba(self, x: Any) -> np.ndarray:
        assert len(x) == len(self.proba)
        return self.proba


def build(
    rows: int, n_classes: int, n_exclude: int, seed: int, concentration: float, tmp: Path
) -> dict[str, Any]:
    """Scores (via score_frame and Parquet), features, challenger, rules, exclusion set."""
    rng = np.random.default_rng(seed)
    classes = list(range(n_classes))
    features = [f"px_{r}_{c}" for r in range(8) for c in range(8)]
    schema = SchemaSettings(
        features=[*features, "scanner"], categorical=["scanner"], target="digit", classes=classes
    )
    # Per row a Dirichlet with 0.3 on every class and `concentration` on the row's "true" class:
    # 6 gives a model unsure (confidence < 0.6) about a quarter of the rows; 0 = flat 0.3,
    # unsure about most rows (a worst case: most of the batch is a candidate).
    alpha = np.full((rows, n_classes), 0.3)
    if concentration > 0:
        alpha[np.arange(rows), rng.integers(0, n_classes, rows)] = concentration
    proba = rng.gamma(alpha)
    proba /= proba.sum(axis=1, keepdims=True)
    batch = pd.DataFrame(rng.integers(0, 17, (rows, len(features))), columns=features)
    batch["scanner"] = pd.array(rng.choice(["A", "B", "C"], rows), dtype="str")
    batch.insert(0, "batch_id", pd.array(np.full(rows, BATCH, dtype=object), dtype="str"))
    batch.insert(0, "row_id", pd.array([f"{BATCH}-{i:07d}" for i in range(rows)], dtype="str"))
    scored = score_frame(StandIn(proba, classes), batch, schema)
    path = tmp / "champion.parquet"
    scored.to_parquet(path, index=False)
    scores = pd.read_parquet(path)  # as surface() reads it: str ids, int64 classes
    # The challenger: the champion's class, with 3 % of rows moved to a random class.
    challenger = scores["predicted"].to_numpy().copy()
    flip = rng.random(rows) < 0.03
    challenger[flip] = rng.integers(0, n_classes, int(flip.sum()))
    rules_path = tmp / "edge_rules.yaml"
    rules_path.write_text(DEMO_RULES, encoding="utf-8")
    known = [*schema.features, *SCORE_COLUMNS, *(f"p_{c}" for c in classes)]
    rules = load_rules(rules_path, known)
    in_batch = rng.choice(scores["row_id"].to_numpy(), min(n_exclude, rows) // 2, replace=False)
    earlier = [f"000001-0123456789ab-{i:07d}" for i in range(n_exclude - len(in_batch))]
    exclude = set(map(str, in_batch)) | set(earlier)
    return {
        "scores": scores,
        "features": batch[schema.features],
        "challenger": challenger,
        "rules": rules,
        "exclude": exclude,
    }


# ---------------------------------------------------------------------- measuring
def phases(
    scores: pd.DataFrame,
    features: pd.DataFrame,
    challenger: np.ndarray,
    rules: list[Rule],
    exclude: set[str],
    settings: EdgeCaseSettings,
    repeat: int = 5,
) -> dict[str, dict[str, float]]:
    """``select``'s phases replayed one by one with its own helpers: median wall and CPU s and
    the tracemalloc peak. Each phase repeats on the same data, so it finds more of it in the
    CPU caches than inside one ``select`` call: the sum is a lower bound of ``select``."""
    n = len(scores)
    conf = scores["confidence"].to_numpy()
    margin = scores["margin"].to_numpy()
    pred = scores["predicted"].to_numpy()
    named = {c.column for r in rules for c in r.when}
    cols: dict[str, Any] = {c: scores[c] for c in named if c in scores.columns}
    cols.update({c: features[c].reset_index(drop=True) for c in named if c in features.columns})

    def strategy_masks() -> dict[str, np.ndarray]:
        return {
            "low_confidence": conf < settings.min_confidence,
            "small_margin": margin < settings.min_margin,
            "disagreement": challenger != pred,
        }

    masks = strategy_masks()
    masks.update({f"rule:{k}": v for k, v in ec.rule_masks(cols, rules, n).items()})

    def candidates() -> Any:
        return ec._candidates(masks, margin)

    order = candidates()
    idx = np.flatnonzero(order.flagged)
    budget = settings.budget
    class_cap = int(np.ceil(budget * settings.max_class_share))
    cluster_cap = int(np.ceil(budget * settings.max_cluster_share))
    ids = ec._Column(scores["row_id"])

    def fit() -> Any:
        return ec._fit_clusters(
            features, idx, ids, exclude, settings.n_clusters, settings.cluster_seed
        )

    model = fit()
    head = order.head(4 * budget + 64)[: budget + budget // 4 + 16]
    steps: dict[str, Callable[[], Any]] = {
        "masks: low confidence, small margin, disagreement (every row)": strategy_masks,
        "rule_masks: 2 rules, every row (scanner == C on Arrow's buffers)": (
            lambda: ec.rule_masks(cols, rules, n)
        ),
        "candidates: OR of the masks, rule-hit counts": candidates,
        "_Order.head: head of the priority order (partition of the most-flagged tier)": lambda: (
            order.head(4 * budget + 64)
        ),
        f"_fit_clusters: sample of {ec.SAMPLE_PER_CLUSTER * settings.n_clusters} candidates, k-means": fit,
        "_excluded_at: first step's ids in the exclusion set": lambda: ec._excluded_at(
            ids, head, exclude
        ),
        "_Clusters.assign: first step's rows (features read + nearest centre)": lambda: (
            model.assign(head)
        ),
        "_fill: the whole walk (exclusion, clusters, caps)": lambda: ec._fill(
            order,
            pred,
            ids,
            exclude,
            features,
            model,
            budget=budget,
            class_cap=class_cap,
            cluster_cap=cluster_cap,
        ),
    }
    out = {}
    for name, fn in steps.items():
        timings = Timings()
        fn()
        timings.rounds({name: fn}, repeat)
        wall, cpu = medians(timings.wall), medians(timings.cpu)
        out[name] = {
            "median_s": round(wall[name], 4),
            "median_cpu_s": round(cpu[name], 4),
            "peak_mb": peak_memory(fn)["peak_mb"],
        }
    return out


def profile(fn: Callable[[], Any], top: int) -> tuple[list[dict[str, Any]], str]:
    rows, text, total = _harness.profile(fn, top)
    return [{"total_s": round(total, 4)}, *rows], text


def peak_memory(fn: Callable[[], Any]) -> dict[str, float]:
    """Peak bytes tracemalloc saw above the baseline during one call (+ Arrow pool peak growth)."""
    import pyarrow as pa

    pool = pa.default_memory_pool()
    arrow_before = pool.max_memory() or 0
    return {
        "peak_mb": _harness.peak_memory(fn),
        "arrow_pool_peak_growth_mb": round(((pool.max_memory() or 0) - arrow_before) / 1e6, 1),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    load_before = load_average()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        data = build(
            args.rows, args.classes, args.exclude, args.seed, args.concentration, Path(tmp)
        )
    t_build = time.perf_counter() - t0
    scores, features = data["scores"], data["features"]
    challenger, rules, exclude = data["challenger"], data["rules"], data["exclude"]
    settings = EdgeCaseSettings(
        min_confidence=0.6,
        min_margin=0.2,
        disagreement=True,
        budget=args.budget,
        max_class_share=0.4,
        n_clusters=8,
        max_cluster_share=0.25,
        cluster_seed=0,
    )
    no_clusters = settings.model_copy(update={"n_clusters": 0})
    k = args.budget
    p_cols = [c for c in scores.columns if c.startswith("p_")]

    def full(with_settings: EdgeCaseSettings = settings, ex: set[str] = exclude) -> pd.DataFrame:
        return select(
            scores,
            with_settings,
            features=features,
            challenger_predicted=challenger,
            rules=rules,
            exclude=ex,
        )

    def bare_topk() -> np.ndarray:
        # The goal's baseline: least confidence from the probability matrix, one argpartition.
        proba = scores[p_cols].to_numpy()
        return np.argpartition(proba.max(axis=1), k - 1)[:k]

    def argpartition_only() -> np.ndarray:
        return np.argpartition(scores["confidence"].to_numpy(), k - 1)[:k]

    # A floor for "every strategy": the same masks on arrays extracted (and the scanner
    # factorised) beforehand, the priority, one argpartition; no exclusion, no diversity.
    conf, pred = scores["confidence"].to_numpy(), scores["predicted"].to_numpy()
    margin = scores["margin"].to_numpy()
    codes, uniques = pd.factorize(features["scanner"])
    scanner_c, px_3_4 = int(list(uniques).index("C")), features["px_3_4"].to_numpy()

    def numpy_floor() -> np.ndarray:
        r1 = (codes == scanner_c) & (px_3_4 < 4)
        r2 = np.isin(pred, [1, 7]) & (conf < 0.8)
        dis = challenger != pred
        flagged = (conf < 0.6) | (margin < 0.2) | dis | r1 | r2
        prio = np.where(flagged, r1 + r2 + dis.astype(np.float64) + (1.0 - margin), -1.0)
        return np.argpartition(prio, len(prio) - k)[len(prio) - k :]

    flagged = (
        (conf < 0.6)
        | (margin < 0.2)
        | (challenger != pred)
        | ((codes == scanner_c) & (px_3_4 < 4))
        | (np.isin(pred, [1, 7]) & (conf < 0.8))
    )
    arms: dict[str, Callable[[], Any]] = {
        "select": full,
        "bare_topk": bare_topk,
        "select_no_clusters": lambda: full(no_clusters),
        "argpartition_only": argpartition_only,
        "numpy_floor": numpy_floor,
    }
    warm = {name: fn() for name, fn in arms.items()}  # warm-up, untimed
    out = warm["select"]
    # The baseline ranks the same score select reads: confidence is the row's top probability.
    assert np.array_equal(
        np.sort(conf[warm["bare_topk"]]), np.sort(conf[warm["argpartition_only"]])
    )
    timings = Timings()
    timings.rounds(arms, args.repeat)
    wall, cpu = medians(timings.wall), medians(timings.cpu)

    # select with a growing exclusion set (surface() passes every queued id and every labeled
    # row id of the whole dataset): only the walked ids are looked up, one hash probe each.
    in_batch = {i for i in exclude if i.startswith(BATCH)}
    scaling = []
    for size in args.exclude_scaling:
        bigger = in_batch | {f"000001-0123456789ab-{i:07d}" for i in range(size - len(in_batch))}
        t_ex = Timings()
        full(settings, bigger)
        t_ex.rounds({"select": lambda b=bigger: full(settings, b)}, 3)
        scaling.append(
            {
                "exclude_ids": len(bigger),
                "select_median_s": round(medians(t_ex.wall)["select"], 4),
                "select_median_cpu_s": round(medians(t_ex.cpu)["select"], 4),
            }
        )

    top, text = profile(full, args.profile_top)
    lines = phases(scores, features, challenger, rules, exclude, settings)

    # Memory: strategies switched on one at a time (the cluster cap last).
    frame_mb = scores.memory_usage(deep=True).sum() / 1e6
    features_mb = features.memory_usage(deep=True).sum() / 1e6
    off = {"min_confidence": 0.0, "min_margin": 0.0, "disagreement": False}
    base = no_clusters.model_copy(update=off)
    steps: list[tuple[str, Callable[[], Any]]] = [
        ("low_confidence", lambda: select(scores, base.model_copy(update={"min_confidence": 0.6}))),
        (
            "+ small_margin",
            lambda: select(scores, no_clusters.model_copy(update={"disagreement": False})),
        ),
        ("+ disagreement", lambda: select(scores, no_clusters, challenger_predicted=challenger)),
        (
            "+ 2 rules",
            lambda: select(
                scores, no_clusters, features=features, challenger_predicted=challenger, rules=rules
            ),
        ),
        (f"+ exclude {len(exclude) // 1000}k", lambda: full(no_clusters)),
        ("+ cluster cap (all on)", full),
    ]
    memory = []
    for name, fn in steps:
        m = peak_memory(fn)
        memory.append(
            {"strategies": name, **m, "peak_over_scores_frame": round(m["peak_mb"] / frame_mb, 3)}
        )

    reasons = out["reasons"].str.split(";").explode().value_counts().to_dict()
    load_after = load_average()
    return {
        **stamp("selection", numpy=np.__version__, pandas=pd.__version__),
        "command": "python benchmarks/bench_selection.py " + " ".join(sys.argv[1:]),
        "load_average_before": load_before,
        "load_average_after": load_after,
        "rows": args.rows,
        "classes": args.classes,
        "budget": k,
        "max_class_share": settings.max_class_share,
        "n_clusters": settings.n_clusters,
        "max_cluster_share": settings.max_cluster_share,
        "cluster_seed": settings.cluster_seed,
        "exclude_ids": len(exclude),
        "rules": [r.name for r in rules],
        "repeat": args.repeat,
        "seed": args.seed,
        "concentration": args.concentration,
        "build_s": round(t_build, 2),
        "baseline": (
            "bare_topk: P = scores[p_cols].to_numpy(); np.argpartition(P.max(axis=1), k - 1)[:k]"
        ),
        "candidates": {
            "flagged_any_strategy": int(flagged.sum()),
            "flagged_share": round(float(flagged.mean()), 3),
            "flagged_not_excluded": int(
                (flagged & ~scores["row_id"].isin(exclude).to_numpy()).sum()
            ),
            "selected": len(out),
            "selected_by_reason": {str(k_): int(v) for k_, v in reasons.items()},
            "max_per_class": int(out["predicted"].value_counts().max()),
            "per_cluster": {
                str(c): int(v) for c, v in out["cluster"].value_counts().sort_index().items()
            },
        },
        "times_s": {k_: [round(t, 4) for t in v] for k_, v in timings.wall.items()},
        "cpu_times_s": {k_: [round(t, 4) for t in v] for k_, v in timings.cpu.items()},
        "median_wall_s": {k_: round(v, 4) for k_, v in wall.items()},
        "median_cpu_s": {k_: round(v, 4) for k_, v in cpu.items()},
        "ratio_select_over_topk": round(wall["select"] / wall["bare_topk"], 2),
        "ratio_select_over_topk_cpu": round(cpu["select"] / cpu["bare_topk"], 2),
        "ratio_select_no_clusters_over_topk": round(
            wall["select_no_clusters"] / wall["bare_topk"], 2
        ),
        "ratio_select_no_clusters_over_topk_cpu": round(
            cpu["select_no_clusters"] / cpu["bare_topk"], 2
        ),
        "ratio_select_over_argpartition_only": round(wall["select"] / wall["argpartition_only"], 1),
        "ratio_numpy_floor_over_topk": round(wall["numpy_floor"] / wall["bare_topk"], 2),
        "goals": {
            "select_max_s": GOAL_SECONDS,
            "select_s_met": wall["select"] <= GOAL_SECONDS,
            "ratio_max": GOAL_RATIO,
            "ratio_met": wall["select"] / wall["bare_topk"] <= GOAL_RATIO,
            "ratio_met_on_cpu": cpu["select"] / cpu["bare_topk"] <= GOAL_RATIO,
        },
        "memory": {
            "scores_frame_mb": round(frame_mb, 1),
            "features_frame_mb": round(features_mb, 1),
            "by_strategies": memory,
        },
        "select_phases": lines,
        "exclude_scaling": scaling,
        "profile_select_top": top,
        "_profile_text": text,
    }


def main(argv: list[str] | None = None) -> int:
    ap = arguments(__doc__)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--budget", type=int, default=1000)
    ap.add_argument("--exclude", type=int, default=50_000)
    ap.add_argument("--repeat", type=int, default=9)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--concentration",
        type=float,
        default=6.0,
        help="Dirichlet weight of each row's top class (0 = flat: most rows are candidates)",
    )
    ap.add_argument("--profile-top", type=int, default=15)
    ap.add_argument(
        "--exclude-scaling",
        type=lambda v: [int(x) for x in v.split(",") if x],
        default=[50_000, 200_000, 1_000_000],
        help="exclusion-set sizes to time select with (comma-separated)",
    )
    add_output(ap, "selection.json", "a goal is missed")
    args = ap.parse_args(argv)

    result = run(args)
    text = result.pop("_profile_text")
    write_results(args.out, result)

    w = result["median_wall_s"]
    c = result["median_cpu_s"]
    print(f"{args.rows:,} rows, {args.classes} classes, budget {args.budget}, ", end="")
    print(f"{result['exclude_ids']:,} excluded ids, rules {result['rules']}")
    print(
        f"load average before {result['load_average_before']}, after {result['load_average_after']}"
    )
    cand = result["candidates"]
    print(
        f"flagged by some strategy: {cand['flagged_any_strategy']:,} rows "
        f"({cand['flagged_share']:.0%}), {cand['flagged_not_excluded']:,} not excluded; "
        f"selected {cand['selected']}, per cluster {cand['per_cluster']}"
    )
    print(f"{'arm':<20} {'median wall s':>14} {'median CPU s':>13}")
    for name in w:
        print(f"{name:<20} {w[name]:>14.4f} {c[name]:>13.4f}")
    g = result["goals"]
    print(
        f"select / bare_topk = {result['ratio_select_over_topk']}x wall, "
        f"{result['ratio_select_over_topk_cpu']}x CPU "
        f"(goal <= {GOAL_RATIO}: {'met' if g['ratio_met'] else 'MISSED'}); "
        f"select {w['select']:.3f} s (goal <= {GOAL_SECONDS}: "
        f"{'met' if g['select_s_met'] else 'MISSED'})"
    )
    print(
        f"select_no_clusters / bare_topk = {result['ratio_select_no_clusters_over_topk']}x wall, "
        f"{result['ratio_select_no_clusters_over_topk_cpu']}x CPU; "
        f"numpy_floor / bare_topk = {result['ratio_numpy_floor_over_topk']}x"
    )
    print(f"\nmemory (scores frame {result['memory']['scores_frame_mb']} MB):")
    for m in result["memory"]["by_strategies"]:
        print(
            f"  {m['strategies']:<24} peak +{m['peak_mb']:>7.1f} MB "
            f"({m['peak_over_scores_frame']:.3f}x frame), arrow pool +{m['arrow_pool_peak_growth_mb']} MB"
        )
    print("\nselect's phases replayed one by one (median wall s, CPU s, tracemalloc peak MB):")
    for name, st in result["select_phases"].items():
        print(
            f"  {st['median_s']:>8.4f} {st['median_cpu_s']:>8.4f} {st['peak_mb']:>8.1f} MB  {name}"
        )
    print("\nselect with a growing exclusion set:")
    for e in result["exclude_scaling"]:
        print(
            f"  {e['exclude_ids']:>9,} ids: {e['select_median_s']:.4f} s wall, "
            f"{e['select_median_cpu_s']:.4f} s CPU"
        )
    print("\ncProfile of one select call:\n" + text)
    print(f"wrote {args.out}")
    missed = not (g["select_s_met"] and g["ratio_met"])
    return 1 if args.check and missed else 0


if __name__ == "__main__":
    sys.exit(main())
