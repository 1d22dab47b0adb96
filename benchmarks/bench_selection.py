"""What does edge-case selection cost on a 1M-row scored batch?

In one process, on one seeded synthetic batch scored the way ``pipelines.score.score_frame``
scores it (the real function, with a stand-in model returning seeded Dirichlet probabilities
over 10 classes: ``row_id``, ``batch_id``, ``predicted``, ``confidence``, ``margin``, ``p_*``),
written to Parquet and read back as ``edgeloop.annotation.surface`` reads it:

* ``select``: ``pipelines.edge_cases.select`` with every strategy on (low confidence, small
  margin, disagreement with a challenger's predictions, the demo's two failure-trigger rules on
  64 pixel features + ``scanner``, budget 1000 with ``max_class_share`` 0.4, and an exclusion
  set of 50k ids, half of them in the batch);
* ``bare_topk``: the floor, ``np.argpartition(1 - margin, n - k)[n - k:]`` with k = budget on
  the margin array already extracted from the frame;
* ``proposed``: a prototype of the optimisations proposed in ``benchmarks/README.md``
  (written here, not in the code under test), checked to return exactly ``select``'s frame.

Goals: ``select`` <= 0.5 s and <= 2x ``bare_topk`` (wall medians after one warm-up call).

Also: a cProfile of one ``select`` call (top entries in the JSON and printed), and the peak
extra memory of ``select`` seen by ``tracemalloc`` with strategies switched on one at a time,
relative to the size of the scores frame, to show whether a strategy copies the batch. Arrow
buffers (the ``str`` columns) are not seen by tracemalloc; the growth of Arrow's pool peak is
recorded beside it.

    .venv/bin/python benchmarks/bench_selection.py [--rows 1000000] [--repeat 5] [--check]

Writes ``benchmarks/results/selection.json``.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import json
import os
import platform
import pstats
import statistics
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from edgeloop.config import EdgeCaseSettings, SchemaSettings
from pipelines.demo_data import DEMO_RULES
from pipelines.edge_cases import SCORE_COLUMNS, Rule, _excluded, load_rules, select
from pipelines.score import score_frame

RESULTS = Path(__file__).resolve().parent / "results"
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
    in_batch = rng.choice(scores["row_id"].to_numpy(), n_exclude // 2, replace=False)
    earlier = [f"000001-0123456789ab-{i:07d}" for i in range(n_exclude - len(in_batch))]
    exclude = set(map(str, in_batch)) | set(earlier)
    return {
        "scores": scores,
        "features": batch[schema.features],
        "challenger": challenger,
        "rules": rules,
        "exclude": exclude,
    }


# ---------------------------------------------------------------------- the proposal
# The prototype measured here first is now pipelines.edge_cases.select itself; the arm stays so
# results/selection.json keeps its shape (both arms now time the same code).
select_proposed = select


# ---------------------------------------------------------------------- measuring
def breakdown(
    scores: pd.DataFrame,
    features: pd.DataFrame,
    challenger: np.ndarray,
    rules: list[Rule],
    exclude: set[str],
    settings: EdgeCaseSettings,
    repeat: int = 3,
) -> dict[str, dict[str, float]]:
    """The costly statements of ``select``, replayed one by one: median s and peak MB."""
    from pipelines.edge_cases import rule_masks

    n = len(scores)
    margin = scores["margin"].to_numpy(dtype=np.float64)
    pred = scores["predicted"].to_numpy()
    full = select(
        scores,
        settings,
        features=features,
        challenger_predicted=challenger,
        rules=rules,
        exclude=exclude,
    )
    cols = {c: scores[c].to_numpy() for c in scores.columns}
    cols.update({c: features[c].to_numpy() for c in features.columns})
    # The candidates select() ranks: every strategy, minus the excluded ids.
    any_reason = (
        (scores["confidence"].to_numpy() < settings.min_confidence)
        | (margin < settings.min_margin)
        | (np.asarray(challenger) != pred)
    )
    for m in rule_masks(cols, rules, n).values():
        any_reason |= m
    any_reason &= ~scores["row_id"].isin(exclude).to_numpy()
    idx = np.flatnonzero(any_reason)
    order = idx[np.argsort(-(1.0 - margin[idx]), kind="stable")]
    classes = pred[order].astype(str)
    _, inverse = np.unique(classes, return_inverse=True)
    chosen = order[: len(full)]
    steps: dict[str, Callable[[], Any]] = {
        "edge_cases.py:166 disagreement: both sides .astype(str)": lambda: (
            np.asarray(challenger).astype(str) != pred.astype(str)
        ),
        "edge_cases.py:168 every scores column .to_numpy() (str ids -> objects)": lambda: {
            c: scores[c].to_numpy() for c in scores.columns
        },
        "edge_cases.py:170 every feature column .to_numpy()": lambda: {
            c: features[c].to_numpy() for c in features.columns
        },
        "edge_cases.py:171 rule_masks (107/109: values.astype(str))": lambda: rule_masks(
            cols, rules, n
        ),
        "edge_cases.py:182 row_id.isin(exclude set)": lambda: (
            scores["row_id"].isin(exclude).to_numpy()
        ),
        "edge_cases.py:187-188 priority + stable argsort of all candidates": lambda: idx[
            np.argsort(-(1.0 - margin[idx]), kind="stable")
        ],
        "edge_cases.py:192 pred[order].astype(str)": lambda: pred[order].astype(str),
        "edge_cases.py:193 np.unique(text classes, return_inverse)": lambda: np.unique(
            classes, return_inverse=True
        ),
        "edge_cases.py:194 stable argsort by class": lambda: np.argsort(inverse, kind="stable"),
        "edge_cases.py:207-208 row_id/batch_id .to_numpy()[chosen]": lambda: (
            scores["row_id"].to_numpy()[chosen],
            scores["batch_id"].to_numpy()[chosen],
        ),
    }
    out = {}
    for name, fn in steps.items():
        timings = Timings()
        for _ in range(repeat):
            timings(name, fn)
        out[name] = {
            "median_s": round(statistics.median(timings.wall[name]), 4),
            "median_cpu_s": round(statistics.median(timings.cpu[name]), 4),
            "peak_mb": peak_memory(fn)["peak_mb"],
        }
    return out


class Timings:
    """Wall and CPU seconds per named arm."""

    def __init__(self) -> None:
        self.wall: dict[str, list[float]] = {}
        self.cpu: dict[str, list[float]] = {}

    def __call__(self, name: str, fn: Callable[[], Any]) -> Any:
        cpu0, wall0 = time.process_time(), time.perf_counter()
        out = fn()
        self.wall.setdefault(name, []).append(time.perf_counter() - wall0)
        self.cpu.setdefault(name, []).append(time.process_time() - cpu0)
        return out


def profile(fn: Callable[[], Any], top: int) -> tuple[list[dict[str, Any]], str]:
    prof = cProfile.Profile()
    prof.enable()
    fn()
    prof.disable()
    stats = pstats.Stats(prof)
    total = stats.total_tt  # type: ignore[attr-defined]
    rows = []
    for (file, line, func), (_cc, ncalls, tt, ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        short = file.split("site-packages/")[-1].replace(str(Path.cwd()) + "/", "")
        rows.append(
            {
                "function": f"{short}:{line}({func})",
                "calls": ncalls,
                "tottime_s": tt,
                "cumtime_s": ct,
            }
        )
    rows.sort(key=lambda r: r["tottime_s"], reverse=True)
    text = io.StringIO()
    pstats.Stats(prof, stream=text).sort_stats("tottime").print_stats(top)
    for r in rows:
        r["tottime_s"], r["cumtime_s"] = round(r["tottime_s"], 4), round(r["cumtime_s"], 4)
    return [{"total_s": round(total, 4)}, *rows[:top]], text.getvalue()


def peak_memory(fn: Callable[[], Any]) -> dict[str, float]:
    """Peak bytes tracemalloc saw above the baseline during one call (+ Arrow pool peak growth)."""
    import pyarrow as pa

    pool = pa.default_memory_pool()
    gc.collect()
    arrow_before = pool.max_memory() or 0
    tracemalloc.start()
    base, _ = tracemalloc.get_traced_memory()
    tracemalloc.reset_peak()
    out = fn()
    _current, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    del out
    return {
        "peak_mb": round((peak - base) / 1e6, 1),
        "arrow_pool_peak_growth_mb": round(((pool.max_memory() or 0) - arrow_before) / 1e6, 1),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
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
    )
    k = args.budget
    margin = scores["margin"].to_numpy()

    def full() -> pd.DataFrame:
        return select(
            scores,
            settings,
            features=features,
            challenger_predicted=challenger,
            rules=rules,
            exclude=exclude,
        )

    def proposed() -> pd.DataFrame:
        return select_proposed(
            scores,
            settings,
            features=features,
            challenger_predicted=challenger,
            rules=rules,
            exclude=exclude,
        )

    def bare_topk() -> np.ndarray:
        u = 1.0 - margin
        return np.argpartition(u, len(u) - k)[len(u) - k :]

    # A floor for "every strategy": the same masks on arrays extracted (and the scanner
    # factorised) beforehand, the priority, one argpartition; no exclusion, no diversity.
    conf, pred = scores["confidence"].to_numpy(), scores["predicted"].to_numpy()
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
        "proposed": proposed,
        "numpy_floor": numpy_floor,
    }
    warm = {name: fn() for name, fn in arms.items()}  # warm-up, untimed
    out = warm["select"]
    pd.testing.assert_frame_equal(warm["proposed"], out)  # the prototype is a drop-in
    timings = Timings()
    names = list(arms)
    for i in range(args.repeat):
        for name in names[i % len(names) :] + names[: i % len(names)]:
            timings(name, arms[name])
    wall = {k_: statistics.median(v) for k_, v in timings.wall.items()}
    cpu = {k_: statistics.median(v) for k_, v in timings.cpu.items()}

    # The exclusion step alone, as the set grows (surface() passes every queued id and every
    # labeled row id of the whole dataset, so it grows with each label and each labeled batch).
    ids = scores["row_id"]
    scaling = []
    for size in args.exclude_scaling:
        extra = [f"000001-0123456789ab-{i:07d}" for i in range(size)]
        bigger = set(extra)
        t = time.perf_counter()
        ids.isin(bigger)
        t_pandas = time.perf_counter() - t
        t = time.perf_counter()
        _excluded(ids, bigger)
        t_arrow = time.perf_counter() - t
        scaling.append(
            {
                "exclude_ids": size,
                "pandas_isin_s": round(t_pandas, 4),
                "arrow_is_in_s": round(t_arrow, 4),
            }
        )

    top, text = profile(full, args.profile_top)
    lines = breakdown(scores, features, challenger, rules, exclude, settings)
    top_proposed, text_proposed = profile(proposed, 8)

    # Memory: strategies switched on one at a time.
    frame_mb = scores.memory_usage(deep=True).sum() / 1e6
    features_mb = features.memory_usage(deep=True).sum() / 1e6
    off = {"min_confidence": 0.0, "min_margin": 0.0, "disagreement": False}
    base = settings.model_copy(update=off)
    steps: list[tuple[str, Callable[[], Any]]] = [
        ("low_confidence", lambda: select(scores, base.model_copy(update={"min_confidence": 0.6}))),
        (
            "+ small_margin",
            lambda: select(scores, settings.model_copy(update={"disagreement": False})),
        ),
        ("+ disagreement", lambda: select(scores, settings, challenger_predicted=challenger)),
        (
            "+ 2 rules",
            lambda: select(
                scores, settings, features=features, challenger_predicted=challenger, rules=rules
            ),
        ),
        ("+ exclude 50k (all on)", full),
        ("proposed (all on)", proposed),
    ]
    memory = []
    for name, fn in steps:
        m = peak_memory(fn)
        memory.append(
            {"strategies": name, **m, "peak_over_scores_frame": round(m["peak_mb"] / frame_mb, 2)}
        )

    reasons = out["reasons"].str.split(";").explode().value_counts().to_dict()
    return {
        "benchmark": "selection",
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "pandas": pd.__version__,
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "rows": args.rows,
        "classes": args.classes,
        "budget": k,
        "max_class_share": settings.max_class_share,
        "exclude_ids": len(exclude),
        "rules": [r.name for r in rules],
        "repeat": args.repeat,
        "seed": args.seed,
        "concentration": args.concentration,
        "build_s": round(t_build, 2),
        "candidates": {
            "flagged_any_strategy": int(flagged.sum()),
            "flagged_share": round(float(flagged.mean()), 3),
            "flagged_not_excluded": int((flagged & ~_excluded(scores["row_id"], exclude)).sum()),
            "selected": len(out),
            "selected_by_reason": {str(k_): int(v) for k_, v in reasons.items()},
            "max_per_class": int(out["predicted"].value_counts().max()),
        },
        "times_s": {k_: [round(t, 4) for t in v] for k_, v in timings.wall.items()},
        "median_wall_s": {k_: round(v, 4) for k_, v in wall.items()},
        "median_cpu_s": {k_: round(v, 4) for k_, v in cpu.items()},
        "ratio_select_over_topk": round(wall["select"] / wall["bare_topk"], 1),
        "ratio_proposed_over_topk": round(wall["proposed"] / wall["bare_topk"], 1),
        "ratio_numpy_floor_over_topk": round(wall["numpy_floor"] / wall["bare_topk"], 1),
        "speedup_proposed": round(wall["select"] / wall["proposed"], 1),
        "goals": {
            "select_max_s": GOAL_SECONDS,
            "select_s_met": wall["select"] <= GOAL_SECONDS,
            "ratio_max": GOAL_RATIO,
            "ratio_met": wall["select"] / wall["bare_topk"] <= GOAL_RATIO,
            "proposed_s_met": wall["proposed"] <= GOAL_SECONDS,
            "proposed_ratio_met": wall["proposed"] / wall["bare_topk"] <= GOAL_RATIO,
        },
        "memory": {
            "scores_frame_mb": round(frame_mb, 1),
            "features_frame_mb": round(features_mb, 1),
            "by_strategies": memory,
        },
        "select_statements": lines,
        "exclude_scaling": scaling,
        "profile_select_top": top,
        "profile_proposed_top": top_proposed,
        "_profile_text": text,
        "_profile_proposed_text": text_proposed,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--budget", type=int, default=1000)
    ap.add_argument("--exclude", type=int, default=50_000)
    ap.add_argument("--repeat", type=int, default=5)
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
        default=[10_000, 50_000, 200_000],
        help="exclusion-set sizes to time the exclusion step alone with (comma-separated)",
    )
    ap.add_argument("--out", type=Path, default=RESULTS / "selection.json")
    ap.add_argument("--check", action="store_true", help="exit 1 when a goal is missed")
    args = ap.parse_args(argv)

    result = run(args)
    text, text_proposed = result.pop("_profile_text"), result.pop("_profile_proposed_text")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")

    w = result["median_wall_s"]
    c = result["median_cpu_s"]
    print(f"{args.rows:,} rows, {args.classes} classes, budget {args.budget}, ", end="")
    print(f"{result['exclude_ids']:,} excluded ids, rules {result['rules']}")
    cand = result["candidates"]
    print(
        f"flagged by some strategy: {cand['flagged_any_strategy']:,} rows "
        f"({cand['flagged_share']:.0%}), {cand['flagged_not_excluded']:,} not excluded"
    )
    print(f"{'arm':<12} {'median wall s':>14} {'median CPU s':>13}")
    for name in ("select", "bare_topk", "proposed", "numpy_floor"):
        print(f"{name:<12} {w[name]:>14.4f} {c[name]:>13.4f}")
    g = result["goals"]
    print(
        f"select / bare_topk = {result['ratio_select_over_topk']}x "
        f"(goal <= {GOAL_RATIO}: {'met' if g['ratio_met'] else 'MISSED'}); "
        f"select {w['select']:.3f} s (goal <= {GOAL_SECONDS}: "
        f"{'met' if g['select_s_met'] else 'MISSED'})"
    )
    print(
        f"proposed / bare_topk = {result['ratio_proposed_over_topk']}x; "
        f"numpy_floor / bare_topk = {result['ratio_numpy_floor_over_topk']}x; "
        f"proposed is {result['speedup_proposed']}x faster than select"
    )
    print(f"\nmemory (scores frame {result['memory']['scores_frame_mb']} MB):")
    for m in result["memory"]["by_strategies"]:
        print(
            f"  {m['strategies']:<24} peak +{m['peak_mb']:>7.1f} MB "
            f"({m['peak_over_scores_frame']:.2f}x frame), arrow pool +{m['arrow_pool_peak_growth_mb']} MB"
        )
    print("\nselect, statement by statement (median wall s, CPU s, tracemalloc peak MB):")
    for name, st in result["select_statements"].items():
        print(
            f"  {st['median_s']:>8.4f} {st['median_cpu_s']:>8.4f} {st['peak_mb']:>8.1f} MB  {name}"
        )
    print("\nexclusion step alone (row_id.isin(set) in select vs Arrow is_in):")
    for e in result["exclude_scaling"]:
        print(
            f"  {e['exclude_ids']:>8,} ids: pandas {e['pandas_isin_s']:.3f} s, "
            f"arrow {e['arrow_is_in_s']:.3f} s"
        )
    print("\ncProfile of one select call:\n" + text)
    print("cProfile of one proposed call:\n" + text_proposed)
    print(f"wrote {args.out}")
    missed = not (g["select_s_met"] and g["ratio_met"])
    return 1 if args.check and missed else 0


if __name__ == "__main__":
    sys.exit(main())
