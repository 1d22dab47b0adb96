"""What does edgeloop's drift monitoring cost on a 1M-row batch over the bare statistics?

In one process: one seeded ``edgeloop.demo.synthetic.synthetic_frame`` draw split in two, the first
``--reference-rows`` rows the training reference and the next ``--rows`` the batch (20 float
features + ``region``), with seven features of the batch shifted so the drift paths run and the
batch drifts (``f00``-``f04`` + half their reference standard deviation, ``f05`` x 1.5, ``region``: 30 %
of rows moved to ``west``). Stand-in model
outputs beside it: predicted class (the label, 15 % moved), top-1 probability (Beta(5, 2)), a
challenger's classes (3 % moved from the champion's) and labels on 5 % of the rows (float64,
NaN elsewhere, as a dataset column read back from Parquet).

Outside the timing, as in production where it is computed once per monitoring run and shared
by every batch: the reference profile (``pipelines.monitor.build_reference``: quantile edges,
shares, a sorted 200k sample, category counts) and, for the bare arm, the same reference-side
inputs (edges, reference shares, the same sample, category counts). Timed:

* ``bare``: hand-written here, per feature: ``np.histogram`` PSI (+ 1e-4 for empty bins) and
  ``scipy.stats.ks_2samp`` for numeric; ``value_counts`` PSI and ``chi2_contingency`` for
  ``region``; the same drift rule. Nothing else.
* ``feature_drift``: ``pipelines.monitor.feature_drift``: the same work as ``bare``, edgeloop's
  code (missing-value bins, unseen categories, typed results).
* ``batch_report``: ``pipelines.monitor.batch_report``: everything edgeloop computes for a
  batch (``feature_drift`` + prediction shift + confidence histogram + champion/challenger
  accuracy on the labeled rows + agreement). **The goal is judged on this arm**:
  ``batch_report`` / ``bare`` <= 1.3 (wall medians). Not timed: reading the batch, MLflow.

Each arm is called once untimed, then ``--repeat`` rounds, arm order rotated; medians of wall
and CPU time. The drift flags of ``bare`` and ``feature_drift`` are checked to be identical.
Also: ``tracemalloc`` peak above the baseline of one call of each arm (NumPy buffers are seen;
Arrow buffers of the ``region`` column are not), the batch frame's size, the process's max RSS,
and a cProfile of one ``batch_report`` call.

    .venv/bin/python benchmarks/bench_monitor.py [--rows 1000000] [--repeat 5] [--check]

Writes ``benchmarks/results/monitor.json``.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
import scipy
from _harness import (
    Timings,
    add_output,
    arguments,
    load_average,
    medians,
    peak_memory,
    profile,
    stamp,
    write_results,
)
from scipy.stats import chi2_contingency, ks_2samp

from edgeloop.core.config import MonitoringSettings
from edgeloop.demo.synthetic import REGION, synthetic_frame, synthetic_schema
from pipelines.monitor import EPSILON, batch_report, build_reference, feature_drift

GOAL_RATIO = 1.3


# ---------------------------------------------------------------------- data
def build(args: argparse.Namespace) -> dict[str, Any]:
    t0 = time.perf_counter()
    full = synthetic_frame(args.reference_rows + args.rows, seed=args.seed)
    reference = full.iloc[: args.reference_rows].reset_index(drop=True)
    batch = full.iloc[args.reference_rows :].reset_index(drop=True)
    del full
    rng = np.random.default_rng(args.seed + 1)
    n = len(batch)
    for name in ("f00", "f01", "f02", "f03", "f04"):
        batch[name] = batch[name] + 0.5 * reference[name].std()
    batch["f05"] = batch["f05"] * 1.5
    region = batch[REGION].to_numpy(dtype=object)
    region[rng.random(n) < 0.3] = "west"
    batch[REGION] = pd.array(region, dtype="str")
    label = batch.pop("label").to_numpy()
    predicted = np.where(rng.random(n) < 0.85, label, rng.integers(0, 3, n))
    challenger = np.where(rng.random(n) < 0.03, (predicted + 1) % 3, predicted)
    labels = np.where(rng.random(n) < 0.05, label.astype(np.float64), np.nan)
    confidence = rng.beta(5.0, 2.0, n)
    return {
        "reference": reference,
        "batch": batch,
        "predicted": predicted,
        "challenger": challenger,
        "labels": labels,
        "confidence": confidence,
        "generate_s": time.perf_counter() - t0,
    }


# ---------------------------------------------------------------------- the bare arm
def bare_reference(reference: pd.DataFrame, settings: MonitoringSettings, sample_idx: np.ndarray
                   ) -> dict[str, Any]:  # fmt: skip
    """The reference-side inputs the bare arm needs (untimed, like the profile)."""
    schema = synthetic_schema()
    probs = np.linspace(0.0, 1.0, settings.psi_bins + 1)
    out: dict[str, Any] = {"numeric": {}, "categorical": {}}
    for name in schema.numeric:
        x = reference[name].to_numpy()
        edges = np.unique(np.quantile(x, probs))
        edges[0], edges[-1] = -np.inf, np.inf
        counts, _ = np.histogram(x, bins=edges)
        out["numeric"][name] = (edges, counts / len(x), x[sample_idx])
    for name in schema.categorical:
        counts = reference[name].value_counts()
        out["categorical"][name] = (counts.index.tolist(), counts.to_numpy())
    return out


def bare_drift(ref: dict[str, Any], batch: pd.DataFrame, s: MonitoringSettings) -> dict[str, bool]:
    """PSI + KS / chi-square per feature and the drift rule, written the plain way."""
    out = {}
    for name, (edges, r, sample) in ref["numeric"].items():
        x = batch[name].to_numpy()
        counts, _ = np.histogram(x, bins=edges)
        b = np.maximum(counts / len(x), EPSILON)
        rr = np.maximum(r, EPSILON)
        value = float(np.sum((b - rr) * np.log(b / rr)))
        p = ks_2samp(sample, x).pvalue
        out[name] = value > s.psi_threshold or (p < s.p_value and value > s.psi_threshold / 2)
    for name, (cats, ref_counts) in ref["categorical"].items():
        counts = batch[name].value_counts()
        cats_all = cats + [c for c in counts.index if c not in cats]
        rc = np.array([dict(zip(cats, ref_counts, strict=True)).get(c, 0) for c in cats_all])
        bc = np.array([counts.get(c, 0) for c in cats_all])
        r = np.maximum(rc / rc.sum(), EPSILON)
        b = np.maximum(bc / bc.sum(), EPSILON)
        value = float(np.sum((b - r) * np.log(b / r)))
        p = chi2_contingency(np.vstack([rc, bc]), correction=False).pvalue
        out[name] = value > s.psi_threshold or (p < s.p_value and value > s.psi_threshold / 2)
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    settings = MonitoringSettings()
    data = build(args)
    reference, batch = data["reference"], data["batch"]
    schema = synthetic_schema()

    t0 = time.perf_counter()
    prof = build_reference(reference, schema, settings, seed=args.seed)
    t_profile = time.perf_counter() - t0
    # The bare arm gets the very same KS sample of the reference.
    rng = np.random.default_rng(args.seed)
    n_ref = len(reference)
    sample_idx = (
        np.sort(rng.choice(n_ref, settings.reference_sample, replace=False))
        if settings.reference_sample and n_ref > settings.reference_sample
        else np.arange(n_ref)
    )
    bare_ref = bare_reference(reference, settings, sample_idx)
    np.testing.assert_array_equal(
        np.sort(bare_ref["numeric"]["f00"][2]), prof.numeric["f00"].sample
    )

    def arm_bare() -> dict[str, bool]:
        return bare_drift(bare_ref, batch, settings)

    def arm_feature_drift() -> Any:
        return feature_drift(prof, batch, settings)

    def arm_batch_report() -> Any:
        return batch_report(
            prof,
            batch,
            data["predicted"],
            data["confidence"],
            settings,
            min_confidence=0.6,
            challenger_predicted=data["challenger"],
            labels=data["labels"],
        )

    arms: dict[str, Callable[[], Any]] = {
        "bare": arm_bare,
        "feature_drift": arm_feature_drift,
        "batch_report": arm_batch_report,
    }
    warm = {name: fn() for name, fn in arms.items()}  # warm-up, untimed
    flags_edgeloop = {f.feature: f.drifted for f in warm["feature_drift"]}
    assert flags_edgeloop == warm["bare"], (flags_edgeloop, warm["bare"])
    report = warm["batch_report"]
    timings = Timings()
    timings.rounds(arms, args.repeat)
    wall, cpu = medians(timings.wall), medians(timings.cpu)
    memory = {name: peak_memory(fn) for name, fn in arms.items()}
    top, text, _total = profile(arm_batch_report, args.profile_top)
    ratio = wall["batch_report"] / wall["bare"]
    return {
        **stamp("monitor", numpy=np.__version__, pandas=pd.__version__, scipy=scipy.__version__),
        "load_average": load_average(),
        "rows": len(batch),
        "reference_rows": n_ref,
        "reference_sample": len(sample_idx),
        "features": len(schema.features),
        "psi_bins": settings.psi_bins,
        "repeat": args.repeat,
        "seed": args.seed,
        "generate_s": round(data["generate_s"], 2),
        "untimed": {
            "build_reference_s": round(t_profile, 3),
            "note": "reference profile (and the bare arm's reference inputs) built once, "
            "outside the timing, as a monitoring run builds it once for all its batches",
        },
        "drifted_features": [f.feature for f in report.drifted_features],
        "batch_drifted": report.drifted,
        "drift_share": round(report.drift_share, 3),
        "times_s": {k: [round(t, 4) for t in v] for k, v in timings.wall.items()},
        "median_wall_s": {k: round(v, 4) for k, v in wall.items()},
        "median_cpu_s": {k: round(v, 4) for k, v in cpu.items()},
        "ratio_batch_report_over_bare": round(ratio, 3),
        "ratio_feature_drift_over_bare": round(wall["feature_drift"] / wall["bare"], 3),
        "ratio_batch_report_over_bare_cpu": round(cpu["batch_report"] / cpu["bare"], 3),
        "goal": {"ratio_max": GOAL_RATIO, "met": ratio <= GOAL_RATIO},
        "memory": {
            "batch_frame_mb": round(batch.memory_usage(deep=True).sum() / 1e6, 1),
            "tracemalloc_peak_mb": memory,
            "process_max_rss_mb": round(
                resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1
            ),
        },
        "profile_batch_report_top": top,
        "_profile_text": text,
    }


def main(argv: list[str] | None = None) -> int:
    ap = arguments(__doc__)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--reference-rows", type=int, default=500_000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--profile-top", type=int, default=12)
    add_output(ap, "monitor.json", "the goal is missed")
    args = ap.parse_args(argv)

    result = run(args)
    text = result.pop("_profile_text")
    write_results(args.out, result)

    w, c, mem = result["median_wall_s"], result["median_cpu_s"], result["memory"]
    print(
        f"batch {result['rows']:,} rows x {result['features']} features, reference "
        f"{result['reference_rows']:,} rows (KS sample {result['reference_sample']:,}); "
        f"profile built untimed in {result['untimed']['build_reference_s']} s"
    )
    print(f"drifted: {result['drifted_features']} (batch drifted: {result['batch_drifted']})")
    print(f"{'arm':<14} {'median wall s':>14} {'median CPU s':>13} {'peak MB':>8}")
    for name in ("bare", "feature_drift", "batch_report"):
        peak = mem["tracemalloc_peak_mb"][name]
        print(f"{name:<14} {w[name]:>14.3f} {c[name]:>13.3f} {peak:>8.1f}")
    ok = result["goal"]["met"]
    print(
        f"batch_report / bare = {result['ratio_batch_report_over_bare']} wall, "
        f"{result['ratio_batch_report_over_bare_cpu']} CPU (goal <= {GOAL_RATIO}: "
        f"{'met' if ok else 'MISSED'}); feature_drift / bare = "
        f"{result['ratio_feature_drift_over_bare']}"
    )
    print(f"batch frame {mem['batch_frame_mb']} MB, process max RSS {mem['process_max_rss_mb']} MB")
    print("\ncProfile of one batch_report call:\n" + text)
    print(f"wrote {args.out}")
    return 1 if args.check and not ok else 0


if __name__ == "__main__":
    sys.exit(main())
