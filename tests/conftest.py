"""Shared fixtures: real Prefect (harness), real DVC in a temp git repo, MLflow on SQLite."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Before anything imports Prefect: a throwaway home, no telemetry, patient server start-up.
_HOME = Path(os.environ.setdefault("EDGELOOP_TEST_PREFECT_HOME", "/tmp/edgeloop-test-prefect-home"))
os.environ["PREFECT_HOME"] = str(_HOME)
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "WARNING")
os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
for var in ("MLFLOW_TRACKING_URI", "PREFECT_API_URL", "EDGELOOP_DVC_REMOTE_URL", "EDGELOOP_CONFIG"):
    os.environ.pop(var, None)


@pytest.fixture(scope="session")
def prefect_harness() -> Iterator[None]:
    """One real Prefect API (SQLite, temporary) for the whole session: ~10 s to enter."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (for servers the tests start)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def assert_gone(find: Callable[[], list], what: str, timeout: float = 30) -> None:  # type: ignore[type-arg]
    """Wait up to ``timeout`` s for the processes ``find`` lists to end; kill any left (nothing
    stays running even when the check fails), and fail naming them."""
    deadline = time.monotonic() + timeout
    while find() and time.monotonic() < deadline:
        time.sleep(0.5)
    left = find()
    names = []
    for p in left:
        with contextlib.suppress(Exception):
            names.append(" ".join(p.cmdline()))
            p.kill()
    assert not left, f"{what} outlived its killed command: {names}"


def git_init(path: Path) -> None:
    """A real git repository (DVC needs one) with an identity for commits."""
    subprocess.run(["git", "init", "-q", "-b", "main", str(path)], check=True)
    subprocess.run(["git", "config", "user.email", "t@t"], cwd=path, check=True)
    subprocess.run(["git", "config", "user.name", "t"], cwd=path, check=True)


def git_commit_all(path: Path, message: str = "snapshot") -> None:
    subprocess.run(["git", "add", "-A"], cwd=path, check=True)
    subprocess.run(["git", "commit", "-q", "--allow-empty", "-m", message], cwd=path, check=True)


def small_reference(rows: int = 240, seed: int = 3):  # type: ignore[no-untyped-def]
    """A small labeled table: 3 numeric features, 1 categorical, 3 classes."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, rows)
    return pd.DataFrame(
        {
            "age": rng.integers(18, 90, rows),
            "income": np.round(rng.normal(50_000, 12_000, rows) + 8_000 * y, 2),
            "score": np.round(rng.random(rows) + 0.3 * y, 4),
            "region": pd.array(rng.choice(["north", "south", "east"], rows), dtype="str"),
            "label": y,
        }
    )


def production_batch(rows: int = 60, seed: int = 11):  # type: ignore[no-untyped-def]
    """An unlabeled batch from the same distribution as ``small_reference``."""
    return small_reference(rows, seed).drop(columns=["label"])


@pytest.fixture()
def project(tmp_path: Path) -> Path:
    """A user project made with ``init --data`` on a small CSV: git + DVC + embedded stores."""
    from edgeloop.stack.init import init_project

    root = tmp_path / "proj"
    root.mkdir()
    git_init(root)
    src = tmp_path / "reference.csv"
    small_reference().to_csv(src, index=False)
    init_project(root, data=src, target="label")
    git_commit_all(root, "init")
    return root


def run_cli(
    *args: str, cwd: Path, timeout: float = 600, env: dict | None = None
) -> subprocess.CompletedProcess:
    """Run the installed ``edgeloop`` console script in a real subprocess."""
    exe = Path(sys.executable).with_name("edgeloop")
    full_env = {**os.environ, **(env or {})}
    # Each CLI process gets the project's own Prefect home (as a user would), not the tests'.
    full_env.pop("PREFECT_HOME", None)
    return subprocess.run(
        [str(exe), *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=full_env
    )
