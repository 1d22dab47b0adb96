"""Process environment for the embedded stack, applied by commands before Prefect is imported.

Prefect reads its settings when it is first imported, so ``prepare(settings)`` must run before
any ``import prefect``: the CLI calls it at the start of each command, never at import time.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import importlib
import importlib.util
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgeloop.core.config import ENV_TEMPORARY_PREFECT_API_URL, Settings
from edgeloop.core.errors import EdgeloopError
from edgeloop.core.layout import Layout


def prepare(settings: Settings, *, quiet: bool = True) -> None:
    """Project-local Prefect home, no telemetry, DVC's site cache inside the project."""
    env = os.environ
    # A project-local home: `prefect server start` run in the repo later shows these runs
    # (prefect.toml at the root points there too).
    env.setdefault("PREFECT_HOME", str(settings.path("prefect_home")))
    if settings.services.prefect_api_url:
        env["PREFECT_API_URL"] = settings.services.prefect_api_url
    # Offline machines otherwise log failed telemetry calls.
    env.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    env.setdefault("DO_NOT_TRACK", "1")
    # MLflow reads its own switch (DO_NOT_TRACK only when it is "true").
    env.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    # On a tracking server MLflow prints "View run ... at: URL" to stdout after every run,
    # which would corrupt `--json` output; edgeloop reports run ids and URLs itself.
    env.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    # The embedded server creates its database on first start; on a busy 2-core machine that
    # can take longer than Prefect's default wait of 20 s.
    env.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    env.setdefault("DVC_NO_ANALYTICS", "1")
    # A team MLflow server that is down should fail in seconds, not after minutes of retries.
    env.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    env.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    env.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
    env.setdefault("DVC_SITE_CACHE_DIR", str(settings.root / ".dvc" / "tmp" / "site-cache"))
    env.setdefault("GIT_PYTHON_REFRESH", "quiet")
    if quiet:
        # The CLI prints its own progress. Only the console handler is quieted: INFO lines
        # still reach the API, so the Prefect UI shows each run's full log.
        env.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "WARNING")
        env.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    # MLflow warns that git is missing in some set-ups; lineage is recorded by edgeloop itself.
    env.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


class _HideExpected:
    """Drop log records of errors edgeloop reports itself (a gate, a bad input): the CLI prints
    them once, cleanly; the traceback stays in the Prefect run's log in the UI."""

    def filter(self, record: object) -> bool:

        exc = getattr(record, "exc_info", None)
        if exc and (isinstance(exc[1], EdgeloopError) or api_unreachable(exc[1])):
            return False
        msg = str(getattr(record, "msg", ""))
        # A server that went away: Prefect logs every event it could not send, with the whole
        # event; the CLI says it once (see ``api_unreachable``).
        if any(m in msg for m in _LOST_SERVER_NOISE):
            return False
        return not ("Finished in state Failed" in msg and "Error" in msg and "edgeloop" in msg)


_LOST_SERVER_NOISE = (
    "failed to process item Event",
    "Unable to connect to 'ws",
    "Encountered exception during execution: ConnectError",
)


def api_unreachable(exc: BaseException | None) -> bool:
    """Whether ``exc`` (or its cause) is a lost connection to a server (Prefect, MLflow)."""
    seen = 0
    while exc is not None and seen < 10:
        mod = type(exc).__module__
        if mod.startswith(("httpx", "httpcore")) and type(exc).__name__ in (
            "ConnectError",
            "ConnectTimeout",
            "ReadError",
            "RemoteProtocolError",
            "ReadTimeout",
        ):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


def quiet_expected_errors() -> None:
    """Call after importing Prefect, before the first flow (every flow command does): installs
    the filter on the console handlers Prefect configured, and makes the temporary server a
    flow run may start die with the command (``adopt_prefect_server``)."""

    for handler in logging.getLogger().handlers:
        if type(handler).__name__ == "PrefectConsoleHandler":
            handler.addFilter(_HideExpected())
    adopt_prefect_server()


#: The switches Prefect's own temporary server runs with: no UI, ephemeral mode.
_EPHEMERAL_SWITCHES = {
    "PREFECT_UI_ENABLED": "0",
    "PREFECT__SERVER_EPHEMERAL": "1",
    "PREFECT__SERVER_FINAL": "1",
}
_WARM_UP_THREAD = "prefect-warm-up"
_adopted = False


def _server_command(port: int) -> list[str]:
    """The command of Prefect's temporary server (as ``SubprocessASGIServer`` runs it)."""
    spec = importlib.util.find_spec("prefect")  # finds the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("prefect is not installed")
    app_dir = str(Path(spec.submodule_search_locations[0]).parent)
    return [sys.executable, "-m", "uvicorn", "--app-dir", app_dir,
            "--factory", "prefect.server.api.server:create_app",
            "--host", "127.0.0.1", "--port", str(port),
            "--log-level", "error", "--lifespan", "on"]  # fmt: skip


def adopt_prefect_server() -> None:
    """Make the temporary server Prefect starts itself (a flow run with no server configured)
    die with this process, even by SIGKILL: Prefect starts it without a parent-death signal,
    so a killed command left it running. Nothing to do when a server is configured (or
    ``warm_up_prefect`` started edgeloop's own), or off Linux."""

    global _adopted
    # lazy: only flow commands get here, after they imported Prefect
    from prefect.settings import get_current_settings

    if _adopted or sys.platform != "linux" or get_current_settings().api.url:
        return
    # lazy: Prefect imports it itself to start the server (4 s), only when none is configured
    from prefect.server.api.server import SubprocessASGIServer

    class DiesWithCommand(SubprocessASGIServer):
        def _run_uvicorn_command(self) -> subprocess.Popen[Any]:
            env = {
                **os.environ,
                **_EPHEMERAL_SWITCHES,
                **get_current_settings().to_environment_variables(exclude_unset=True),
            }
            # The kernel sends the signal when the *thread* that started the child ends:
            # only the main thread (a flow run's start) and the warm-up thread (kept alive)
            # live as long as the process.
            name = threading.current_thread().name
            lasting = threading.current_thread() is threading.main_thread()
            return subprocess.Popen(
                _server_command(self.port or 0),
                env=env,
                preexec_fn=die_with_parent if lasting or name == _WARM_UP_THREAD else None,
            )

    # Prefect keeps one server per port and a flow run asks for the default one (port None):
    # this registers ours there, unless a server is registered already (a test harness).
    DiesWithCommand()
    _adopted = True


def warm_up_prefect(settings: Settings) -> Callable[[], None]:
    """Start the embedded Prefect server now; returns a ``join`` to call before the first flow.

    Without ``PREFECT_API_URL`` the first flow run of a process boots a server subprocess
    (7-15 s on a small machine) and only then starts work. Started first thing, it boots on
    the other core while the command imports MLflow, Prefect and scikit-learn and asks MLflow's
    cache. Before Prefect is imported this starts the same server Prefect would (its uvicorn
    app, with the same switches) without importing Prefect's server code here (4 s of imports
    that would hold the GIL against the command's own) and points this process at it; it is
    stopped at exit, after Prefect has flushed its logs and events. Once Prefect is imported
    (tests, the demo) Prefect's own temporary server is booted in a thread instead.
    ``join`` must be called before any flow runs: it waits until the server answers.
    """

    if os.environ.get("PREFECT_API_URL"):
        return lambda: None
    if "prefect" not in sys.modules:
        return _TemporaryServer(settings).join

    started = threading.Event()

    def boot() -> None:
        # A failure here is left to the flow's own start, which reports it with context.
        with contextlib.suppress(Exception):
            from prefect.server.api.server import SubprocessASGIServer

            adopt_prefect_server()
            SubprocessASGIServer().start()
        started.set()
        # The server's parent-death signal fires when the thread that started it ends: this
        # one lasts as long as the process.
        threading.Event().wait()

    threading.Thread(target=boot, name=_WARM_UP_THREAD, daemon=True).start()

    def join() -> None:
        started.wait()

    return join


class _TemporaryServer:
    """Prefect's temporary local server (``SubprocessASGIServer``), started by edgeloop."""

    def __init__(self, settings: Settings) -> None:

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        self.api_url = f"http://127.0.0.1:{port}/api"
        logs = Layout.of(settings).logs
        logs.mkdir(parents=True, exist_ok=True)
        self._log = (logs / "prefect-temporary-server.log").open("ab")
        self.process = subprocess.Popen(
            _server_command(port),
            env={**os.environ, **_EPHEMERAL_SWITCHES},
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=self._log,
            preexec_fn=_server_child if sys.platform == "linux" else None,
        )
        # Before Prefect is imported, so every part of it (its log and event threads too)
        # talks to this server. Links to runs point at the UI `prefect server start` serves on
        # the project's home, as with Prefect's own temporary server. The marker keeps
        # edgeloop from taking it for a configured server (config, triggers, lineage).
        os.environ["PREFECT_API_URL"] = self.api_url
        os.environ.setdefault("PREFECT_UI_URL", LOCAL_UI_URL)
        os.environ[ENV_TEMPORARY_PREFECT_API_URL] = self.api_url
        # atexit runs after Prefect's own exit hooks (threading's), which flush to the server.
        atexit.register(self.stop)

    def join(self) -> None:
        """Wait until the server answers (an error naming its log if it does not start)."""

        timeout = float(os.environ.get("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", 120))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            if http_ok(f"{self.api_url}/health"):
                return
            time.sleep(0.1)
        self.stop()
        raise EdgeloopError(
            f"the embedded Prefect server did not start within {timeout:.0f} s: see "
            f"{self._log.name}"
        )

    def stop(self) -> None:

        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


def http_ok(url: str) -> bool:
    """Whether ``url`` answers 200 within 2 s (a server's health probe)."""

    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


#: Niceness of what runs beside a retrain's fit worker (the command itself once the worker
#: runs, and the temporary server): the fit is the command's critical path, and the rest has
#: slack (the flow needs its data only when the fit ends, ~40 s later at 1M rows). On 2 cores
#: at one priority the command's import threads, the server and the worker shared the cores
#: and the fit lost a third of a core for seconds; niceness only matters under contention, so
#: the command's work after the fit runs at full speed on an idle machine.
BACKGROUND_NICENESS = 10


def yield_to_fit() -> None:
    """Lower this thread's priority (and that of the threads it starts: Linux's niceness is
    per thread and inherited) so the fit worker gets a core first."""
    with contextlib.suppress(OSError):
        os.nice(BACKGROUND_NICENESS)


def _server_child() -> None:
    die_with_parent()
    yield_to_fit()


def die_with_parent(sig: int | None = None) -> None:
    """In a child (server, fit worker) before it starts: get ``sig`` (default SIGTERM) when
    edgeloop dies (even by SIGKILL, which no exit hook sees), so no child outlives its command.
    Linux sends it when the thread that started the child ends: start children from the main
    thread."""

    with contextlib.suppress(Exception):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM if sig is None else sig)  # PR_SET_PDEATHSIG


#: Where links to flow runs point when Prefect runs embedded: the UI that
#: `prefect server start` serves by default on the project's Prefect home.
LOCAL_UI_URL = "http://127.0.0.1:4200"


def preimport(*modules: str) -> None:
    """Import, in a background thread, modules a command will need later.

    Imports hold the GIL, so this overlaps them with what does not: waiting for the Prefect
    server, SQLite queries, reading Parquet, scikit-learn's fit. Importing the same module in
    the main thread meanwhile just waits for this one (Python's per-module import lock).
    """

    def run() -> None:
        for name in modules:
            # Anything that fails here (a missing module, an import racing the main thread's)
            # is left to the main thread's own import of it, which reports it.
            with contextlib.suppress(Exception):
                importlib.import_module(name)

    threading.Thread(target=run, name="edgeloop-preimport", daemon=True).start()


def project_importable(root: Path) -> None:
    """Put the project root on ``sys.path`` (once), so ``training.fit`` may name a module of
    the user's checkout: a console script's path holds its own folder, not the working one."""
    import sys

    entry = str(Path(root).resolve())
    if entry not in sys.path:
        sys.path.insert(0, entry)
