"""`edgeloop up` / `edgeloop deploy` against a real Prefect server on 127.0.0.1.

The slow test starts the whole local stack (Prefect server, MLflow UI, served deployments) in a
subprocess, starts runs through the REST call the UI's Run button makes, checks what they left
in MLflow, follows a drift event to the retrain it starts, and stops the stack with Ctrl-C.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import (
    assert_gone,
    edit_config,
    free_port,
    new_project,
    run_cli,
    small_reference,
)

TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


# ---------------------------------------------------------------- quick checks, no server


@pytest.mark.slow
def test_deploy_without_a_server_says_how_to_get_one(project: Path) -> None:
    res = run_cli("deploy", cwd=project, timeout=120)
    assert res.returncode == 2
    assert "edgeloop up" in res.stderr and "PREFECT_API_URL" in res.stderr


@pytest.mark.slow
def test_bad_cron_or_timezone_is_an_error_naming_the_key(project: Path) -> None:
    edit_config(project, schedules={"retrain_cron": "0 25 * * *", "timezone": "Mars/Olympus"})
    for command in ("deploy", "up"):
        res = run_cli(command, cwd=project, timeout=120)
        assert res.returncode == 2, res.stderr
        assert "schedules.retrain_cron" in res.stderr
        assert "schedules.timezone" in res.stderr
        assert "edgeloop.yaml" in res.stderr


@pytest.mark.slow
def test_up_refuses_a_port_in_use_and_starts_nothing(project: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        res = run_cli(
            "up", "--prefect-port", str(port), "--mlflow-port", str(free_port()),
            cwd=project, timeout=120,
        )  # fmt: skip
    assert res.returncode == 2
    assert f"port {port}" in res.stderr and "--prefect-port" in res.stderr
    assert not (project / ".edgeloop" / "logs" / "prefect-server.log").exists()


@pytest.mark.slow
def test_up_killed_outright_leaves_nothing_running(project: Path, tmp_path: Path) -> None:
    """SIGKILL runs no exit hook: the kernel tells each child `up` started (the server, the
    MLflow UI, the deployments' runner) that its parent died, and each stops its own children
    as on Ctrl-C. Nothing holds the ports afterwards."""
    import psutil

    pport, mport = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_HOME", "PREFECT_API_URL")}
    out = tmp_path / "up.out"
    with out.open("w") as log:
        proc = subprocess.Popen(
            [str(Path(sys.executable).with_name("edgeloop")), "up",
             "--prefect-port", str(pport), "--mlflow-port", str(mport)],
            cwd=project, env=env, stdout=log, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
    family: list[psutil.Process] = []
    try:
        deadline = time.monotonic() + 300
        while "ready;" not in out.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, out.read_text()
            time.sleep(1)
        family = psutil.Process(proc.pid).children(recursive=True)
        names = {" ".join(p.cmdline()) for p in family}
        assert any("server start" in c for c in names), names
        assert any("mlflow ui" in c for c in names), names
        assert any(" deploy " in c for c in names), names
        proc.kill()
        proc.wait(timeout=10)

        def alive() -> list[psutil.Process]:
            return [p for p in family if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]

        assert_gone(alive, "what `edgeloop up` started", timeout=60)
        for port in (pport, mport):
            with socket.socket() as s:
                assert s.connect_ex(("127.0.0.1", port)) != 0, f"port {port} still served"
    finally:
        for p in [*family, psutil.Process(proc.pid)] if proc.poll() is None else family:
            with contextlib.suppress(psutil.Error):
                p.kill()


@pytest.mark.slow
def test_flow_runs_are_forked_from_a_preloaded_forkserver() -> None:
    # A canary for the fast start (edgeloop.stack.deploy.fork_flow_runs): it relies on Prefect's
    # runner calling run_flow_in_subprocess, which picks its start method by name.
    code = (
        "import inspect, prefect.flow_engine as fe, prefect.runner._starter_direct as sd\n"
        "from edgeloop.stack.deploy import fork_flow_runs\n"
        "assert 'multiprocessing.get_context(\"spawn\")' in inspect.getsource("
        "fe.run_flow_in_subprocess), 'Prefect no longer starts runs with spawn'\n"
        "assert sd.run_flow_in_subprocess is fe.run_flow_in_subprocess\n"
        "ctx = fork_flow_runs(['json'])\n"
        "assert fe.multiprocessing.get_context('spawn') is ctx\n"
        "print(ctx.get_start_method())\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "forkserver"


# ---------------------------------------------------------------- the real stack


class Stack:
    """A running `edgeloop up` and a small client for its Prefect REST API."""

    def __init__(self, root: Path, proc: subprocess.Popen[str], api: str, mlflow: str) -> None:
        import httpx

        self.root, self.proc, self.api, self.mlflow_url = root, proc, api, mlflow
        self.http = httpx.Client(base_url=api, timeout=30)

    def deployment(self, flow: str) -> dict[str, Any]:
        res = self.http.get(f"/deployments/name/{flow}/{self.root.name}")
        res.raise_for_status()
        return res.json()

    def click_run(self, flow: str, **parameters: Any) -> dict[str, Any]:
        """What the UI's Run button does: create a flow run of the deployment.

        A 503 (the server's SQLite busy under load: seen once in CI with a demo running beside
        it) is retried as Prefect's own client retries it; anything else fails at once."""
        dep = self.deployment(flow)
        for attempt in range(5):
            res = self.http.post(
                f"/deployments/{dep['id']}/create_flow_run", json={"parameters": parameters}
            )
            if res.status_code != 503 or attempt == 4:
                break
            time.sleep(2)
        res.raise_for_status()
        return res.json()

    def wait(self, run_id: str, timeout: float = 420) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            run = self.http.get(f"/flow_runs/{run_id}").json()
            if run["state"]["type"] in TERMINAL:
                return run
            time.sleep(1)
        raise AssertionError(f"flow run {run_id} did not finish in {timeout} s: {run['state']}")

    def wait_for_new_run(
        self, flow: str, after: dict[str, Any], timeout: float = 120
    ) -> dict[str, Any]:
        """The first run of ``flow``'s deployment created after the run ``after`` started."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            new = [r for r in self.runs_of(flow) if r["created"] > after["start_time"]]
            if new:
                assert len(new) == 1, f"{len(new)} {flow} runs started, expected one"
                return new[0]
            time.sleep(1)
        raise AssertionError(f"no {flow} run started within {timeout} s after {after['name']}")

    def how_runs_start(self, run_id: str, timeout: float = 120) -> set[str]:
        """While ``run_id`` runs, how the runner's flow-run processes were started."""
        import psutil

        seen: set[str] = set()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.http.get(f"/flow_runs/{run_id}").json()["state"]["type"] in TERMINAL:
                break
            for p in psutil.Process(self.proc.pid).children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    cmd = " ".join(p.cmdline())
                    parent = " ".join(p.parent().cmdline())
                    if "forkserver" in cmd and "forkserver" in parent:
                        seen.add("forkserver child")
                    elif " deploy " in parent:  # started by the runner itself
                        if "prefect.engine" in cmd:
                            seen.add("prefect.engine")
                        elif "spawn_main" in cmd:
                            seen.add("spawn")
            time.sleep(0.1)
        return seen

    def runs_of(self, flow: str) -> list[dict[str, Any]]:
        dep = self.deployment(flow)
        res = self.http.post(
            "/flow_runs/filter", json={"flow_runs": {"deployment_id": {"any_": [dep["id"]]}}}
        )
        res.raise_for_status()
        return res.json()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    import psutil

    base = tmp_path_factory.mktemp("up")
    root = new_project(
        base,
        "upproj",
        small_reference(rows=600, seed=4),
        # Four features: a batch drifts when one of them does.
        monitoring={"drift_share_threshold": 0.25},
        gates={"min_accuracy": 0.0, "min_macro_f1": 0.0},
        training={"params": {"n_estimators": 20, "n_jobs": 1}},
        project="upproj",  # deployment names are the project's
    )

    pport, mport = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_HOME", "PREFECT_API_URL")}
    exe = Path(sys.executable).with_name("edgeloop")
    log = (base / "up.out").open("w")
    proc = subprocess.Popen(
        [str(exe), "up", "--prefect-port", str(pport), "--mlflow-port", str(mport)],
        cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    out = base / "up.out"
    deadline = time.monotonic() + 300
    while "ready;" not in out.read_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"edgeloop up did not become ready:\n{out.read_text()}")
        time.sleep(1)
    s = Stack(root, proc, f"http://127.0.0.1:{pport}/api", f"http://127.0.0.1:{mport}")
    try:
        yield s
    finally:
        family = psutil.Process(proc.pid).children(recursive=True) if proc.poll() is None else []
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        try:
            proc.wait(timeout=90)
        finally:
            if proc.poll() is None:  # leave nothing running even when the check fails
                for p in [psutil.Process(proc.pid), *family]:
                    with contextlib.suppress(psutil.Error):
                        p.kill()
            log.close()
        # Nothing `up` started may outlive it: server, uvicorn, MLflow workers, the runner.
        time.sleep(1)
        alive = [p for p in family if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        assert not alive, f"orphaned processes after Ctrl-C: {[p.cmdline() for p in alive]}"
        assert proc.returncode == 0, out.read_text()


@pytest.mark.slow
def test_up_serves_every_deployment_with_a_form_and_schedules(stack: Stack) -> None:
    import httpx

    retrain = stack.deployment("retrain")
    schema = retrain["parameter_openapi_schema"]["properties"]
    # The UI renders these as the Run form.
    assert schema["reason"]["type"] == "string"
    assert schema["force"]["type"] == "boolean"
    assert schema["max_rows"]["type"] == "integer"
    assert [s["schedule"]["cron"] for s in retrain["schedules"]] == ["0 2 * * *"]
    assert retrain["schedules"][0]["schedule"]["timezone"] == "UTC"
    assert retrain["concurrency_limit"] == 1 or retrain.get("global_concurrency_limit")
    assert stack.deployment("ingest")["parameter_openapi_schema"]["required"] == ["paths"]
    weekly = stack.deployment("weekly-review")
    assert [s["schedule"]["cron"] for s in weekly["schedules"]] == ["0 9 * * 1"]
    for flow in ("score", "annotate-import", "shadow-evaluate", "monitor"):
        assert stack.deployment(flow)["parameters"]["config"].endswith("edgeloop.yaml")
    # The MLflow UI runs on the project's store.
    assert httpx.get(f"{stack.mlflow_url}/health", timeout=10).status_code == 200


@pytest.mark.slow
def test_run_button_retrain_then_drift_triggers_a_retrain(stack: Stack) -> None:
    import mlflow

    from edgeloop.core.config import load_settings
    from edgeloop.tracking.store import configure, experiment_name

    # 1. Click "Run" on the retrain deployment with parameters from the form.
    run = stack.click_run("retrain", reason="clicked in the UI", force=True)
    starts = stack.how_runs_start(run["id"])
    done = stack.wait(run["id"])
    assert done["state"]["type"] == "COMPLETED", done["state"]
    # The run is a fork of the forkserver that pre-imported the flows (the fast start), not a
    # `python -m prefect.engine` re-importing everything.
    assert starts == {"forkserver child"}, starts
    assert done["parameters"]["reason"] == "clicked in the UI"
    settings = load_settings(stack.root / "edgeloop.yaml")
    configure(settings)
    exp = mlflow.get_experiment_by_name(experiment_name(settings, "training"))
    found = mlflow.search_runs(
        [exp.experiment_id],
        filter_string=f"tags.`prefect.flow_run_id` = '{run['id']}'",
        output_format="list",
    )
    assert len(found) == 1
    assert found[0].data.tags["edgeloop.reason"] == "clicked in the UI"
    assert found[0].data.tags["edgeloop.decision"] == "registered"
    assert found[0].data.metrics["accuracy"] > 0.3

    # 2. A drifted batch: the reference's own high-income rows (inside the suite's ranges by
    # construction, so validation accepts all of them), without labels.
    pool = small_reference(rows=600, seed=4)
    drifted = pool[pool["income"] > pool["income"].quantile(0.6)].drop(columns=["label"])
    batch = stack.root / "incoming" / "drifted.csv"
    batch.parent.mkdir(exist_ok=True)
    drifted.to_csv(batch, index=False)
    ingest = stack.wait(stack.click_run("ingest", paths=[str(batch)])["id"])
    assert ingest["state"]["type"] == "COMPLETED", ingest["state"]["message"]

    # 3. Nobody clicks again: ingest's completion starts score, score's starts monitor, and
    # monitoring flags the drift and starts a retrain through the retrain deployment.
    score = stack.wait(stack.wait_for_new_run("score", after=ingest)["id"])
    assert score["state"]["type"] == "COMPLETED", score["state"]["message"]
    monitor = stack.wait(stack.wait_for_new_run("monitor", after=score)["id"])
    assert monitor["state"]["type"] == "COMPLETED", monitor["state"]["message"]
    triggered = stack.wait_for_new_run("retrain", after=monitor)
    assert triggered["parameters"]["reason"].startswith("drift")
    assert "income" in triggered["parameters"]["reason"]
    finished = stack.wait(triggered["id"])
    assert finished["state"]["type"] == "COMPLETED", finished["state"]


@pytest.mark.slow
def test_server_gone_mid_run_fails_clearly_and_the_rerun_resumes(
    project: Path, tmp_path: Path
) -> None:
    """Kill the Prefect server while a retrain trains: a clear error, nothing lost, rerun ok."""
    import httpx

    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(
        PREFECT_HOME=str(tmp_path / "prefect-home"), PREFECT_SERVER_ANALYTICS_ENABLED="false"
    )

    def start_server() -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            [str(Path(sys.executable).with_name("prefect")), "server", "start",
             "--host", "127.0.0.1", "--port", str(port)],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=2).status_code == 200:
                    return proc
            except httpx.HTTPError:
                time.sleep(0.5)
        os.killpg(proc.pid, signal.SIGKILL)
        raise AssertionError("prefect server did not start")

    api = {"PREFECT_API_URL": f"http://127.0.0.1:{port}/api", "PREFECT_CLIENT_MAX_RETRIES": "1"}
    release = tmp_path / "release"
    server = start_server()
    try:
        proc = subprocess.Popen(
            [str(Path(sys.executable).with_name("edgeloop")), "retrain", "--reason", "server gone"],
            cwd=project, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**{k: v for k, v in os.environ.items() if k != "PREFECT_HOME"}, **api,
                 "EDGELOOP_FAULT": "hold:train", "EDGELOOP_FAULT_RELEASE": str(release)},
        )  # fmt: skip
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert "paused at train" in line, line
        os.killpg(server.pid, signal.SIGKILL)  # the server goes away mid-run
        server.wait(timeout=30)
        release.touch()
        _out, err = proc.communicate(timeout=400)
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGKILL)
    assert proc.returncode == 3, err[-3000:]
    assert "Prefect server at http://127.0.0.1" in err and "unreachable" in err
    assert "Traceback" not in err, err[-3000:]

    # Nothing is lost: the model trained before the server went away is registered...
    from edgeloop.core.config import load_settings
    from edgeloop.tracking.registry import Registry
    from edgeloop.tracking.store import configure

    settings = load_settings(project / "edgeloop.yaml")
    configure(settings)
    assert Registry(settings).aliases().get("champion") == "1"

    # ...and the rerun, with the server back, resumes: the finished retrain is a cache hit.
    server = start_server()
    try:
        res = run_cli("retrain", "--reason", "server back", "--json", cwd=project, env=api)
    finally:
        os.killpg(server.pid, signal.SIGKILL)
    assert res.returncode == 0, res.stderr[-3000:]
    assert '"status": "cached"' in res.stdout or "cached" in res.stdout
