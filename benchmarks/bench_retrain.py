"""What does ``edgeloop retrain`` cost over a bare scikit-learn script, and what does a cache hit?

In one run, on one seeded synthetic dataset (1M labeled rows x 21 features by default; with
``--task regression`` a continuous target, ``edgeloop.demo.synthetic``):

* builds a throw-away project under ``benchmarks/.work/retrain/`` (``git init`` +
  ``init_project`` with the Parquet file, estimator ``HistGradientBoostingClassifier`` (or
  ``HistGradientBoostingRegressor``) with default params; the ``random_state`` comes from
  ``seeds.train``);
* baseline: a bare scikit-learn script in a cold subprocess (read the project's reference
  Parquet, the same hash-based 80/20 holdout, the same ``ColumnTransformer`` (categoricals as
  ordinal codes, the estimator told their positions, as ``build_pipeline`` does for it) +
  estimator, fit, predict the holdout, accuracy / macro-F1 / per-class metrics, or R² / MAE /
  RMSE for regression);
* edgeloop: ``edgeloop retrain --json --reason bench`` in a cold subprocess (the console script,
  cwd = the project), then ``edgeloop retrain --json`` again (same inputs: ``cached``);
* the overhead split: stack imports, a trivial Prefect flow (ephemeral server start + flow and
  task overhead), DVC (``is_clean`` + ``version``), data load (``DataStore.load_dataset``),
  MLflow logging (``log_retrain`` on an already trained model), and the Prefect task-run
  durations of the cold CLI run read back from its server;
* in this process: the cache hit warm (the flow called again after a warm-up), a warm forced
  retrain, and a cProfile of one forced retrain (top cumulative entries of edgeloop, pipelines,
  flows, mlflow, dvc and skops).

Goals: edgeloop cold CLI / baseline cold script <= 1.15; cache hit / full retrain <= 0.1.

    .venv/bin/python benchmarks/bench_retrain.py [--rows 1000000] [--repeat 3]
    .venv/bin/python benchmarks/bench_retrain.py --task regression

Bytecode: as ``bench_cli_help.py``, by default every process (this one, its children and the
Prefect server they start) writes and reuses ``.pyc`` files in a private temporary folder, and
an untimed warm-up (a small project: init, retrain, baseline) fills it before anything is timed.
``--bytecode inherit`` keeps the environment as it is.

Writes ``benchmarks/results/retrain.json`` (``retrain-regression.json``); the profile and the projects go to
``benchmarks/.work/retrain/``.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import json
import math
import os
import pstats
import re
import resource
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from statistics import median
from typing import Any

from _harness import (
    RESULTS,
    ROOT,
    add_output,
    arguments,
    git,
    new_repo,
    stamp,
    timed,
    write_results,
)

#: Everything this benchmark writes besides its JSON (git-ignored).
WORK = Path(__file__).resolve().parent / ".work" / "retrain"
#: The venv's bin folder, not resolved: sys.executable may be a symlink to a base interpreter.
BIN = Path(sys.executable).parent
EDGELOOP = [sys.executable, str(BIN / "edgeloop")]
ESTIMATORS = {
    "classification": "sklearn.ensemble.HistGradientBoostingClassifier",
    "regression": "sklearn.ensemble.HistGradientBoostingRegressor",
}
GOAL_FULL = 1.15
GOAL_CACHE = 0.1
TARGETS = {"classification": "label", "regression": "value"}
#: The metrics both arms report and must agree on.
METRICS = {
    "classification": ("accuracy", "macro_f1", "weighted_f1"),
    "regression": ("r2", "mae", "rmse"),
}
#: The imports the brief names ("the stack").
STACK_IMPORTS = "import prefect, mlflow, great_expectations, dvc.repo, sklearn.ensemble"
#: What a retrain actually imports (GX is not among them): the flow module and its lazy imports.
RETRAIN_IMPORTS = (
    "import flows.retrain, mlflow.sklearn, mlflow.models, dvc.repo, sklearn.ensemble,"
    " sklearn.compose, sklearn.metrics, skops.io, matplotlib.pyplot, pyarrow.parquet"
)
#: Profile entries worth listing: our code and the libraries it drives.
PROFILE_PATHS = re.compile(r"/(edgeloop|pipelines|flows|mlflow|dvc|dvc_data|skops)/")

# A user's script: nothing from edgeloop. The holdout replicates pipelines.train.holdout_mask
# (checked against it in the parent), the model pipelines.train.build_pipeline.
BASELINE_SCRIPT = r"""
import json, sys, time
t0 = time.perf_counter()
import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
from sklearn.metrics import (accuracy_score, f1_score, mean_absolute_error,
                             precision_recall_fscore_support, r2_score, root_mean_squared_error)
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OrdinalEncoder
t1 = time.perf_counter()
cfg = json.loads(sys.argv[1])
df = pd.read_parquet(cfg["path"])
t2 = time.perf_counter()
key = f"edgeloop{cfg['seed_split']:08d}"[-16:]
hashed = pd.util.hash_pandas_object(df["row_id"].astype("str"), index=False, hash_key=key)
hold = hashed.to_numpy(dtype=np.uint64) / float(2**64) < cfg["holdout_fraction"]
train, test = df[~hold], df[hold]
t3 = time.perf_counter()
# HistGradientBoosting splits on categories itself: ordinal codes, first, and their positions.
cats = cfg["categorical"]
pre = ColumnTransformer(
    [(f"category_{i}", OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=-1,
                                      encoded_missing_value=-1, max_categories=255), [c])
     for i, c in enumerate(cats)],
    remainder="passthrough",
    verbose_feature_names_out=False,
)
regression = cfg["task"] == "regression"
Estimator = HistGradientBoostingRegressor if regression else HistGradientBoostingClassifier
est = Estimator(random_state=cfg["seed_train"], categorical_features=list(range(len(cats))))
model = Pipeline([("features", pre), ("model", est)])
y_train = train[cfg["target"]].to_numpy()
model.fit(train[cfg["features"]], y_train.astype("float64") if regression else y_train)
t4 = time.perf_counter()
y_true = test[cfg["target"]].to_numpy()
y_pred = model.predict(test[cfg["features"]])
if regression:
    metrics = {
        "r2": float(r2_score(y_true, y_pred)),
        "mae": float(mean_absolute_error(y_true, y_pred)),
        "rmse": float(root_mean_squared_error(y_true, y_pred)),
    }
else:
    classes = cfg["classes"]
    metrics = {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, labels=classes, average="macro")),
        "weighted_f1": float(f1_score(y_true, y_pred, labels=classes, average="weighted")),
    }
    p, r, f, n = precision_recall_fscore_support(y_true, y_pred, labels=classes, zero_division=0)
    for i, c in enumerate(classes):
        metrics.update({f"class_{c}_precision": float(p[i]), f"class_{c}_recall": float(r[i]),
                        f"class_{c}_f1": float(f[i]), f"class_{c}_support": float(n[i])})
t5 = time.perf_counter()
print(json.dumps({
    "seconds": {"import": t1 - t0, "read": t2 - t1, "split": t3 - t2, "fit": t4 - t3,
                "evaluate": t5 - t4, "in_script": t5 - t0},
    "train_rows": int(len(train)), "holdout_rows": int(len(test)), "metrics": metrics,
}))
"""

# Prefect alone: as many tasks as the retrain flow, its two artifacts, nothing else.
TRIVIAL_FLOW_SCRIPT = r"""
import json, sys, time
t0 = time.perf_counter()
from edgeloop._internal import runtime
from edgeloop.core.config import load_settings
runtime.prepare(load_settings(sys.argv[1]))
from prefect import flow, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
t1 = time.perf_counter()

@task(name="bench-step", cache_policy=NO_CACHE)
def step(i: int) -> int:
    return i

@flow(name="bench-trivial")
def trivial() -> int:
    total = sum(step(i) for i in range(5))
    create_table_artifact(key="bench-table", table=[{"metric": "x", "value": total}])
    create_markdown_artifact(key="bench-markdown", markdown="# bench")
    return total

trivial()
t2 = time.perf_counter()
trivial()
t3 = time.perf_counter()
print(json.dumps({"import_prefect": t1 - t0, "first_flow": t2 - t1, "second_flow": t3 - t2}))
"""


CREATE_MLFLOW_STORE = r"""
import sys
from edgeloop._internal import runtime
from edgeloop.core.config import load_settings
settings = load_settings(sys.argv[1])
runtime.prepare(settings)
from edgeloop.tracking.store import ensure_experiment
from edgeloop.core.keys import TRAINING_EXPERIMENT
ensure_experiment(settings, TRAINING_EXPERIMENT)
"""


# ---------------------------------------------------------------------- helpers
def children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def run_cmd(
    cmd: list[str], *, cwd: Path, env: dict[str, str], ok: tuple[int, ...] = (0,)
) -> tuple[float, float, str]:
    """(wall s, CPU s of the reaped process tree, stdout) of one run; raise if it fails."""
    cpu0 = children_cpu()
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - start
    if proc.returncode not in ok:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-15:]
        raise RuntimeError(
            f"{shlex.join(cmd)} exited with {proc.returncode}:\n  " + "\n  ".join(tail)
        )
    return elapsed, children_cpu() - cpu0, proc.stdout


def last_json(stdout: str) -> dict[str, Any]:
    """The JSON object a command printed (the CLI prints it indented, after any other output)."""
    start = stdout.find("{")
    if start < 0:
        raise RuntimeError(f"no JSON in output: {stdout[-500:]!r}")
    obj, _ = json.JSONDecoder().raw_decode(stdout[start:])
    return obj


def set_estimator(config: Path, task: str) -> None:
    """training: HistGradientBoosting of the task, default params (random_state from seeds)."""
    import yaml

    data = yaml.safe_load(config.read_text(encoding="utf-8"))
    if data["schema"].get("task", "classification") != task:
        raise RuntimeError(f"init inferred task {data['schema'].get('task')!r}, expected {task!r}")
    data["training"]["estimator"] = ESTIMATORS[task]
    data["training"]["params"] = {}
    config.write_text(
        yaml.safe_dump(data, sort_keys=False, width=100, default_flow_style=None), encoding="utf-8"
    )


def commit_all(path: Path) -> None:
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", "edgeloop project for the retrain benchmark")


def baseline_args(settings: Any, parquet: Path) -> str:
    schema = settings.data_schema
    return json.dumps(
        {
            "path": str(parquet),
            "features": list(schema.features),
            "categorical": list(schema.categorical),
            "target": schema.target,
            "task": schema.task,
            "classes": list(schema.classes),
            "holdout_fraction": settings.training.holdout_fraction,
            "seed_split": settings.seeds.split,
            "seed_train": settings.seeds.train,
        }
    )


def check_holdout_replica(parquet: Path, settings: Any) -> int:
    """The baseline's inline holdout equals pipelines.train.holdout_mask: count of holdout rows."""
    import numpy as np
    import pandas as pd

    from pipelines.train import holdout_mask

    ids = pd.read_parquet(parquet, columns=["row_id"])["row_id"]
    ours = holdout_mask(ids, settings.training.holdout_fraction, settings.seeds.split)
    key = f"edgeloop{settings.seeds.split:08d}"[-16:]
    hashed = pd.util.hash_pandas_object(ids.astype("str"), index=False, hash_key=key)
    replica = hashed.to_numpy(dtype=np.uint64) / float(2**64) < settings.training.holdout_fraction
    if not np.array_equal(ours, replica):
        raise RuntimeError("the baseline's holdout differs from pipelines.train.holdout_mask")
    return int(ours.sum())


def flow_run_id(project: Path, run_id: str) -> str:
    """The Prefect flow run of an MLflow run, read from the store with a short-lived connection."""
    import sqlite3

    with contextlib.closing(sqlite3.connect(project / "mlflow" / "mlflow.db")) as db:
        row = db.execute(
            "SELECT value FROM tags WHERE run_uuid = ? AND key = 'prefect.flow_run_id'", (run_id,)
        ).fetchone()
    return row[0] if row else ""


def short(path: str) -> str:
    for marker in ("site-packages/", str(ROOT) + "/"):
        if marker in path:
            return path.split(marker, 1)[1]
    return path


def profile_top(prof: cProfile.Profile, top: int) -> tuple[list[dict[str, Any]], str]:
    """Top cumulative entries under PROFILE_PATHS (data and printable text)."""
    stats = pstats.Stats(prof)
    rows = []
    for (file, line, func), (_cc, nc, tt, ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        if PROFILE_PATHS.search(file):
            rows.append(
                {
                    "function": f"{short(file)}:{line}({func})",
                    "ncalls": nc,
                    "tottime": round(tt, 3),
                    "cumtime": round(ct, 3),
                }
            )
    rows.sort(key=lambda r: r["cumtime"], reverse=True)
    rows = rows[:top]
    lines = [f"{'cumtime':>8} {'tottime':>8} {'ncalls':>7}  function"]
    lines += [
        f"{r['cumtime']:>8.3f} {r['tottime']:>8.3f} {r['ncalls']:>7}  {r['function']}" for r in rows
    ]
    return rows, "\n".join(lines)


# ---------------------------------------------------------------------- steps
def build_project(path: Path, source: Path, rows: int, seed: int, task: str) -> dict[str, float]:
    """The measured project, built in this process with ``init_project``."""
    from edgeloop.demo.synthetic import synthetic_frame
    from edgeloop.stack.init import init_project

    t_gen, frame = timed(lambda: synthetic_frame(rows, seed=seed, labeled=True, task=task))
    t_write, _ = timed(lambda: frame.to_parquet(source, index=False))
    frame = None  # free it before init reads the file back
    new_repo(path)
    t_init, _ = timed(lambda: init_project(path, data=source, target=TARGETS[task]))
    set_estimator(path / "edgeloop.yaml", task)
    commit_all(path)
    return {"generate": t_gen, "write_source": t_write, "init_project": t_init}


def warm_up(env: dict[str, str], rows: int, seed: int, task: str) -> dict[str, float]:
    """Untimed in the comparison: fills the bytecode cache and the page cache on a small
    project (init, a first retrain on fresh stores, the baseline, the import lines)."""
    from edgeloop.core.config import load_settings
    from edgeloop.demo.synthetic import write_synthetic

    path = WORK / "warmup"
    source = WORK / f"warmup-{rows}.parquet"
    write_synthetic(source, rows, seed, task=task)
    new_repo(path)
    t_init, _, _ = run_cmd(
        [*EDGELOOP, "init", "--data", str(source), "--target", TARGETS[task]], cwd=path, env=env
    )
    set_estimator(path / "edgeloop.yaml", task)
    commit_all(path)
    t_retrain, _, out = run_cmd([*EDGELOOP, "retrain", "--json"], cwd=path, env=env)
    status = last_json(out)["status"]
    settings = load_settings(path / "edgeloop.yaml")
    ref = path / "data" / "reference" / "reference.parquet"
    script = WORK / "baseline_train.py"
    t_base, _, _ = run_cmd(
        [sys.executable, str(script), baseline_args(settings, ref)], cwd=WORK, env=env
    )
    for line in (STACK_IMPORTS, RETRAIN_IMPORTS):
        run_cmd([sys.executable, "-c", line], cwd=ROOT, env=env)
    return {
        "rows": rows,
        "cli_init_s": round(t_init, 3),
        "cli_first_retrain_fresh_stores_s": round(t_retrain, 3),
        "first_retrain_status": status,
        "baseline_s": round(t_base, 3),
    }


def prefect_task_runs(flow_run_id: str) -> dict[str, Any]:
    """Durations of the flow run and of each task run, read back from the Prefect server."""
    from uuid import UUID

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    def secs(run: Any) -> float | None:
        if run.start_time and run.end_time:
            return round((run.end_time - run.start_time).total_seconds(), 3)
        return None

    with get_client(sync_client=True) as client:
        fr = client.read_flow_run(UUID(flow_run_id))
        trs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[UUID(flow_run_id)]))
        )
    tasks: dict[str, float | None] = {}
    for tr in sorted(trs, key=lambda t: t.start_time or t.expected_start_time):
        tasks[tr.name.rsplit("-", 1)[0]] = secs(tr)
    return {"flow_run": secs(fr), "tasks": tasks}


def in_process(
    settings: Any, flow_run_ids: list[str], repeat: int, top: int, prof_path: Path
) -> dict[str, Any]:
    """Warm measurements in this process: cache hit, phases, MLflow logging, profile."""
    from edgeloop._internal import runtime

    runtime.prepare(settings)
    cfg = str(settings.source)
    out: dict[str, Any] = {}
    t_imp, _ = timed(lambda: __import__("flows.retrain"))
    from flows.retrain import retrain

    out["import_flows_retrain_s"] = t_imp
    # Warm-up: the first flow call starts the embedded Prefect server (cache hit: no training).
    out["first_flow_call_cached_s"], first = timed(lambda: retrain(reason="bench", config=cfg))
    if first.get("status") != "cached":
        raise RuntimeError(f"expected a cache hit in-process, got {first.get('status')}")
    cached = [timed(lambda: retrain(reason="bench", config=cfg))[0] for _ in range(repeat)]
    out["cached_s"] = cached

    # The cold CLI runs as the Prefect server saw them.
    from mlflow.tracking import MlflowClient

    from edgeloop.tracking.store import configure

    configure(settings)
    client = MlflowClient()
    try:
        out["cli_full_prefect"] = [prefect_task_runs(fid) for fid in flow_run_ids]
    except Exception as exc:  # informational only
        out["cli_full_prefect"] = [{"error": f"{type(exc).__name__}: {exc}"}]

    # What a cache hit does, step by step (the flow's tasks minus Prefect).
    from edgeloop.data.store import DataStore
    from edgeloop.data.versioning import DataVersioner
    from edgeloop.models.cache import cache_key, close_orphan_runs, find_cached
    from edgeloop.models.training import log_retrain, train_and_evaluate
    from edgeloop.tracking.registry import Registry

    versioner = DataVersioner(settings)
    steps: dict[str, list[float]] = {}

    def step(name: str, fn: Callable[[], Any]) -> Any:
        t, res = timed(fn)
        steps.setdefault(name, []).append(t)
        return res

    dataset = None
    for _ in range(repeat):
        step("recover", lambda: close_orphan_runs(settings) + Registry(settings).recover())
        version = step("dvc_version", versioner.version)
        step("dvc_is_clean", versioner.is_clean)
        dataset = step("load_dataset", DataStore(settings).load_dataset)
        key = step("cache_key", lambda v=version: cache_key(settings, v, 0))
        step("find_cached", lambda k=key: find_cached(settings, k))
    out["steps_s"] = {k: [round(x, 4) for x in v] for k, v in steps.items()}
    out["steps_median_s"] = {k: round(median(v), 4) for k, v in steps.items()}

    # MLflow logging on an already trained model (first call includes its lazy imports).
    t_train, trained = timed(lambda: train_and_evaluate(settings, dataset, max_rows=0))
    out["train_and_evaluate_s"] = t_train
    out["train_and_evaluate_phases_s"] = {k: round(v, 3) for k, v in trained.seconds.items()}
    log_times = []
    for i in range(2):
        t, (run_id, _uri) = timed(
            lambda i=i: log_retrain(
                settings,
                trained,
                data_version=version,
                key=f"bench-log-{i}",
                reason="bench: log_retrain timing",
                force=True,
                max_rows=0,
                flow_run_id="",
                flow_run_url="",
            )
        )
        # A decision tag keeps the next retrain from tagging it as an interrupted run.
        client.set_tag(run_id, "edgeloop.decision", "bench")
        log_times.append(t)
    out["log_retrain_s"] = {"first": log_times[0], "second": log_times[1]}
    trained = dataset = None  # free them before the next retrain loads its own copy

    # A full retrain, warm (imports done, server up); a champion exists now, so the forced
    # retrain also loads it and scores it on the holdout.
    t_full, full = timed(lambda: retrain(reason="bench-warm", force=True, config=cfg))
    out["full_forced_s"] = t_full
    out["full_forced_status"] = full.get("status")
    out["full_forced_timings"] = full.get("timings")

    prof = cProfile.Profile()
    t_prof, _ = timed(lambda: prof.runcall(retrain, reason="bench-profile", force=True, config=cfg))
    prof.dump_stats(prof_path)
    rows, text = profile_top(prof, top)
    out["profiled_full_forced_s"] = t_prof
    out["profile_top"] = rows
    out["profile_text"] = text
    return out


# ---------------------------------------------------------------------- main
def run(args: argparse.Namespace) -> tuple[dict[str, Any], str]:
    from edgeloop.core.config import load_settings

    WORK.mkdir(parents=True, exist_ok=True)
    (WORK / "baseline_train.py").write_text(BASELINE_SCRIPT.lstrip(), encoding="utf-8")
    pyc = Path(tempfile.mkdtemp(prefix="edgeloop-bench-pyc-"))
    if args.bytecode == "cached":
        # This process, its children and the Prefect server they start (it inherits os.environ).
        os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
        os.environ["PYTHONPYCACHEPREFIX"] = str(pyc)
        sys.dont_write_bytecode = False
        sys.pycache_prefix = str(pyc)
    if args.omp_threads:
        # Before anything imports scikit-learn here; children inherit it.
        os.environ["OMP_NUM_THREADS"] = str(args.omp_threads)
    # Children get the environment as it is now: before runtime.prepare() sets a Prefect home.
    env = dict(os.environ)
    once: dict[str, Any] = {}
    try:
        if not args.no_warmup:
            print(f"warm-up: a {args.warmup_rows:,}-row project (untimed) ...", flush=True)
            once["warmup"] = warm_up(env, args.warmup_rows, args.seed, args.task)

        project = WORK / "project"
        source = WORK / f"synthetic-{args.rows}-{args.seed}.parquet"
        print(f"building the {args.rows:,}-row project ...", flush=True)
        once.update(
            {
                k: round(v, 3)
                for k, v in build_project(project, source, args.rows, args.seed, args.task).items()
            }
        )
        settings = load_settings(project / "edgeloop.yaml")
        ref = project / "data" / "reference" / "reference.parquet"
        holdout_rows = check_holdout_replica(ref, settings)
        # Existing stores, as in steady use: the Prefect database (a trivial flow creates it)
        # and the MLflow tables; a project's very first retrain also pays for creating them.
        t_stores, _, _ = run_cmd(
            [sys.executable, "-c", TRIVIAL_FLOW_SCRIPT, str(project / "edgeloop.yaml")],
            cwd=project,
            env=env,
        )
        # In a subprocess: this process must not hold the MLflow database open while the
        # rounds below swap it for a copy (SQLAlchemy would keep reading the deleted file).
        t_mlflow, _, _ = run_cmd(
            [sys.executable, "-c", CREATE_MLFLOW_STORE, str(project / "edgeloop.yaml")],
            cwd=project,
            env=env,
        )
        once["create_prefect_db_s"] = round(t_stores, 3)
        once["create_mlflow_store_s"] = round(t_mlflow, 3)

        wall: dict[str, list[float]] = {}
        cpu: dict[str, list[float]] = {}

        def cold(name: str, cmd: list[str], cwd: Path, ok: tuple[int, ...] = (0,)) -> str:
            t, c, stdout = run_cmd(cmd, cwd=cwd, env=env, ok=ok)
            wall.setdefault(name, []).append(t)
            cpu.setdefault(name, []).append(c)
            print(f"  {name:<24} {t:8.2f} s wall {c:8.2f} s CPU", flush=True)
            return stdout

        print("imports (cold subprocesses) ...", flush=True)
        for _ in range(args.repeat):
            cold("imports_stack", [sys.executable, "-c", STACK_IMPORTS], ROOT)
            cold("imports_retrain", [sys.executable, "-c", RETRAIN_IMPORTS], ROOT)
            cold("imports_baseline", [sys.executable, "-c", BASELINE_SCRIPT.split("t1 =")[0]], ROOT)

        # Every full round starts from the same MLflow store (experiment, no runs, no model):
        # each edgeloop retrain is then a project's first, registering the champion, with no
        # champion to score, like the baseline.
        snapshot = WORK / "mlflow-snapshot"
        shutil.rmtree(snapshot, ignore_errors=True)
        shutil.copytree(project / "mlflow", snapshot)
        script = WORK / "baseline_train.py"
        base_cmd = [sys.executable, str(script), baseline_args(settings, ref)]
        cli_cmd = [*EDGELOOP, "retrain", "--json", "--reason", "bench"]
        bases: list[dict[str, Any]] = []
        fulls: list[dict[str, Any]] = []
        flow_run_ids: list[str] = []
        for i in range(args.full_repeat):
            print(f"full retrain, round {i + 1}/{args.full_repeat} ...", flush=True)
            if i:
                shutil.rmtree(project / "mlflow")
                shutil.copytree(snapshot, project / "mlflow")
            order = ["baseline", "edgeloop"] if i % 2 == 0 else ["edgeloop", "baseline"]
            for arm in order:
                if arm == "baseline":
                    bases.append(last_json(cold("baseline_full", base_cmd, WORK)))
                    continue
                full = last_json(cold("edgeloop_cli_full", cli_cmd, project))
                if full.get("status") != "registered":
                    raise RuntimeError(f"expected a registered model, got {full.get('status')}")
                fulls.append(full)
                flow_run_ids.append(flow_run_id(project, full["run_id"]))

        print("cache hit (edgeloop CLI) and Prefect alone ...", flush=True)
        for _ in range(args.repeat):
            hit = last_json(cold("edgeloop_cli_cached", [*EDGELOOP, "retrain", "--json"], project))
            if hit.get("status") != "cached":
                raise RuntimeError(f"expected a cache hit, got {hit.get('status')}")
        trivial = []
        for _ in range(args.repeat):
            cmd = [sys.executable, "-c", TRIVIAL_FLOW_SCRIPT, str(project / "edgeloop.yaml")]
            trivial.append(last_json(cold("prefect_trivial_flow", cmd, project)))

        print("in-process: warm cache hit, phases, MLflow logging, profile ...", flush=True)
        warm = in_process(settings, flow_run_ids, args.repeat, args.top, args.profile_out)
    finally:
        shutil.rmtree(pyc, ignore_errors=True)
        if not args.keep:
            for p in (WORK / "project", WORK / "warmup", WORK / "mlflow-snapshot"):
                shutil.rmtree(p, ignore_errors=True)
            for p in WORK.glob("*.parquet"):
                p.unlink()

    return summarize(args, once, wall, cpu, bases, fulls, trivial, warm, holdout_rows, source)


def rounded(x: Any) -> Any:
    if isinstance(x, float):
        return round(x, 4)
    if isinstance(x, dict):
        return {k: rounded(v) for k, v in x.items()}
    if isinstance(x, list):
        return [rounded(v) for v in x]
    return x


def summarize(
    args: argparse.Namespace,
    once: dict[str, Any],
    wall: dict[str, list[float]],
    cpu: dict[str, list[float]],
    bases: list[dict[str, Any]],
    fulls: list[dict[str, Any]],
    trivial: list[dict[str, float]],
    warm: dict[str, Any],
    holdout_rows: int,
    source: Path,
) -> tuple[dict[str, Any], str]:
    med = {k: median(v) for k, v in wall.items()}
    cpu_med = {k: median(v) for k, v in cpu.items()}
    cli_full, base_full = med["edgeloop_cli_full"], med["baseline_full"]
    cli_cached = med["edgeloop_cli_cached"]
    warm_cached = median(warm["cached_s"])
    warm_full = warm["full_forced_s"]
    tri = {k: median([t[k] for t in trivial]) for k in trivial[0]}
    steps = warm["steps_median_s"]

    # Per round: the model work (split + fit + evaluate) and everything else. The fit moves by
    # tens of percent when another process takes a core (OpenMP threads wait for each other);
    # the rest is what edgeloop adds or saves, and is steadier.
    def model_s(t: dict[str, float], prefix: str, suffix: str) -> float:
        return sum(t[f"{prefix}{k}{suffix}"] for k in ("split", "fit", "evaluate"))

    base_model = [model_s(b["seconds"], "", "") for b in bases]
    cli_model = [model_s(f["timings"], "", "_seconds") for f in fulls]
    base_rest = [w - m for w, m in zip(wall["baseline_full"], base_model, strict=True)]
    cli_rest = [w - m for w, m in zip(wall["edgeloop_cli_full"], cli_model, strict=True)]
    phases_base = {
        k: median([b["seconds"][k] for b in bases])
        for k in ("import", "read", "split", "fit", "evaluate")
    }
    phases_base["interpreter start + exit"] = median(
        [w - b["seconds"]["in_script"] for w, b in zip(wall["baseline_full"], bases, strict=True)]
    )

    # The cold CLI's own record: the flow run and its task runs on the Prefect server.
    prefect_runs = [r for r in warm.get("cli_full_prefect", []) if "tasks" in r]
    phases_cli: dict[str, float] = {}
    if prefect_runs:
        names = list(prefect_runs[0]["tasks"])
        outside = [
            w - r["flow_run"] for w, r in zip(wall["edgeloop_cli_full"], prefect_runs, strict=False)
        ]
        phases_cli["outside the flow run: start, imports, Prefect server up/down"] = median(outside)
        for n in names:
            phases_cli[f"task {n}"] = median([r["tasks"].get(n) or 0.0 for r in prefect_runs])
        phases_cli["flow, between tasks: lock, cache lookup, artifacts, Prefect"] = median(
            [r["flow_run"] - sum(v or 0.0 for v in r["tasks"].values()) for r in prefect_runs]
        )
    for k in ("split", "fit", "evaluate"):
        phases_cli[f"  of which {k} (summary timings)"] = median(
            [f["timings"][f"{k}_seconds"] for f in fulls]
        )

    components = {
        "imports: stack line (prefect, mlflow, GX, dvc.repo, sklearn.ensemble)": med[
            "imports_stack"
        ],
        "imports: what a retrain imports": med["imports_retrain"],
        "imports: the baseline's (pandas, sklearn)": med["imports_baseline"],
        "Prefect: import": tri["import_prefect"],
        "Prefect: server start + first trivial flow (5 tasks, 2 artifacts)": tri["first_flow"],
        "Prefect: second trivial flow, server up": tri["second_flow"],
        "DVC: version() + is_clean() (warm)": steps["dvc_version"] + steps["dvc_is_clean"],
        "data: DataStore.load_dataset (warm)": steps["load_dataset"],
        "MLflow: log_retrain, first call in a process": warm["log_retrain_s"]["first"],
        "MLflow: log_retrain, warm": warm["log_retrain_s"]["second"],
        "MLflow: recover (orphan runs + registry), warm": steps["recover"],
        "MLflow: find_cached, warm": steps["find_cached"],
    }
    # Same fit, same predictions: equal up to the order of a sum (MAE, RMSE over 200k rows).
    same = all(
        math.isclose(b["metrics"][k], f["metrics"].get(k, math.nan), rel_tol=1e-9, abs_tol=1e-12)
        for b, f in zip(bases, fulls, strict=True)
        for k in METRICS[args.task]
    )
    rest_base, rest_cli, model_base = median(base_rest), median(cli_rest), median(base_model)
    ratios = {
        "full_cli_over_baseline": cli_full / base_full,
        "full_cli_over_baseline_cpu": cpu_med["edgeloop_cli_full"] / cpu_med["baseline_full"],
        # Both with the baseline's median model time: only what edgeloop adds around it differs.
        "full_cli_over_baseline_same_model_time": (model_base + rest_cli)
        / (model_base + rest_base),
        "cached_cli_over_full_cli": cli_cached / cli_full,
        "cached_warm_over_full_warm": warm_cached / warm_full,
        "cached_warm_over_full_cli": warm_cached / cli_full,
    }
    goals = {
        "full_cli_over_baseline": GOAL_FULL,
        "cached_cli_over_full_cli": GOAL_CACHE,
        "cached_warm_over_full_warm": GOAL_CACHE,
    }
    result = {
        **stamp("retrain"),
        "load_average_at_end": os.getloadavg()[0],
        "rows": args.rows,
        "seed": args.seed,
        "repeat": args.repeat,
        "full_repeat": args.full_repeat,
        "bytecode": args.bytecode,
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS", ""),
        "task": args.task,
        "estimator": ESTIMATORS[args.task],
        "source_parquet_mb": round(source.stat().st_size / 1e6, 1) if source.exists() else None,
        "holdout_rows": holdout_rows,
        "train_rows": bases[0]["train_rows"],
        "same_metrics_as_baseline": same,
        "metrics": {
            "baseline": {k: bases[0]["metrics"][k] for k in METRICS[args.task]},
            "edgeloop": {k: fulls[0]["metrics"].get(k) for k in METRICS[args.task]},
        },
        "once_s": once,
        "times_s": wall,
        "cpu_s": cpu,
        "median_s": med,
        "cpu_median_s": cpu_med,
        "model_work_s": {"baseline": base_model, "edgeloop_cli": cli_model},
        "everything_but_model_work_s": {"baseline": base_rest, "edgeloop_cli": cli_rest},
        "baseline_phases_s": phases_base,
        "edgeloop_cli_phases_s": phases_cli,
        "edgeloop_cli_summary_timings_s": [f["timings"] for f in fulls],
        "components_s": components,
        "prefect_trivial_flow_s": tri,
        "in_process": {k: v for k, v in warm.items() if k != "profile_text"},
        "ratios": ratios,
        "goals": goals,
        "goals_met": {k: ratios[k] <= g for k, g in goals.items()},
    }
    return rounded(result), warm["profile_text"]


def print_seconds(title: str, seconds: dict[str, float]) -> None:
    print(title)
    for k, v in seconds.items():
        print(f"  {k:<66} {v:8.2f}")


def print_table(result: dict[str, Any], profile_text: str) -> None:
    med, cpu = result["median_s"], result["cpu_median_s"]
    print()
    print(
        f"{result['rows']:,} rows, {result['estimator'].rsplit('.', 1)[1]},"
        f" {result['train_rows']:,} train /"
        f" {result['holdout_rows']:,} holdout rows; same metrics as the baseline:"
        f" {result['same_metrics_as_baseline']}"
    )
    print(
        f"{'cold subprocess':<26} {'runs':>4} {'median s':>9} {'min s':>8} {'max s':>8} {'CPU s':>8}"
    )
    for name, m in med.items():
        ts = result["times_s"][name]
        print(
            f"{name:<26} {len(ts):>4} {m:>9.2f} {min(ts):>8.2f} {max(ts):>8.2f} {cpu[name]:>8.2f}"
        )
    print_seconds("\nbaseline script phases (median s):", result["baseline_phases_s"])
    print_seconds("edgeloop cold CLI phases (median s):", result["edgeloop_cli_phases_s"])
    r = result["everything_but_model_work_s"]
    print(
        f"everything but split+fit+evaluate: baseline {median(r['baseline']):.2f} s,"
        f" edgeloop CLI {median(r['edgeloop_cli']):.2f} s"
    )
    print_seconds("components measured on their own (s):", result["components_s"])
    ip = result["in_process"]
    print(
        f"in-process (warm): cache hit median {median(ip['cached_s']):.2f} s,"
        f" forced full retrain {ip['full_forced_s']:.2f} s; cache-hit steps: "
        + ", ".join(f"{k} {v:.3f}" for k, v in ip["steps_median_s"].items())
    )
    for k, v in result["ratios"].items():
        goal = result["goals"].get(k)
        verdict = "" if goal is None else f" (goal <= {goal}: {'met' if v <= goal else 'MISSED'})"
        print(f"ratio {k:<40} {v:.3f}{verdict}")
    print("\nprofile of one in-process forced retrain (top cumulative, our code and the stack):")
    print(profile_text)


def main(argv: list[str] | None = None) -> int:
    parser = arguments(__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--task", choices=tuple(ESTIMATORS), default="classification")
    parser.add_argument(
        "--repeat", type=int, default=3, help="runs of the cheap arms (imports, cache hits)"
    )
    parser.add_argument(
        "--full-repeat", type=int, default=3, help="rounds of baseline + edgeloop full retrain"
    )
    parser.add_argument("--warmup-rows", type=int, default=20_000)
    parser.add_argument("--no-warmup", action="store_true", help="skip the untimed warm-up")
    parser.add_argument(
        "--omp-threads",
        type=int,
        default=0,
        help="set OMP_NUM_THREADS for every process (0: leave it as it is)",
    )
    parser.add_argument("--bytecode", choices=("cached", "inherit"), default="cached")
    parser.add_argument("--top", type=int, default=30, help="profile entries to list")
    parser.add_argument("--keep", action="store_true", help="keep the projects and Parquet files")
    parser.add_argument(
        "--profile-out", type=Path, default=WORK / "retrain.prof", help="cProfile stats file"
    )
    add_output(parser, "retrain.json", "a goal is missed")
    args = parser.parse_args(argv)
    if args.task == "regression" and args.out == RESULTS / "retrain.json":
        args.out = RESULTS / "retrain-regression.json"
    if min(args.repeat, args.full_repeat) < 1 or args.rows < 1000:
        parser.error("--repeat and --full-repeat must be at least 1, --rows at least 1000")
    result, profile_text = run(args)
    print_table(result, profile_text)
    write_results(args.out, result)
    print(f"wrote {args.out} and {args.profile_out}")
    return 1 if args.check and not all(result["goals_met"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
