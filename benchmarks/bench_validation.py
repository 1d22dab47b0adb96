"""What does edgeloop's validation step cost over running Great Expectations by hand?

In one process, on one seeded synthetic batch (1M rows x 22 columns by default) and the suite
``pipelines.profile.bootstrap_suite`` writes for it:

* raw GX: an ephemeral context and validation definition built once, then only
  ``ValidationDefinition.run(...)`` is timed, with ``COMPLETE`` and with ``BOOLEAN_ONLY``;
* edgeloop: ``normalize_batch`` + ``validate_frame`` + ``decide``, as the ingest step calls
  them (``validate_frame`` builds its GX context on every call, so that is included);
* reading the batch back from Parquet with ``read_batch``, reported on its own.

GX is imported and warmed up by one untimed run before anything is timed. The arms alternate
(the order rotates each round), ``--repeat`` rounds; wall and CPU time are both recorded (CPU
time is steadier on a shared machine). Goal: edgeloop / raw-COMPLETE <= 1.30 (wall medians).

    .venv/bin/python benchmarks/bench_validation.py [--rows 1000000] [--repeat 3]

``--bad-rows N`` corrupts N rows after the suite is built (the partial / quarantine paths);
``--unlabeled`` drops the target so ``normalize_batch`` has work to do.

Writes ``benchmarks/results/validation.json``; ``--profile`` also writes a cProfile of one
edgeloop call to ``benchmarks/results/validation.prof`` and prints its top entries.
"""

from __future__ import annotations

import cProfile
import io
import pstats
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _harness import Timings, add_output, arguments, rotation, stamp, timed, write_results

from edgeloop.core.config import ValidationSettings
from edgeloop.data.readers import read_batch
from edgeloop.demo.synthetic import synthetic_frame, synthetic_schema
from pipelines.profile import bootstrap_suite
from pipelines.validate import (
    _gx_validator,
    decide,
    normalize_batch,
    validate_frame,
)

GOAL_RATIO = 1.30
#: Timings that process the whole batch (the others are fixed costs): rows/s is shown for these.
SCANS = ("raw_complete", "raw_boolean_only", "edgeloop", "read_batch")


def raw_gx_validation(suite: dict[str, Any]) -> Any:
    """A validation definition built with the GX API directly, once."""
    import great_expectations as gx

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = {"globally": False}
    gx_suite = context.suites.add(gx.ExpectationSuite(**suite))
    batch_def = (
        context.data_sources.add_pandas("raw")
        .add_dataframe_asset("batch")
        .add_batch_definition_whole_dataframe("whole")
    )
    return context.validation_definitions.add(
        gx.ValidationDefinition(name="raw", data=batch_def, suite=gx_suite)
    )


def corrupt(df: Any, n: int, seed: int) -> Any:
    """Break ``n`` rows after the suite was bootstrapped: out-of-range values, unknown region."""
    import numpy as np

    if n <= 0:
        return df
    out = df.copy()
    rows = np.random.default_rng(seed).choice(len(out), size=n, replace=False)
    half = rows[: n // 2]
    out.loc[half, "f00"] = 1e6
    out.loc[rows[n // 2 :], "region"] = "nowhere"
    return out


def run(rows: int, repeat: int, seed: int, labeled: bool, bad_rows: int) -> tuple[dict, Callable]:
    schema = synthetic_schema()
    settings = ValidationSettings()

    import sklearn.datasets  # noqa: F401  (import cost is not generation cost)

    t_gen, reference = timed(lambda: synthetic_frame(rows, seed=seed))
    t_suite, suite = timed(lambda: bootstrap_suite(reference, schema, name="bench"))
    batch = reference if labeled else reference.drop(columns=[schema.target])
    batch = corrupt(batch, bad_rows, seed)
    # Raw GX gets the frame the way edgeloop hands it to GX: with the target column present.
    gx_frame = normalize_batch(batch, schema).reset_index(drop=True)

    timings = Timings()
    with tempfile.TemporaryDirectory() as tmp:
        parquet = Path(tmp) / "batch.parquet"
        batch.to_parquet(parquet, index=False)
        parquet_mb = parquet.stat().st_size / 1e6
        read_batch(parquet)  # warm the page cache
        for _ in range(repeat):
            timings("read_batch", lambda: read_batch(parquet))

    t_import, _ = timed(lambda: __import__("great_expectations"))
    t_setup, validation = timed(lambda: raw_gx_validation(suite))
    complete = {"result_format": "COMPLETE"}
    boolean = {"result_format": "BOOLEAN_ONLY"}

    def raw(fmt: dict) -> Any:
        return validation.run(batch_parameters={"dataframe": gx_frame}, result_format=fmt)

    def edgeloop() -> Any:
        frame = normalize_batch(batch, schema)
        return decide(validate_frame(frame, suite, batch="bench"), settings)

    t_warm, warm = timed(lambda: raw(complete))  # untimed in the comparison: first-run costs
    arms: dict[str, Callable[[], Any]] = {
        "raw_complete": lambda: raw(complete),
        "raw_boolean_only": lambda: raw(boolean),
        "edgeloop": edgeloop,
    }
    names = list(arms)
    report = None
    for i in range(repeat):
        # Rotate the order each round so no arm always runs right after another.
        for name in rotation(names, i):
            out = timings(name, arms[name])
            report = out if name == "edgeloop" else report
        # Part of "edgeloop", timed apart to show what building a context per call costs.
        timings("edgeloop_context_build", lambda: _gx_validator(suite))
        # Not part of "edgeloop": what the ingest step does next with the report (report.json).
        timings("report_to_dict", report.to_dict)

    order = [*names, "edgeloop_context_build", "report_to_dict", "read_batch"]
    wall, cpu = Timings.medians(timings.wall), Timings.medians(timings.cpu)
    ratio = wall["edgeloop"] / wall["raw_complete"]
    cpu_ratio = cpu["edgeloop"] / cpu["raw_complete"]
    result = {
        **stamp("validation"),
        "rows": rows,
        "columns": len(batch.columns),
        "labeled": labeled,
        "bad_rows": bad_rows,
        "expectations": len(suite["expectations"]),
        "repeat": repeat,
        "seed": seed,
        "parquet_mb": round(parquet_mb, 1),
        "outcome": {
            "raw_success": bool(warm.success),
            "decision": report.decision if report else None,
            "failed_expectations": len(report.failed) if report else None,
            "rows_quarantined": report.rows_quarantined if report else None,
        },
        "once_s": {
            "generate": round(t_gen, 3),
            "bootstrap_suite": round(t_suite, 3),
            "import_gx": round(t_import, 3),
            "raw_setup": round(t_setup, 3),
            "raw_warmup_run": round(t_warm, 3),
        },
        "times_s": {k: [round(t, 4) for t in timings.wall[k]] for k in order},
        "median_s": {k: round(wall[k], 4) for k in order},
        "cpu_median_s": {k: round(cpu[k], 4) for k in order},
        "ratio_edgeloop_over_raw_complete": round(ratio, 4),
        "cpu_ratio_edgeloop_over_raw_complete": round(cpu_ratio, 4),
        "goal_ratio": GOAL_RATIO,
        "goal_met": ratio <= GOAL_RATIO,
    }
    return result, edgeloop


def print_table(result: dict) -> None:
    rows = result["rows"]
    print(
        f"{rows:,} rows x {result['columns']} columns, {result['expectations']} expectations,"
        f" {result['repeat']} rounds; outcome: {result['outcome']['decision']}"
    )
    print(f"{'step':<22} {'median s':>9} {'min s':>8} {'max s':>8} {'cpu s':>8} {'Mrows/s':>8}")
    for name, med in result["median_s"].items():
        ts = result["times_s"][name]
        cpu = result["cpu_median_s"][name]
        speed = f"{rows / med / 1e6:>8.2f}" if name in SCANS else f"{'':>8}"
        print(f"{name:<22} {med:>9.3f} {min(ts):>8.3f} {max(ts):>8.3f} {cpu:>8.3f} {speed}")
    verdict = "met" if result["goal_met"] else "MISSED"
    print(
        f"ratio edgeloop / raw_complete = {result['ratio_edgeloop_over_raw_complete']:.3f}"
        f" (goal <= {GOAL_RATIO}: {verdict}); on CPU time"
        f" {result['cpu_ratio_edgeloop_over_raw_complete']:.3f}"
    )
    once = ", ".join(f"{k} {v:.2f}s" for k, v in result["once_s"].items())
    print(f"once: {once}")


def profile(fn: Callable[[], Any], out: Path, top: int = 25) -> str:
    """cProfile one call of ``fn``; save the stats to ``out``; return the top entries."""
    prof = cProfile.Profile()
    prof.runcall(fn)
    prof.dump_stats(out)
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("cumulative").print_stats(top)
    return buf.getvalue()


def main(argv: list[str] | None = None) -> int:
    parser = arguments(__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3, help="timed rounds of each arm")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--unlabeled", action="store_true", help="drop the target (normalize_batch re-adds it)"
    )
    parser.add_argument(
        "--bad-rows", type=int, default=0, help="corrupt this many rows after bootstrapping"
    )
    parser.add_argument("--profile", action="store_true", help="also cProfile one edgeloop call")
    add_output(parser, "validation.json", "the goal is missed")
    args = parser.parse_args(argv)
    if args.repeat < 1 or args.rows < 1:
        parser.error("--repeat and --rows must be at least 1")
    result, edgeloop = run(args.rows, args.repeat, args.seed, not args.unlabeled, args.bad_rows)
    print_table(result)
    write_results(args.out, result)
    print(f"wrote {args.out}")
    if args.profile:
        prof_path = args.out.with_suffix(".prof")
        print(profile(edgeloop, prof_path))
        print(f"wrote {prof_path}")
    return 1 if args.check and not result["goal_met"] else 0


if __name__ == "__main__":
    sys.exit(main())
