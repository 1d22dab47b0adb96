"""Start and stop a REAL Label Studio server for tests, from its own venv.

The server lives in a separate venv (``.ci/labelstudio-venv`` makes it): label-studio pins
``python-json-logger==2.0.4``, which conflicts with Prefect, so it cannot be installed into the
project venv. The server runs on 127.0.0.1 at a free port, with a throwaway data dir (SQLite),
one admin user and a known legacy API token, all set non-interactively through
``label-studio start --username --password --user-token --enable-legacy-api-token``.

A fresh SQLite database takes about 2 minutes of Django migrations, so the first start migrates
into a template data dir kept beside the venv; later starts copy the template (seconds).

``EDGELOOP_TEST_LS_URL`` + ``EDGELOOP_TEST_LS_TOKEN`` point the tests at a server already
running instead (handy while developing).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / ".ci" / "labelstudio-venv"
USERNAME = "edgeloop-test@example.com"
PASSWORD = "edgeloop-test-password"
TOKEN = "edgeloop0test0token0123456789abcdef"


class LabelStudioUnavailable(RuntimeError):
    """The Label Studio venv cannot be made (no network, no wheel for this Python, ...)."""


@dataclass
class Server:
    url: str
    token: str
    process: subprocess.Popen | None = None
    log: Path | None = None
    data_dir: Path | None = None
    timings: dict[str, float] = field(default_factory=dict)

    def stop(self) -> None:
        """Stop the whole process group (the dev server forks nothing, but be sure)."""
        proc = self.process
        if proc is None or proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=20)
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=20)

    def log_tail(self, lines: int = 40) -> str:
        if self.log is None or not self.log.exists():
            return ""
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


def ensure_venv(timeout: float = 600) -> Path:
    """Run ``.ci/labelstudio-venv``; the path of the ``label-studio`` binary."""
    try:
        out = subprocess.run(
            ["bash", str(SCRIPT)], capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        raise LabelStudioUnavailable(f"{SCRIPT} did not finish within {timeout:.0f} s") from None
    if out.returncode != 0:
        # pip prints a lot of noise (e.g. missing find-links folders); keep the end.
        tail = "\n".join(out.stderr.strip().splitlines()[-15:])
        raise LabelStudioUnavailable(f"{SCRIPT} failed (exit {out.returncode}):\n{tail}")
    binary = Path(out.stdout.strip().splitlines()[-1])
    if not binary.exists():
        raise LabelStudioUnavailable(f"{SCRIPT} printed {binary}, which does not exist")
    return binary


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _authorized(url: str, token: str) -> bool:
    req = urllib.request.Request(
        f"{url}/api/projects?page_size=1", headers={"Authorization": f"Token {token}"}
    )
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _env(data_dir: Path) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        # Nothing of the project venv (or a Prefect/MLflow test setting) leaks into the server.
        if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "DJANGO_SETTINGS_MODULE")
    }
    env.update(
        LABEL_STUDIO_BASE_DATA_DIR=str(data_dir),
        DJANGO_DB="sqlite",
        LOG_LEVEL="WARNING",
        # No "latest version" look-up on PyPI, no telemetry.
        LATEST_VERSION_CHECK="false",
        COLLECT_ANALYTICS="false",
        SENTRY_DSN="",
        FRONTEND_SENTRY_DSN="",
    )
    return env


def _start(binary: Path, data_dir: Path, log: Path, port: int) -> subprocess.Popen:
    args = [
        str(binary),
        "start",
        "--no-browser",
        "--internal-host",
        "127.0.0.1",
        "--port",
        str(port),
        "--data-dir",
        str(data_dir),
        "--username",
        USERNAME,
        "--password",
        PASSWORD,
        "--user-token",
        TOKEN,
        "--enable-legacy-api-token",
        "--log-level",
        "WARNING",
    ]
    with log.open("ab") as fh:
        return subprocess.Popen(
            args,
            cwd=data_dir.parent,
            env=_env(data_dir),
            stdout=fh,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # its own process group: stop() kills the group
        )


def _wait(server: Server, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process is not None and server.process.poll() is not None:
            raise RuntimeError(
                f"label-studio exited with {server.process.returncode}:\n{server.log_tail()}"
            )
        if _healthy(server.url) and _authorized(server.url, server.token):
            return
        time.sleep(1)
    server.stop()
    raise RuntimeError(
        f"label-studio not healthy at {server.url} after {timeout:.0f} s:\n{server.log_tail()}"
    )


def _template(binary: Path, timeout: float) -> Path:
    """A migrated data dir with the test user (made once per venv; copied for each server)."""
    venv = binary.parent.parent
    # Keyed by the installed version (the venv script's stamp): a new version migrates anew.
    stamps = sorted(p.name for p in venv.glob(".edgeloop-label-studio-*"))
    version = stamps[-1].rsplit("-", 1)[-1] if stamps else "unknown"
    template = venv.parent / f"{venv.name}-template-{version}"
    if (template / ".edgeloop-ready").exists():
        return template
    shutil.rmtree(template, ignore_errors=True)
    building = venv.parent / f"{venv.name}-template-building"
    shutil.rmtree(building, ignore_errors=True)
    building.mkdir(parents=True)
    data = building / "data"
    server = Server(url=f"http://127.0.0.1:{free_port()}", token=TOKEN, log=building / "ls.log")
    server.process = _start(binary, data, server.log, int(server.url.rsplit(":", 1)[1]))
    try:
        _wait(server, timeout)
    finally:
        server.stop()
    (data / ".edgeloop-ready").write_text("migrated; user and token created\n")
    data.rename(template)
    shutil.rmtree(building, ignore_errors=True)
    return template


def start_server(workdir: Path, timeout: float = 300) -> Server:
    """A real Label Studio server with a throwaway data dir under ``workdir``."""
    url, token = os.environ.get("EDGELOOP_TEST_LS_URL"), os.environ.get("EDGELOOP_TEST_LS_TOKEN")
    if url and token:
        return Server(url=url.rstrip("/"), token=token)
    timings: dict[str, float] = {}
    t0 = time.monotonic()
    binary = ensure_venv()
    timings["venv_s"] = round(time.monotonic() - t0, 1)
    t0 = time.monotonic()
    template = _template(binary, timeout)
    timings["template_s"] = round(time.monotonic() - t0, 1)
    data = workdir / "ls-data"
    shutil.copytree(template, data)
    # The copy keeps the template's .env (its SECRET_KEY): harmless for a throwaway test server.
    port = free_port()
    server = Server(
        url=f"http://127.0.0.1:{port}",
        token=TOKEN,
        log=workdir / "label-studio.log",
        data_dir=data,
        timings=timings,
    )
    t0 = time.monotonic()
    server.process = _start(binary, data, server.log, port)
    _wait(server, timeout)
    timings["start_s"] = round(time.monotonic() - t0, 1)
    return server
