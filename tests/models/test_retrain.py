"""The retrain flow for real: Prefect harness, DVC in a temp git repo, MLflow registry on SQLite."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from edgeloop.core.config import load_settings
from edgeloop.core.errors import GateError
from edgeloop.data.versioning import read_pointer_md5
from tests.conftest import assert_gone, git_commit_all, production_batch, run_cli

# Every test retrains on real stores (Prefect flows, MLflow, DVC) or runs the CLI.
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_harness")]


def _retrain(project: Path, **kw: object) -> tuple[dict, bool]:
    from flows.retrain import retrain

    try:
        return retrain(config=str(project / "edgeloop.yaml"), **kw), False
    except GateError as exc:
        return exc.result, True


def _registry(project: Path):  # type: ignore[no-untyped-def]
    from edgeloop.tracking.registry import Registry

    return Registry(load_settings(project / "edgeloop.yaml"))


def _set_config(project: Path, text: str) -> None:
    cfg = project / "edgeloop.yaml"
    cfg.write_text(cfg.read_text() + text)


def _labeled_batch(project: Path, tmp_path: Path, seed: int) -> None:
    """Ingest a labeled batch so the dataset (and its version) grows."""
    from flows.ingest import ingest
    from tests.conftest import small_reference

    path = tmp_path / f"labeled-{seed}.csv"
    small_reference(80, seed).to_csv(path, index=False)
    ingest([str(path)], config=str(project / "edgeloop.yaml"))


def test_experiment_created_by_another_process_meanwhile_is_used(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The retrain flow's recovery task and its cache lookup both ask for the training
    experiment at once; on a new store both find none and both create it (CI saw the loser
    fail the demo's first retrain). Here the other creator is forced between the lookup and
    the creation, on the real store: the experiment it made is used."""
    from mlflow.tracking import MlflowClient

    from edgeloop.tracking.store import ensure_experiment, experiment_name

    settings = load_settings(project / "edgeloop.yaml")
    name = experiment_name(settings, "race")
    lookup = MlflowClient.get_experiment_by_name
    made: list[str] = []

    def lookup_then_lose_the_race(self: MlflowClient, wanted: str):  # type: ignore[no-untyped-def]
        found = lookup(self, wanted)
        if found is None and not made:
            made.append(MlflowClient().create_experiment(wanted))  # the other process
        return found

    monkeypatch.setattr(MlflowClient, "get_experiment_by_name", lookup_then_lose_the_race)
    assert ensure_experiment(settings, "race") == made[0]
    assert lookup(MlflowClient(), name).experiment_id == made[0]


def test_first_retrain_registers_champion_with_lineage(project: Path) -> None:
    from mlflow.tracking import MlflowClient

    from edgeloop.models.lineage import lineage

    out, failed = _retrain(project, reason="first model")

    assert not failed, out
    assert out["status"] == "registered" and out["alias"] == "champion" and out["version"] == "1"
    reg = _registry(project)
    assert reg.aliases() == {"champion": "1"}
    run = MlflowClient().get_run(out["run_id"])
    tags = run.data.tags
    assert tags["dvc.data_version"] == read_pointer_md5(project / "data.dvc")
    assert len(tags["git.commit"]) == 40 and tags["git.dirty"] in ("true", "false")
    assert tags["prefect.flow_run_id"] and tags["prefect.flow_run_url"].startswith("http")
    assert (
        tags["config_hash"]
        and tags["seed.split"] == "42"
        and tags["edgeloop.reason"] == "first model"
    )
    assert tags["gate.min_macro_f1"] == "passed"
    for key in ("accuracy", "macro_f1", "class_0_f1", "class_2_recall", "fit_seconds"):
        assert key in run.data.metrics
    arts = {a.path for a in MlflowClient().list_artifacts(out["run_id"], "evaluation")}
    assert {
        "evaluation/confusion_matrix.png",
        "evaluation/metrics.csv",
        "evaluation/gates.json",
    } <= arts
    assert [a.path for a in MlflowClient().list_artifacts(out["run_id"], "lineage")] == [
        "lineage/data.dvc"
    ]
    model = reg.load("champion")
    settings = load_settings(project / "edgeloop.yaml")
    proba = model.predict_proba(production_batch()[list(settings.data_schema.features)])
    assert proba.shape == (60, 3)
    (event,) = reg.history()
    assert (event.alias, event.version, event.previous, event.reason) == (
        "champion",
        "1",
        "",
        "first model",
    )
    assert "@" in event.actor
    info = lineage(settings, "champion")
    assert info.data_version == tags["dvc.data_version"] and info.version == "1"
    assert info.alias_history[0]["reason"] == "first model"


def test_unchanged_inputs_are_skipped_and_force_retrains(project: Path, tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    first, _ = _retrain(project, reason="first")
    again, failed = _retrain(project, reason="nothing changed")
    assert not failed
    assert (
        again["status"] == "cached"
        and again["run_id"] == first["run_id"]
        and again["version"] == "1"
    )
    assert "--force" in again["message"]

    forced, _ = _retrain(project, reason="forced", force=True)
    assert forced["status"] == "registered" and forced["alias"] == "challenger"
    assert forced["champion_metrics"]["macro_f1"] == pytest.approx(first["metrics"]["macro_f1"])

    # New data: cache miss; same metric keys as the first run (comparable in the UI).
    _labeled_batch(project, tmp_path, seed=40)
    grown, _ = _retrain(project, reason="more data")
    assert grown["status"] == "registered" and grown["data_version"] != first["data_version"]
    keys = [set(MlflowClient().get_run(r["run_id"]).data.metrics) for r in (first, grown)]
    assert keys[0] == keys[1]
    assert _registry(project).aliases() == {"champion": "1", "challenger": grown["version"]}


def test_rejected_candidate_keeps_its_run_and_the_champion(project: Path) -> None:
    from mlflow.tracking import MlflowClient

    _retrain(project, reason="first")
    _set_config(project, "gates:\n  min_macro_f1: 0.9999\n  min_accuracy: 0.0\n")

    out, failed = _retrain(project, reason="too strict", force=True)

    assert failed and out["status"] == "rejected"
    assert "min_macro_f1" in out["message"] and "floor 0.9999" in out["message"]
    tags = MlflowClient().get_run(out["run_id"]).data.tags
    assert tags["gate.min_macro_f1"] == "failed" and "0.9999" in tags["gate.min_macro_f1.detail"]
    assert tags["edgeloop.decision"] == "rejected"
    assert _registry(project).aliases() == {"champion": "1"}
    # The same inputs again: skipped, and still reported as rejected.
    again, failed_again = _retrain(project, reason="again")
    assert failed_again and again["status"] == "cached" and "rejected" in again["message"]


def test_reproduce_rebuilds_the_model_from_its_record(project: Path, tmp_path: Path) -> None:
    from edgeloop.models.lineage import reproduce

    _retrain(project, reason="first")
    _labeled_batch(project, tmp_path, seed=41)  # data/ moves on; v1's version must be restored

    out = reproduce(load_settings(project / "edgeloop.yaml"), "1")

    assert out.metrics_match, out.metric_differences
    assert out.prediction_agreement == 1.0
    assert out.data_version != read_pointer_md5(project / "data.dvc")
    assert out.data_restored in ("present", "checked out", "pulled")


def test_bad_training_config_and_data(project: Path) -> None:
    from edgeloop.core.errors import EdgeloopError

    cfg = project / "edgeloop.yaml"
    base = cfg.read_text()
    cases = {
        "training:\n  estimator: sklearn.ensemble.NoSuchForest\n": "has no class NoSuchForest",
        "training:\n  params: {n_trees: 10}\n": "['n_trees'] are not parameters",
        "training:\n  params: {n_estimators: -3}\n": "n_estimators",
        "training:\n  min_train_rows: 100000\n": "dataset too small",
    }
    for extra, needle in cases.items():
        cfg.write_text(base + extra)
        with pytest.raises(EdgeloopError, match=needle.replace("[", r"\[").replace("]", r"\]")):
            _retrain(project, reason="bad", force=True)
    cfg.write_text(base)
    assert _registry(project).aliases() == {}


def test_second_retrain_is_refused_while_one_runs(project: Path) -> None:
    from edgeloop.core.errors import BusyError
    from edgeloop.models.cache import retrain_lock

    with (
        retrain_lock(load_settings(project / "edgeloop.yaml")),
        pytest.raises(BusyError, match="another retrain is running"),
    ):
        _retrain(project, reason="parallel")


def test_unreachable_mlflow_is_a_clear_error(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from edgeloop.core.errors import StoreError

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "3")
    before = read_pointer_md5(project / "data.dvc")
    with pytest.raises(StoreError, match=r"127\.0\.0\.1:9"):
        _retrain(project, reason="no server")
    assert read_pointer_md5(project / "data.dvc") == before


# ---------------------------------------------------------------------- kill -9
def _start_paused(project: Path, point: str) -> subprocess.Popen:
    exe = Path(sys.executable).with_name("edgeloop")
    env = {**os.environ, "EDGELOOP_FAULT": f"pause:{point}"}
    env.pop("PREFECT_HOME", None)
    return subprocess.Popen(
        [str(exe), "retrain", "--force", "--reason", f"killed at {point}"],
        cwd=project,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def _wait_for_marker(proc: subprocess.Popen, marker: str, timeout: float = 300) -> str:
    seen: list[str] = []
    found = threading.Event()

    def reader() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            seen.append(line)
            if marker in line:
                found.set()
                return

    threading.Thread(target=reader, daemon=True).start()
    deadline = time.monotonic() + timeout
    while not found.is_set() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert found.is_set(), "".join(seen)[-3000:]
    return "".join(seen)


@pytest.mark.slow
@pytest.mark.parametrize("point", ["train", "register", "after-alias"])
def test_kill_9_leaves_the_champion_serving_and_rerun_succeeds(project: Path, point: str) -> None:
    _retrain(project, reason="first")
    git_commit_all(project, "after first model")
    reg = _registry(project)
    proc = _start_paused(project, point)
    try:
        _wait_for_marker(proc, f"EDGELOOP_FAULT: paused at {point}")
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)

    # The champion is untouched whatever the point; no alias points at a half-made version.
    aliases = reg.aliases()
    assert aliases["champion"] == "1"
    for version in aliases.values():
        assert reg.version(version).tags.get("edgeloop.status") in ("ready", "pending")
    if point == "register":
        assert "challenger" not in aliases
        assert reg.version("2").tags["edgeloop.status"] == "pending"

    out, failed = _retrain(project, reason="rerun after crash", force=True)

    assert not failed and out["status"] == "registered" and out["alias"] == "challenger"
    final = reg.aliases()
    assert final["champion"] == "1" and final["challenger"] == out["version"]
    if point in ("register", "after-alias"):
        assert out["notes"], "the rerun should report what it recovered"
    if point == "register":
        assert reg.version("2").tags["edgeloop.status"] == "abandoned"
    # Every alias that moved is in the history, including a move the killed run did not record.
    history = [(e.alias, e.version) for e in reg.history()]
    assert ("challenger", out["version"]) in history
    if point == "after-alias":
        assert ("challenger", "2") in history
    assert json.dumps(out)  # the summary is JSON-serialisable


@pytest.mark.slow
def test_cli_cache_hit_answers_without_prefect(project: Path) -> None:
    """A retrain with unchanged inputs is answered from MLflow before Prefect starts: with the
    Prefect API pointed at a closed port, the hit still succeeds; a forced retrain cannot."""
    first = run_cli("retrain", "--reason", "first", "--json", cwd=project)
    assert first.returncode == 0, first.stderr[-2000:]
    no_prefect = {"PREFECT_API_URL": "http://127.0.0.1:9/api", "PREFECT_CLIENT_MAX_RETRIES": "0"}
    again = run_cli("retrain", "--reason", "again", "--json", cwd=project, env=no_prefect)
    assert again.returncode == 0, again.stderr[-2000:]
    out = json.loads(again.stdout)
    assert out["status"] == "cached"
    assert out["run_id"] == json.loads(first.stdout)["run_id"]
    forced = run_cli("retrain", "--force", "--json", cwd=project, env=no_prefect)
    assert forced.returncode == 3, forced.stderr[-2000:]
    assert "Prefect server at http://127.0.0.1:9/api is unreachable" in forced.stderr


def _embedded_servers(project: Path) -> list:  # type: ignore[type-arg]
    """Prefect server processes running on this project's Prefect home."""
    import psutil

    found = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            server = "prefect.server.api.server:create_app" in " ".join(p.info["cmdline"] or [])
            if server and p.environ().get("PREFECT_HOME", "").startswith(str(project)):
                found.append(p)
        except psutil.Error:
            continue
    return found


def test_flow_fits_in_a_worker_from_a_data_size(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Outside the CLI the flow starts its own worker for data of ``WORKER_FROM_BYTES`` or more
    (here lowered to 0), and fits small data in its own process."""
    from edgeloop.models import fit_worker

    log = project / ".edgeloop" / "logs" / "fit-worker.log"
    small, failed = _retrain(project, reason="small data: in process")
    assert not failed and small["status"] == "registered"
    assert not log.exists()
    monkeypatch.setattr(fit_worker, "WORKER_FROM_BYTES", 0)
    large, failed = _retrain(project, reason="large data: worker", force=True)
    assert not failed and large["status"] == "registered"
    assert log.read_text().count("fitting data") == 1
    assert large["metrics"] == small["metrics"]  # the same model either way
    assert not list((project / ".edgeloop" / "tmp").iterdir())


@pytest.mark.slow
def test_cli_embedded_server_and_fit_worker_live_and_die_with_the_command(project: Path) -> None:
    """The CLI boots the embedded Prefect server itself (first thing, on the other core) and
    starts the fit worker before the server is up; the flow adopts the worker (one fit per
    retrain). The run links to the project's UI, the recorded config hash is the file's, and
    server and worker stop with the command, even when it is killed with SIGKILL."""
    from edgeloop.tracking.store import configure

    fit_log = project / ".edgeloop" / "logs" / "fit-worker.log"
    res = run_cli("retrain", "--reason", "cli", "--json", cwd=project)
    assert res.returncode == 0, res.stderr[-2000:]
    out = json.loads(res.stdout)
    assert out["status"] == "registered"
    assert fit_log.read_text().count("fitting data") == 1, fit_log.read_text()
    assert not _embedded_servers(project)
    settings = load_settings(project / "edgeloop.yaml")
    configure(settings)
    import mlflow

    tags = mlflow.get_run(out["run_id"]).data.tags
    assert tags["prefect.flow_run_url"] == (
        f"http://127.0.0.1:4200/runs/flow-run/{tags['prefect.flow_run_id']}"
    )
    assert tags["config_hash"] == settings.config_hash()
    assert (project / ".edgeloop" / "logs" / "prefect-temporary-server.log").exists()

    # The worker pauses before its fit (EDGELOOP_FAULT reaches it); the command waits for it.
    proc = _start_paused(project, "fit")
    try:
        deadline = time.monotonic() + 120
        while "paused at fit" not in fit_log.read_text() and time.monotonic() < deadline:
            assert proc.poll() is None, proc.communicate()[0][-2000:]
            time.sleep(0.2)
        assert len(_fit_workers(project)) == 1, fit_log.read_text()
        deadline = time.monotonic() + 120
        while not _embedded_servers(project) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert len(_embedded_servers(project)) == 1
        proc.kill()  # the command only, not its process group: nothing runs its exit hooks
    finally:
        proc.wait(timeout=60)
    assert_gone(lambda: _embedded_servers(project), "the embedded Prefect server")
    assert_gone(lambda: _fit_workers(project), "the fit worker")


def _fit_workers(project: Path) -> list:  # type: ignore[type-arg]
    """Fit worker processes of this project."""
    import psutil

    found = []
    for p in psutil.process_iter(["cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if "edgeloop.models.fit_worker" in cmd and str(project) in cmd:
            found.append(p)
    return found


def test_fit_worker_gives_the_in_process_model_and_its_errors(project: Path) -> None:
    """The worker's model predicts what an in-process fit of the same inputs predicts; its
    errors reach the retrain with their type and message; it leaves no file behind."""
    from edgeloop.core.errors import TrainingError
    from edgeloop.models.cache import cache_key, current_dataset
    from edgeloop.models.fit_worker import FitWorker
    from edgeloop.models.training import train_and_evaluate

    settings = load_settings(project / "edgeloop.yaml")
    version, dataset = current_dataset(settings)
    here = train_and_evaluate(settings, dataset)
    worker = FitWorker(settings, version, cache_key(settings, version, 0), 0)
    there = train_and_evaluate(settings, dataset, fitting=worker)
    assert (there.y_pred == here.y_pred).all()
    assert there.metrics == here.metrics
    assert not worker._dir.exists() and worker.process.returncode == 0

    _set_config(project, "training:\n  params: {n_estimators: -3}\n")
    bad = load_settings(project / "edgeloop.yaml")
    worker = FitWorker(bad, version, cache_key(bad, version, 0), 0)
    with pytest.raises(TrainingError, match=r"n_estimators.* Got -3"):
        worker.result()
    assert not worker._dir.exists()
