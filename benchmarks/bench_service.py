"""How fast does ``edgeloop serve`` answer, against ``mlflow models serve``, and what does shadow cost?

In one run, on one machine, with the same registered model:

* builds a throw-away project under ``benchmarks/.work/service/`` (``git init`` +
  ``init_project`` with a seeded synthetic CSV of 20,000 labeled rows); fits the project's
  pipeline (one-hot ``region`` + a 20-tree ``RandomForestClassifier``, ``n_jobs`` unset) with
  ``pipelines.train.fit``; logs it to the project's MLflow store as ``log_retrain`` does (skops
  with trusted types, signature, ``pyfunc_predict_fn="predict_proba"``); registers it twice:
  v1 ``champion``, v2 (the same model) ``challenger``;
* serves it, one server at a time, in phases run in alternating order over ``--rounds``
  (ABC CBA ...): ``edgeloop serve`` with no challenger alias (shadow off), ``mlflow models
  serve -m models:/NAME@champion --env-manager local`` (one uvicorn worker, its default), and
  ``edgeloop serve`` with the challenger (shadow on). Each phase starts a fresh server, waits
  until it is ready, checks one answer against the model's own ``predict_proba``, then runs the
  load cases and stops the server (its whole process group);
* load comes from a second process (a small client script run with this interpreter) on
  127.0.0.1, keep-alive connections, one connection per client thread, bodies prepared before
  the clock starts. Each case has an untimed warm-up, a fixed request count and a time cap.

Cases: ``single_seq`` (1 row per request, 1 connection), ``single_c8`` (1 row, 8 connections),
``batch1000_seq`` (1,000 rows per request, 1 connection).

Goals: edgeloop (shadow off) >= 3x the requests/s of ``mlflow models serve`` on single rows;
shadow on / shadow off p99 <= 1.10 on single rows (sequential and 8 connections).

    .venv/bin/python benchmarks/bench_service.py [--rounds 3] [--client httpx|http.client]

The machine's load average is recorded with every phase: on a shared 2-core machine the client,
the server and other jobs compete for the same cores, so compare ratios from one run.

Writes ``benchmarks/results/service.json`` (``--out`` to change).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from _harness import (
    add_output,
    arguments,
    git,
    load_average,
    new_repo,
    stamp,
    write_results,
)

WORK = Path(__file__).resolve().parent / ".work"
#: The venv's bin folder, not resolved: sys.executable may be a symlink to a base interpreter.
BIN = Path(sys.executable).parent
HOST = "127.0.0.1"
TARGET = "label"
N_ESTIMATORS = 20
TRAIN_ROWS = 20_000
GOAL_THROUGHPUT = 3.0
GOAL_SHADOW_P99 = 1.10

#: name -> (rows per request, connections, requests, warm-up requests, time cap in seconds)
CASES: dict[str, tuple[int, int, int, int, float]] = {
    "single_seq": (1, 1, 3000, 200, 30.0),
    "single_c8": (1, 8, 6000, 400, 30.0),
    "batch1000_seq": (1000, 1, 150, 10, 30.0),
}
PHASES = ("edgeloop_off", "mlflow", "edgeloop_on")

# The load generator: a second process. Bodies are read from a file and encoded before the
# clock starts; each thread owns one keep-alive connection; the run stops at a fixed number of
# requests or at the time cap, whichever comes first.
CLIENT_SCRIPT = r"""
import itertools, json, statistics, sys, threading, time
cfg = json.loads(sys.argv[1])
with open(cfg["bodies"], encoding="utf-8") as f:
    bodies = [b.encode() for b in json.load(f)]
url, conc, total = cfg["url"], cfg["concurrency"], cfg["requests"]
warm_each = max(1, cfg["warmup"] // conc)

def connect():
    if cfg["client"] == "httpx":
        import httpx
        client = httpx.Client(timeout=120.0, limits=httpx.Limits(max_connections=1))
        headers = {"content-type": "application/json"}
        def post(body):
            return client.post(url, content=body, headers=headers).status_code
        return post, client.close
    import http.client, urllib.parse
    u = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=120.0)
    headers = {"content-type": "application/json"}
    def post(body):
        conn.request("POST", u.path, body, headers)
        r = conn.getresponse()
        r.read()
        return r.status
    return post, conn.close

lat = [[] for _ in range(conc)]
bad = [0] * conc
first_bad = []
ticket = itertools.count()
ready = threading.Barrier(conc + 1)
go = threading.Event()
deadline = [float("inf")]

def worker(k):
    post, close = connect()
    try:
        for i in range(warm_each):
            post(bodies[(k * 7919 + i) % len(bodies)])
        ready.wait()
        go.wait()
        mine, clock = lat[k], time.perf_counter
        while True:
            i = next(ticket)
            if i >= total or clock() > deadline[0]:
                break
            t = clock()
            status = post(bodies[i % len(bodies)])
            mine.append(clock() - t)
            if status != 200:
                bad[k] += 1
                if not first_bad:
                    first_bad.append(status)
    finally:
        close()

threads = [threading.Thread(target=worker, args=(k,)) for k in range(conc)]
for t in threads:
    t.start()
ready.wait()
t0 = time.perf_counter()
deadline[0] = t0 + cfg["max_seconds"]
go.set()
for t in threads:
    t.join()
elapsed = time.perf_counter() - t0
xs = sorted(x for part in lat for x in part)
n = len(xs)
q = statistics.quantiles(xs, n=100, method="inclusive") if n > 1 else xs * 99
print(json.dumps({
    "requests": n, "seconds": round(elapsed, 4),
    "req_per_s": round(n / elapsed, 2), "rows_per_s": round(n * cfg["rows"] / elapsed, 1),
    "p50_ms": round(q[49] * 1e3, 3), "p90_ms": round(q[89] * 1e3, 3),
    "p99_ms": round(q[98] * 1e3, 3), "max_ms": round(xs[-1] * 1e3, 3),
    "mean_ms": round(sum(xs) / n * 1e3, 3),
    "errors": sum(bad), "first_error_status": first_bad[0] if first_bad else None,
    "capped": n < total, "latencies_s": xs,
}))
"""


# ---------------------------------------------------------------------- helpers
def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def percentile(sorted_xs: list[float], q: float) -> float:
    """Inclusive-method percentile of sorted values (same as the client's)."""
    if len(sorted_xs) == 1:
        return sorted_xs[0]
    pos = (len(sorted_xs) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(sorted_xs) - 1)
    return sorted_xs[lo] + (sorted_xs[hi] - sorted_xs[lo]) * (pos - lo)


# ---------------------------------------------------------------------- the project
def set_training(config: Path) -> None:
    """training: a 20-tree random forest, n_jobs unset (one thread per call on both servers)."""
    import yaml

    data = yaml.safe_load(config.read_text(encoding="utf-8"))
    data["training"]["estimator"] = "sklearn.ensemble.RandomForestClassifier"
    data["training"]["params"] = {"n_estimators": N_ESTIMATORS}
    config.write_text(
        yaml.safe_dump(data, sort_keys=False, width=100, default_flow_style=None), encoding="utf-8"
    )


def build_project(path: Path) -> dict[str, Any]:
    """Project, model logged and registered (v1 champion, v2 challenger); returns what serves."""
    import mlflow
    import mlflow.sklearn
    from mlflow.models import infer_signature

    from edgeloop.core.config import load_settings
    from edgeloop.demo.synthetic import synthetic_frame
    from edgeloop.models.training import _requirements, _trusted_types
    from edgeloop.stack.init import init_project
    from edgeloop.tracking.registry import Registry
    from edgeloop.tracking.store import ensure_experiment, tracking_uri
    from pipelines import train as tr

    t0 = time.perf_counter()
    new_repo(path)
    source = path.parent / "service-source.csv"
    synthetic_frame(TRAIN_ROWS, seed=0).to_csv(source, index=False)
    init_project(path, data=source, target=TARGET)
    set_training(path / "edgeloop.yaml")
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", "edgeloop project for the service benchmark")
    settings = load_settings(path / "edgeloop.yaml")
    schema = settings.data_schema
    t1 = time.perf_counter()

    frame = synthetic_frame(TRAIN_ROWS, seed=0)
    model = tr.fit(frame, schema, settings.training, settings.seeds.train)
    t2 = time.perf_counter()

    exp = ensure_experiment(settings, "training")
    x_example = tr.features(frame.head(5), schema).astype({c: "float64" for c in schema.numeric})
    with mlflow.start_run(experiment_id=exp, run_name="service benchmark") as run:
        info = mlflow.sklearn.log_model(
            model,
            name="model",
            signature=infer_signature(x_example, model.predict_proba(x_example)),
            input_example=x_example,
            pip_requirements=_requirements(),
            serialization_format="skops",
            skops_trusted_types=_trusted_types(model),
            pyfunc_predict_fn="predict_proba",
        )
    registry = Registry(settings)
    champion, _ = registry.register(info.model_uri, run.info.run_id, "champion", "bench")
    challenger, _ = registry.register(info.model_uri, run.info.run_id, "challenger", "bench")
    t3 = time.perf_counter()
    return {
        "settings": settings,
        "registry": registry,
        "model": model,
        "tracking_uri": tracking_uri(settings),
        "model_name": settings.model_name,
        "champion": champion,
        "challenger": challenger,
        "setup_s": {
            "project": round(t1 - t0, 2),
            "fit": round(t2 - t1, 2),
            "log_register": round(t3 - t2, 2),
        },
    }


def write_bodies(work: Path, schema: Any) -> dict[str, Any]:
    """Request bodies for both servers (same rows), one JSON file per (server, rows) pair."""
    from edgeloop.demo.synthetic import synthetic_frame

    frame = synthetic_frame(5000, seed=1, labeled=False)
    columns = list(schema.features)
    frame = frame[columns]
    records = frame.to_dict(orient="records")
    values = frame.to_numpy().tolist()
    files: dict[str, Path] = {}

    def save(name: str, bodies: list[str]) -> None:
        files[name] = work / f"bodies-{name}.json"
        files[name].write_text(json.dumps(bodies), encoding="utf-8")

    single = range(500)
    save("edgeloop-1", [json.dumps({"rows": [records[i]]}) for i in single])
    save(
        "mlflow-1",
        [
            json.dumps({"dataframe_split": {"columns": columns, "data": [values[i]]}})
            for i in single
        ],
    )
    chunks = [range(k * 1000, (k + 1) * 1000) for k in range(5)]
    save("edgeloop-1000", [json.dumps({"rows": [records[i] for i in c]}) for c in chunks])
    save(
        "mlflow-1000",
        [
            json.dumps({"dataframe_split": {"columns": columns, "data": [values[i] for i in c]}})
            for c in chunks
        ],
    )
    return {"files": files, "check_frame": frame.head(1), "check_record": records[0]}


# ---------------------------------------------------------------------- servers
class Server:
    """One server subprocess in its own process group; ``stop`` ends the whole group."""

    def __init__(self, kind: str, project: Path, port: int, env: dict[str, str], log: Path):
        self.kind = kind
        self.port = port
        if kind == "mlflow":
            cmd = [
                sys.executable,
                str(BIN / "mlflow"),
                "models",
                "serve",
                "-m",
                env["BENCH_MODEL_URI"],
                "--env-manager",
                "local",
                "--host",
                HOST,
                "--port",
                str(port),
            ]
            self.ready_path, self.predict_path = "/ping", "/invocations"
        else:
            cmd = [sys.executable, str(BIN / "edgeloop"), "serve", "--port", str(port)]
            self.ready_path, self.predict_path = "/readyz", "/predict"
        self.cmd = cmd
        self.log = log
        self._log = log.open("w", encoding="utf-8")
        self.proc = subprocess.Popen(
            cmd,
            cwd=project,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    @property
    def base(self) -> str:
        return f"http://{HOST}:{self.port}"

    def wait_ready(self, timeout: float = 240.0) -> tuple[float, dict[str, Any]]:
        import httpx

        t0 = time.perf_counter()
        deadline = t0 + timeout
        while time.perf_counter() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.kind} exited early ({self.proc.returncode}): {self.tail()}"
                )
            try:
                r = httpx.get(self.base + self.ready_path, timeout=2.0)
                if r.status_code == 200:
                    body = r.json() if self.kind != "mlflow" else {}
                    return time.perf_counter() - t0, body
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        raise RuntimeError(f"{self.kind} not ready after {timeout:.0f} s: {self.tail()}")

    def tail(self) -> str:
        self._log.flush()
        return " | ".join(self.log.read_text(encoding="utf-8").strip().splitlines()[-8:])

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=20)
        # Whatever the group still holds (mlflow's uvicorn child), with or without the leader.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)
        self._log.close()


def check_answer(server: Server, bodies: dict[str, Any], model: Any) -> float:
    """Max abs difference between the server's probabilities and the model's, on one row."""
    import httpx

    want = model.predict_proba(bodies["check_frame"])[0].tolist()
    if server.kind == "mlflow":
        frame = bodies["check_frame"]
        payload = {
            "dataframe_split": {"columns": list(frame.columns), "data": frame.to_numpy().tolist()}
        }
        r = httpx.post(server.base + server.predict_path, json=payload, timeout=30.0)
        r.raise_for_status()
        got = r.json()["predictions"][0]
    else:
        payload = {"rows": [bodies["check_record"]]}
        r = httpx.post(server.base + server.predict_path, json=payload, timeout=30.0)
        r.raise_for_status()
        got = list(r.json()["predictions"][0]["probabilities"].values())
    if len(got) != len(want):
        raise RuntimeError(f"{server.kind}: {len(got)} probabilities, the model gives {len(want)}")
    diff = max(abs(a - b) for a, b in zip(got, want, strict=True))
    if diff > 1e-9:
        raise RuntimeError(f"{server.kind}: answers differ from the model's by {diff}")
    return diff


def edgeloop_metrics(server: Server) -> dict[str, float]:
    """The service's own counters: rows by alias, shadow and log drops, shadow queue depth,
    worker-process restarts."""
    import httpx

    text = httpx.get(server.base + "/metrics", timeout=10.0).text
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        for prefix in (
            "edgeloop_predicted_rows_total",
            "edgeloop_shadow_dropped_total",
            "edgeloop_prediction_log_dropped_total",
            "edgeloop_shadow_queue_depth",
            "edgeloop_worker_restarts_total",
        ):
            if line.startswith(prefix):
                key, _, value = line.rpartition(" ")
                out[key] = out.get(key, 0.0) + float(value)
    return out


def drain_shadow(server: Server, timeout: float = 60.0) -> float:
    """Wait until the challenger has caught up (so the next case starts from an idle worker)."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        if edgeloop_metrics(server).get("edgeloop_shadow_queue_depth", 0.0) == 0.0:
            break
        time.sleep(0.1)
    return time.perf_counter() - t0


def run_case(
    server: Server, bodies_file: Path, case: str, client: str, scale: float
) -> dict[str, Any]:
    rows, conc, requests, warmup, cap = CASES[case]
    cfg = {
        "url": server.base + server.predict_path,
        "bodies": str(bodies_file),
        "rows": rows,
        "concurrency": conc,
        "requests": max(1, int(requests * scale)),
        "warmup": max(conc, int(warmup * scale)),
        "max_seconds": cap,
        "client": client,
    }
    before = load_average()
    proc = subprocess.run(
        [sys.executable, "-c", CLIENT_SCRIPT, json.dumps(cfg)],
        capture_output=True,
        text=True,
        timeout=cap + 300,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"client for {case} failed: {proc.stderr.strip()[-800:]}")
    out = json.loads(proc.stdout)
    if out["errors"]:
        raise RuntimeError(
            f"{server.kind} {case}: {out['errors']} non-200 answers (first {out['first_error_status']})"
        )
    out["loadavg_before"] = before
    out["loadavg_after"] = load_average()
    return out


# ---------------------------------------------------------------------- the run
def phase_order(rounds: int) -> list[str]:
    order: list[str] = []
    for r in range(rounds):
        order += list(PHASES if r % 2 == 0 else reversed(PHASES))
    return order


def summarise(runs: list[dict[str, Any]], rows: int) -> dict[str, Any]:
    """Pooled over rounds: all latencies together, throughput = requests / seconds."""
    xs = sorted(x for r in runs for x in r["latencies_s"])
    n, secs = len(xs), sum(r["seconds"] for r in runs)
    return {
        "requests": n,
        "seconds": round(secs, 3),
        "req_per_s": round(n / secs, 2),
        "rows_per_s": round(n * rows / secs, 1),
        "p50_ms": round(percentile(xs, 0.50) * 1e3, 3),
        "p99_ms": round(percentile(xs, 0.99) * 1e3, 3),
        "per_round_req_per_s": [r["req_per_s"] for r in runs],
        "per_round_p50_ms": [r["p50_ms"] for r in runs],
        "per_round_p99_ms": [r["p99_ms"] for r in runs],
    }


def compare(summary: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Ratios of the pooled figures, and the goals; p99 ratios also as medians of rounds.

    The pooled p99 of a phase is that of all its rounds' requests together: one bad round
    (a neighbour's burst) moves it. The ratio of the per-round p99 medians is the steadier
    reading of the shadow cost; a goal is reported met only when both readings meet it.
    """

    def ratio(a: float, b: float) -> float:
        return round(a / b, 3)

    def per(phase: str, case: str, key: str, how: Any = None) -> float:
        s = summary[phase][case]
        return how(s[f"per_round_{key}"]) if how else s[key]

    on, off, ml = "edgeloop_on", "edgeloop_off", "mlflow"
    med = statistics.median
    ratios = {
        "throughput_edgeloop_off_over_mlflow": {
            c: ratio(per(off, c, "req_per_s"), per(ml, c, "req_per_s")) for c in CASES
        },
        "throughput_edgeloop_on_over_mlflow": {
            c: ratio(per(on, c, "req_per_s"), per(ml, c, "req_per_s")) for c in CASES
        },
        "p50_mlflow_over_edgeloop_off": {
            c: ratio(per(ml, c, "p50_ms"), per(off, c, "p50_ms")) for c in CASES
        },
        "p99_shadow_on_over_off": {
            c: ratio(per(on, c, "p99_ms"), per(off, c, "p99_ms")) for c in CASES
        },
        "p99_shadow_on_over_off_median_of_rounds": {
            c: ratio(per(on, c, "p99_ms", med), per(off, c, "p99_ms", med)) for c in CASES
        },
    }
    single = ("single_seq", "single_c8")
    thr = ratios["throughput_edgeloop_off_over_mlflow"]
    p99 = ratios["p99_shadow_on_over_off"]
    p99_med = ratios["p99_shadow_on_over_off_median_of_rounds"]
    goals = {
        "throughput_vs_mlflow_single_rows": {
            "goal": f">= {GOAL_THROUGHPUT}",
            "ratios": {c: thr[c] for c in single},
            "met": all(thr[c] >= GOAL_THROUGHPUT for c in single),
        },
        "shadow_on_over_off_p99_single_rows": {
            "goal": f"<= {GOAL_SHADOW_P99}",
            "ratios": {c: p99[c] for c in single},
            "ratios_median_of_rounds": {c: p99_med[c] for c in single},
            "met": all(max(p99[c], p99_med[c]) <= GOAL_SHADOW_P99 for c in single),
        },
    }
    return ratios, goals


def run(args: argparse.Namespace) -> dict[str, Any]:
    work = WORK / "service"
    WORK.mkdir(parents=True, exist_ok=True)
    started = load_average()
    print(f"load average at start: {started}", flush=True)
    built = build_project(work)
    print(f"project built: {built['setup_s']}", flush=True)
    bodies = write_bodies(WORK, built["settings"].data_schema)
    registry = built["registry"]
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["MLFLOW_TRACKING_URI"] = built["tracking_uri"]
    env["BENCH_MODEL_URI"] = f"models:/{built['model_name']}@champion"
    env.pop("MLFLOW_MODELS_WORKERS", None)  # the default: one uvicorn worker, like edgeloop

    phases: list[dict[str, Any]] = []
    results: dict[str, dict[str, list[dict[str, Any]]]] = {
        p: {c: [] for c in CASES} for p in PHASES
    }
    for i, phase in enumerate(phase_order(args.rounds)):
        kind = "mlflow" if phase == "mlflow" else "edgeloop"
        if phase == "edgeloop_on":
            registry.move_alias("challenger", built["challenger"], "bench: shadow on")
        elif phase == "edgeloop_off":
            registry.remove_alias("challenger", "bench: shadow off")
        server = Server(kind, work, free_port(), env, WORK / f"service-{i}-{phase}.log")
        record: dict[str, Any] = {"phase": phase, "loadavg_start": load_average(), "cases": {}}
        try:
            record["ready_s"], ready = server.wait_ready()
            record["ready_s"] = round(record["ready_s"], 2)
            if kind == "edgeloop":
                has_challenger = ready.get("challenger") is not None
                if has_challenger != (phase == "edgeloop_on"):
                    raise RuntimeError(f"{phase}: /readyz challenger = {ready.get('challenger')}")
                record["fast_path"] = (ready.get("champion") or {}).get("fast_path")
            record["check_max_abs_diff"] = check_answer(server, bodies, built["model"])
            for case, (rows, *_rest) in CASES.items():
                name = f"{'edgeloop' if kind == 'edgeloop' else 'mlflow'}-{rows}"
                before = edgeloop_metrics(server) if kind == "edgeloop" else {}
                out = run_case(server, bodies["files"][name], case, args.client, args.scale)
                if phase == "edgeloop_on":
                    out["shadow_drain_s"] = round(drain_shadow(server), 3)
                if kind == "edgeloop":
                    # What the service counted during this case (warm-up included).
                    after = edgeloop_metrics(server)
                    out["service_counters"] = {
                        k: v - before.get(k, 0.0)
                        for k, v in after.items()
                        if k != "edgeloop_shadow_queue_depth" and v - before.get(k, 0.0)
                    }
                results[phase][case].append(out)
                record["cases"][case] = {k: v for k, v in out.items() if k != "latencies_s"}
                print(
                    f"[{i + 1}] {phase:<13} {case:<14} {out['req_per_s']:>9.1f} req/s"
                    f" {out['rows_per_s']:>11.0f} rows/s  p50 {out['p50_ms']:7.2f} ms"
                    f"  p99 {out['p99_ms']:7.2f} ms  load {out['loadavg_after'][0]}",
                    flush=True,
                )
            if kind == "edgeloop":
                record["service_metrics"] = edgeloop_metrics(server)
        finally:
            server.stop()
        record["loadavg_end"] = load_average()
        phases.append(record)

    summary = {p: {c: summarise(results[p][c], CASES[c][0]) for c in CASES} for p in PHASES}

    ratios, goals = compare(summary)
    return {
        **stamp("service"),
        "versions": versions(),
        "client": args.client,
        "rounds": args.rounds,
        "scale": args.scale,
        "model": {
            "estimator": f"RandomForestClassifier(n_estimators={N_ESTIMATORS})",
            "train_rows": TRAIN_ROWS,
            "features": len(built["settings"].data_schema.features),
            "name": built["model_name"],
            "champion": built["champion"],
            "challenger": built["challenger"],
            "serialization": "skops",
        },
        "cases": {
            c: {
                "rows": r,
                "connections": k,
                "requests": int(n * args.scale),
                "warmup": w,
                "cap_s": t,
            }
            for c, (r, k, n, w, t) in CASES.items()
        },
        "servers": {
            "edgeloop": "edgeloop serve --port P (uvicorn, 1 process)",
            "mlflow": "mlflow models serve -m models:/NAME@champion --env-manager local"
            " (uvicorn, 1 worker: the default)",
        },
        "setup_s": built["setup_s"],
        "loadavg_start": started,
        "loadavg_end": load_average(),
        "phases": phases,
        "summary": summary,
        "ratios": ratios,
        "goals": goals,
    }


def versions() -> dict[str, str]:
    from importlib.metadata import version

    return {p: version(p) for p in ("mlflow", "scikit-learn", "uvicorn", "starlette", "httpx")}


def print_table(result: dict[str, Any]) -> None:
    print()
    print(f"{'phase':<13} {'case':<14} {'req/s':>9} {'rows/s':>11} {'p50 ms':>8} {'p99 ms':>8}")
    for phase, cases in result["summary"].items():
        for case, s in cases.items():
            print(
                f"{phase:<13} {case:<14} {s['req_per_s']:>9.1f} {s['rows_per_s']:>11.0f}"
                f" {s['p50_ms']:>8.2f} {s['p99_ms']:>8.2f}"
            )
    r = result["ratios"]
    print()
    for case in CASES:
        print(
            f"{case:<14} edgeloop/mlflow req/s {r['throughput_edgeloop_off_over_mlflow'][case]:>6.2f}"
            f"   shadow on/off p99 {r['p99_shadow_on_over_off'][case]:>5.2f}"
            f" (median of rounds {r['p99_shadow_on_over_off_median_of_rounds'][case]:.2f})"
        )
    for name, g in result["goals"].items():
        print(f"goal {name} {g['goal']}: {g['ratios']} -> {'met' if g['met'] else 'MISSED'}")
    print(f"load average: start {result['loadavg_start']}, end {result['loadavg_end']}")


def main(argv: list[str] | None = None) -> int:
    parser = arguments(__doc__)
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the three phases")
    parser.add_argument(
        "--client",
        choices=["httpx", "http.client"],
        default="httpx",
        help="the load generator's HTTP client (http.client costs the client less CPU)",
    )
    parser.add_argument(
        "--scale", type=float, default=1.0, help="multiply every case's request counts"
    )
    parser.add_argument("--keep", action="store_true", help="keep the project under .work/")
    add_output(parser, "service.json", "a goal is missed")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.scale <= 0:
        parser.error("--rounds must be >= 1 and --scale > 0")
    try:
        result = run(args)
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        if not args.keep:
            shutil.rmtree(WORK / "service", ignore_errors=True)
    print_table(result)
    write_results(args.out, result)
    print(f"wrote {args.out}")
    return 1 if args.check and not all(g["met"] for g in result["goals"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
