"""Team mode by configuration alone: the same project against a real MLflow tracking server."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import free_port, run_cli


@pytest.mark.slow
def test_retrain_registers_and_lineage_reads_on_an_mlflow_server(
    project: Path, tmp_path: Path
) -> None:
    import httpx

    port = free_port()
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    server = subprocess.Popen(
        [str(Path(sys.executable).with_name("mlflow")), "server",
         "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
         "--artifacts-destination", (tmp_path / "artifacts").as_uri(),
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 180
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert server.poll() is None and time.monotonic() < deadline, "mlflow server failed"
            time.sleep(0.5)
        team = {"MLFLOW_TRACKING_URI": url}
        res = run_cli("retrain", "--reason", "team", "--json", cwd=project, env=team)
        assert res.returncode == 0, res.stderr[-3000:]
        out = json.loads(res.stdout)
        assert out["status"] == "registered" and out["alias"] == "champion"
        lineage = run_cli("lineage", "champion", "--json", cwd=project, env=team)
        assert lineage.returncode == 0, lineage.stderr[-3000:]
        assert json.loads(lineage.stdout)["version"] == out["version"]
        # Everything went to the server, nothing to the embedded store, and the model's files
        # to the server's artifact destination.
        assert not list((project / "mlflow").glob("*.db"))
        assert list((tmp_path / "artifacts").rglob("MLmodel"))
    finally:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait(timeout=30)
