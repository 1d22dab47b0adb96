"""Process environment for the embedded stack, applied by commands before Prefect is imported.

Prefect reads its settings when it is first imported, so ``prepare(settings)`` must run before
any ``import prefect``: the CLI calls it at the start of each command, never at import time.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable

from edgeloop.config import Settings


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
        from edgeloop.errors import EdgeloopError

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
    """Install the filter on the console handlers Prefect configured (call after importing it)."""
    import logging

    for handler in logging.getLogger().handlers:
        if type(handler).__name__ == "PrefectConsoleHandler":
            handler.addFilter(_HideExpected())  # type: ignore[arg-type]


def warm_up_prefect() -> Callable[[], None]:
    """Start the temporary Prefect server in the background; returns a ``join`` to call before
    the first flow runs.

    Without ``PREFECT_API_URL`` the first flow run of a process boots a server subprocess
    (10-20 s on a small machine) and only then starts work. Booting it while the command
    imports scikit-learn and MLflow overlaps the two: the subprocess has the other core.
    ``join`` must be called before any flow runs: Prefect marks the server as running before
    it answers, so a flow started earlier could talk to a server that is not up yet.
    """
    import threading

    if os.environ.get("PREFECT_API_URL"):
        return lambda: None

    def boot() -> None:
        # A failure here is left to the flow's own start, which reports it with context.
        with contextlib.suppress(Exception):
            from prefect.server.api.server import SubprocessASGIServer

            SubprocessASGIServer().start()

    thread = threading.Thread(target=boot, name="prefect-warm-up", daemon=True)
    thread.start()
    return thread.join


def preimport(*modules: str) -> None:
    """Import modules a command will need anyway (while the server boots); missing ones are
    left for the step that needs them to report."""
    import importlib

    for name in modules:
        with contextlib.suppress(ImportError):
            importlib.import_module(name)
