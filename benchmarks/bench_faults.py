"""Kill -9 ingest, label import and score at seeded random moments; rerun; count broken invariants.

Prepares one project (``tests/data/faultkit.prepare``: a champion, a batch scored and
surfaced, a new batch, a label file) and then, ``--kills`` times: copies it, starts a real
``edgeloop ingest|annotate import|score`` (the command and the delay chosen by ``--seed``),
kills its process group after the delay, checks that no child outlived it, reruns the command
and checks the invariants (``faultkit.violations``: ``dvc status`` clean, each batch filed
once with its rows once, the ledger consistent, no journal or temporary file left).
**Goal:** 0 violated invariants. Prints one JSON object last.
"""

from __future__ import annotations

import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import _harness

sys.path.insert(0, str(_harness.ROOT))
# Before Prefect is imported (as tests/conftest.py does): a throw-away home, no telemetry.
os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="edgeloop-bench-faults-prefect-")
QUIET = {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1", "DVC_NO_ANALYTICS": "1"}
os.environ.update({k: os.environ.get(k, v) for k, v in QUIET.items()})
os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "WARNING")
for var in ("MLFLOW_TRACKING_URI", "PREFECT_API_URL", "EDGELOOP_DVC_REMOTE_URL", "EDGELOOP_CONFIG"):
    os.environ.pop(var, None)

COMMANDS = ("ingest", "labels", "score")
#: Kill moments after the start, seconds (a run takes about 12-20 s on 2 cores).
DELAY = (2.0, 18.0)


def one_kill(fk: Any, base: Path, work: Path, api: str, cmd: str, delay: float) -> dict[str, Any]:
    root = fk.copy_project(base / fk.PROJECT[cmd], work)
    args = fk.args(cmd, base)
    proc, _lines = fk.start(args, root, fk.cli_env(api))
    time.sleep(delay)
    finished = proc.poll() is not None
    kids = fk.kill_group(proc)
    deadline = time.monotonic() + 30
    while fk.alive(kids) and time.monotonic() < deadline:
        time.sleep(0.5)
    left = fk.alive(kids)
    for p in left:
        p.kill()
    rerun = fk.run(args, root, fk.cli_env(api))
    said = rerun.stdout + rerun.stderr
    problems = fk.case_violations(cmd, root, base)
    if left:
        problems.append(f"{len(left)} child process(es) outlived the kill")
    if rerun.returncode not in (0, 1) or "Traceback" in said:
        problems.append(f"rerun exited {rerun.returncode}: {said[-300:]}")
    return {
        "command": cmd,
        "delay_s": round(delay, 2),
        "finished_before_kill": finished,
        "recovered": [ln for ln in said.splitlines() if ln.startswith("recovered:")],
        "violations": problems,
    }


def main() -> int:
    parser = _harness.arguments(__doc__)
    parser.add_argument("--kills", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    _harness.add_output(parser, "faults.json", "any invariant is violated")
    opts = parser.parse_args()
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    from tests.data import faultkit as fk

    rng = random.Random(opts.seed)
    plan = [(rng.choice(COMMANDS), rng.uniform(*DELAY)) for _ in range(opts.kills)]
    work = _harness.ROOT / "benchmarks" / ".work" / "faults"
    _harness.new_repo(work)  # an empty folder (replacing an earlier run's)
    results = []
    started = time.perf_counter()
    with prefect_test_harness(server_startup_timeout=120):
        api = str(PREFECT_API_URL.value())
        (work / "base").mkdir()
        fk.prepare(work / "base")
        for i, (cmd, delay) in enumerate(plan):
            r = one_kill(fk, work / "base", work / f"kill-{i:03d}", api, cmd, delay)
            print(f"kill {i}: {cmd} at {r['delay_s']} s: {len(r['violations'])} violation(s)"
                  f"{' (had finished)' if r['finished_before_kill'] else ''}"
                  f" {'; '.join(r['recovered'])}", flush=True)  # fmt: skip
            results.append(r)
    violated = sum(len(r["violations"]) for r in results)
    out = {
        **_harness.stamp("faults"),
        "kills": opts.kills,
        "seed": opts.seed,
        "violated_invariants": violated,
        "goal": 0,
        "seconds": round(time.perf_counter() - started, 1),
        "load_average": _harness.load_average(),
        "runs": results,
    }
    _harness.write_results(opts.out, out)
    print(json.dumps({k: v for k, v in out.items() if k != "runs"}))
    return 1 if opts.check and violated else 0


if __name__ == "__main__":
    sys.exit(main())
