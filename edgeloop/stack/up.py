"""``edgeloop up``: a Prefect server, the MLflow UI and the served deployments on 127.0.0.1.

Each child runs in its own process group, so stopping it (Ctrl-C, SIGTERM, or a child that
dies) takes its own children with it: ``mlflow ui`` spawns workers and ``prefect server start``
spawns uvicorn, and neither may outlive ``edgeloop up``. Each child also gets a signal from the
kernel when ``edgeloop up`` itself dies, even by SIGKILL (which runs no exit hook): SIGTERM, on
which the server and the MLflow UI stop their own children as on Ctrl-C.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from edgeloop._internal.runtime import die_with_parent, http_ok
from edgeloop.core.config import Settings, configured_prefect_api_url
from edgeloop.core.errors import UpError
from edgeloop.core.layout import Layout
from edgeloop.tracking.store import is_embedded, tracking_uri


@dataclass
class Child:
    """One supervised process (its own process group) and its log file."""

    name: str
    proc: subprocess.Popen[bytes]
    log: Path

    def alive(self) -> bool:
        return self.proc.poll() is None

    def tail(self, lines: int = 15) -> str:
        try:
            text = self.log.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM the group (lets the runner pause its deployments), then SIGKILL."""
        if self.proc.poll() is None:
            _signal_group(self.proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=timeout)
        # The leader may be gone while its children (uvicorn/job workers) still run.
        _signal_group(self.proc.pid, signal.SIGKILL)
        if self.proc.poll() is None:
            self.proc.wait(timeout=5)


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def port_in_use(host: str, port: int) -> bool:
    """Whether something already listens on ``host:port``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def check_port(host: str, port: int, what: str, option: str) -> None:
    if port_in_use(host, port):
        raise UpError(
            f"port {port} on {host} is in use ({what} needs it): stop what holds it, "
            f"or pass {option} with a free port"
        )


@dataclass
class Stack:
    """The running children, in start order (stopped in reverse)."""

    settings: Settings
    host: str = "127.0.0.1"
    prefect_port: int = 4200
    mlflow_port: int = 5000
    children: list[Child] = field(default_factory=list)
    urls: dict[str, str] = field(default_factory=dict)

    @property
    def logs(self) -> Path:
        return Layout.of(self.settings).logs

    def _spawn(
        self, name: str, argv: list[str], env: dict[str, str], on_orphan: int = signal.SIGTERM
    ) -> Child:
        """Start a child in its own process group; the kernel sends it ``on_orphan`` if ``up``
        dies without stopping it."""
        self.logs.mkdir(parents=True, exist_ok=True)
        log = self.logs / f"{name}.log"
        with log.open("ab") as out:
            proc = subprocess.Popen(
                argv,
                cwd=self.settings.root,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # its own process group: stopped as a whole
                # `up` starts no thread, so code between fork and exec is safe here.
                preexec_fn=(
                    functools.partial(die_with_parent, on_orphan)
                    if sys.platform == "linux"
                    else None
                ),
            )
        child = Child(name, proc, log)
        self.children.append(child)
        return child

    def _wait(self, child: Child, ready: Callable[[], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if ready():
                return
            if not child.alive():
                raise UpError(
                    f"{child.name} exited with code {child.proc.returncode}:\n{child.tail()}"
                )
            time.sleep(0.5)
        raise UpError(f"{child.name} was not ready after {timeout:.0f} s (log: {child.log})")

    def start(self, *, mlflow_ui: bool = True, deploy: bool = True, timeout: float = 180.0) -> None:
        """Start the server, the MLflow UI and the deployments; raise if one fails."""
        bindir = Path(sys.executable).parent
        external = configured_prefect_api_url() or self.settings.services.prefect_api_url
        start_mlflow = mlflow_ui and is_embedded(self.settings)
        # Check every port before starting anything: fail fast, leave nothing half-started.
        if not external:
            check_port(self.host, self.prefect_port, "the Prefect server", "--prefect-port")
        if start_mlflow:
            check_port(self.host, self.mlflow_port, "the MLflow UI", "--mlflow-port")
        env = dict(os.environ)
        if external:
            api = external
            self.urls["prefect"] = api.removesuffix("/api")
        else:
            env.pop("PREFECT_API_URL", None)
            server = self._spawn(
                "prefect-server",
                [str(bindir / "prefect"), "server", "start", "--host", self.host,
                 "--port", str(self.prefect_port)],
                env,
            )  # fmt: skip
            api = f"http://{self.host}:{self.prefect_port}/api"
            self.urls["prefect"] = f"http://{self.host}:{self.prefect_port}"
            self._wait(server, lambda: http_ok(f"{api}/health"), timeout)
        if start_mlflow:
            mlflow_env = {**env, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
            self._spawn(
                "mlflow-ui",
                [str(bindir / "mlflow"), "ui", "--backend-store-uri", tracking_uri(self.settings),
                 "--host", self.host, "--port", str(self.mlflow_port)],
                mlflow_env,
            )  # fmt: skip
            self.urls["mlflow"] = f"http://{self.host}:{self.mlflow_port}"
        if deploy:
            deploy_env = {
                **env,
                # Runs link to the MLflow UI started here (reports, artifacts).
                **(
                    {"EDGELOOP_MLFLOW_UI_URL": self.urls["mlflow"]} if "mlflow" in self.urls else {}
                ),
                "PREFECT_API_URL": api,
            }
            config = str(self.settings.source or self.settings.root / "edgeloop.yaml")
            runner = self._spawn(
                "deployments",
                [sys.executable, "-m", "edgeloop.cli", "deploy", "--config", config],
                deploy_env,
                # On SIGTERM the runner pauses its schedules through the API; when `up` started
                # the server, that server is dying too and the runner would retry for minutes.
                # SIGKILL then: its forkserver and resource tracker exit when their pipe closes.
                on_orphan=signal.SIGTERM if external else signal.SIGKILL,
            )
            self._wait(runner, lambda: _deployments_ready(api, self.settings), timeout)
        if "mlflow" in self.urls:
            ui = self.children[[c.name for c in self.children].index("mlflow-ui")]
            self._wait(ui, lambda: http_ok(f"{self.urls['mlflow']}/health"), timeout)

    def stop(self) -> None:
        for child in reversed(self.children):
            child.stop()

    def watch(self, poll: float = 0.5) -> Child | None:
        """Block until a child exits (returned) or the process is interrupted (None)."""
        try:
            while True:
                for child in self.children:
                    if not child.alive():
                        return child
                time.sleep(poll)
        except KeyboardInterrupt:
            return None


def _deployments_ready(api: str, settings: Settings) -> bool:
    """Whether every deployment of this project is registered on the server."""
    # lazy: edgeloop.stack.deploy imports Prefect (~2 s), which `up` never uses: it only
    # starts and watches processes, and those imports would slow the children it starts
    from edgeloop.stack.deploy import FLOWS

    req = urllib.request.Request(
        f"{api}/deployments/filter",
        data=json.dumps({"deployments": {"name": {"any_": [settings.project]}}}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(req, timeout=3) as resp:
            found = json.loads(resp.read())
    except OSError:
        return False
    return len(found) >= len(FLOWS)


def run_up(
    settings: Settings,
    *,
    prefect_port: int = 4200,
    mlflow_port: int = 5000,
    mlflow_ui: bool = True,
    echo: Callable[[str], None] = print,
) -> int:
    """Start the stack, report its URLs, supervise until Ctrl-C/SIGTERM; return an exit code."""
    stack = Stack(settings, prefect_port=prefect_port, mlflow_port=mlflow_port)

    def _term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    # Installed explicitly: a process started in the background by a non-interactive shell
    # inherits SIGINT as *ignored*, and Python then never raises KeyboardInterrupt.
    previous = signal.signal(signal.SIGTERM, _term)
    previous_int = signal.signal(signal.SIGINT, _term)
    try:
        try:
            stack.start(mlflow_ui=mlflow_ui)
        except KeyboardInterrupt:
            echo("interrupted while starting: stopping")
            return 130
        for name, url in stack.urls.items():
            echo(f"{name}: {url}")
        echo(f"deployments: {settings.project} (logs in {stack.logs})")
        echo("ready; Ctrl-C stops everything")
        died = stack.watch()
        if died is not None:
            echo(f"{died.name} exited with code {died.proc.returncode}:\n{died.tail()}")
            return 1
        echo("stopping")
        return 0
    finally:
        stack.stop()
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGINT, previous_int)
