"""Click-to-start latency of a deployment run under ``edgeloop up``.

Makes a throw-away project (``edgeloop init --data`` on a small synthetic table), starts
``edgeloop up --no-mlflow-ui`` on free ports, then ``--clicks`` times creates a run of the
``score`` deployment with the REST call the UI's Run button makes
(``POST /api/deployments/{id}/create_flow_run``) and waits for it to finish. From each run's
state history (server timestamps) it reports:

- click → Pending: the served runner noticed the run (the poll interval,
  ``schedules.poll_seconds``);
- click → Running: the run's process started and entered Running: what a user sees as
  "started" in the UI. Goal ≤ 3 s (issue 6).

The same is measured with ``--poll`` other values to compare (e.g. ``--poll 0.5 1 10``:
Prefect's default is 10 s). Clicks are sequential (each waits for the previous run to finish).

    .venv/bin/python benchmarks/bench_deploy.py [--clicks 5] [--poll 0.5]

Writes ``benchmarks/results/deploy.json``.
"""

from __future__ import annotations

import argparse
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from _harness import RESULTS, load_average, write_results

BIN = Path(sys.executable).parent
GOAL_SECONDS = 3.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _project(base: Path, poll: float) -> Path:
    """A fresh edgeloop project on a small synthetic table, with ``poll`` as runner poll."""
    import yaml

    root = base / f"proj-poll{poll}"
    root.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    for k, v in (("user.email", "bench@localhost"), ("user.name", "bench")):
        subprocess.run(["git", "config", k, v], cwd=root, check=True)
    src = base / "reference.csv"
    if not src.exists():
        subprocess.run([str(BIN / "edgeloop"), "synth", str(src), "--rows", "500"], check=True)
    subprocess.run(
        [str(BIN / "edgeloop"), "init", "--data", str(src), "--target", "label"],
        cwd=root, check=True, capture_output=True,
    )  # fmt: skip
    cfg = root / "edgeloop.yaml"
    data = yaml.safe_load(cfg.read_text())
    data["project"] = root.name
    data["schedules"]["poll_seconds"] = poll
    cfg.write_text(yaml.safe_dump(data, sort_keys=False))
    return root


def _ts(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def measure(base: Path, poll: float, clicks: int) -> dict[str, Any]:
    import httpx

    root = _project(base, poll)
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_HOME", "PREFECT_API_URL")}
    log = (base / f"up-poll{poll}.log").open("w")
    started = time.perf_counter()
    proc = subprocess.Popen(
        [str(BIN / "edgeloop"), "up", "--no-mlflow-ui", "--prefect-port", str(port)],
        cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        out = base / f"up-poll{poll}.log"
        while "ready;" not in out.read_text():
            if proc.poll() is not None:
                raise RuntimeError(f"edgeloop up failed:\n{out.read_text()}")
            time.sleep(0.5)
        up_seconds = time.perf_counter() - started
        api = httpx.Client(base_url=f"http://127.0.0.1:{port}/api", timeout=30)
        dep = api.get(f"/deployments/name/score/{root.name}")
        dep.raise_for_status()
        dep = dep.json()
        pending, running, total = [], [], []
        for _ in range(clicks):
            for _attempt in range(20):  # a busy SQLite server answers 503 now and then
                res = api.post(f"/deployments/{dep['id']}/create_flow_run", json={"parameters": {}})
                if res.status_code != 503:
                    break
                time.sleep(0.5)
            res.raise_for_status()
            run = res.json()
            while True:
                state = api.get(f"/flow_runs/{run['id']}").json()["state"]
                if state["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
                    break
                time.sleep(0.2)
            if state["type"] != "COMPLETED":
                raise RuntimeError(f"score run ended {state['type']}: {state['message']}")
            states = api.get("/flow_run_states/", params={"flow_run_id": run["id"]}).json()
            at = {s["type"]: _ts(s["timestamp"]) for s in states}
            click = _ts(run["created"])
            pending.append(at["PENDING"] - click)
            running.append(at["RUNNING"] - click)
            total.append(at["COMPLETED"] - click)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
    return {
        "poll_seconds": poll,
        "clicks": clicks,
        "up_ready_seconds": round(up_seconds, 1),
        "click_to_pending_s": [round(x, 2) for x in pending],
        "click_to_running_s": [round(x, 2) for x in running],
        "click_to_completed_s": [round(x, 2) for x in total],
        "median_click_to_running_s": round(statistics.median(running), 2),
        "max_click_to_running_s": round(max(running), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clicks", type=int, default=5)
    parser.add_argument("--poll", type=float, nargs="+", default=[0.5])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-deploy-") as tmp:
        arms = [measure(Path(tmp), poll, args.clicks) for poll in args.poll]
    result = {
        "benchmark": "deploy",
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "load_avg": load_average()},
        "goal_click_to_running_s": GOAL_SECONDS,
        "arms": arms,
    }  # fmt: skip
    write_results(RESULTS / "deploy.json", result)
    for arm in arms:
        verdict = "meets" if arm["median_click_to_running_s"] <= GOAL_SECONDS else "misses"
        print(
            f"poll {arm['poll_seconds']} s: click→pending {arm['click_to_pending_s']}, "
            f"click→running {arm['click_to_running_s']} (median "
            f"{arm['median_click_to_running_s']} s, {verdict} the {GOAL_SECONDS} s goal)"
        )


if __name__ == "__main__":
    main()
