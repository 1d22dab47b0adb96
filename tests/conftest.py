"""Shared fixtures: real Prefect (harness), real DVC in a temp git repo, MLflow on SQLite."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

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


def small_schema():  # type: ignore[no-untyped-def]
    """The schema of ``small_reference``."""
    from edgeloop.core.config import SchemaSettings

    return SchemaSettings(
        features=["age", "income", "score", "region"],
        categorical=["region"],
        target="label",
        classes=[0, 1, 2],
    )


def shop_reference(seed: int = 0, rows: int = 200):  # type: ignore[no-untyped-def]
    """A small labeled table for the validation suites: 3 numeric features, ``color``, 3 classes."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "x1": rng.integers(0, 10, rows),  # observed 0..9
            "x2": rng.normal(5.0, 2.0, rows).round(3),
            "x3": rng.integers(100, 200, rows),  # observed ~100..199
            "color": pd.array(rng.choice(["red", "green", "blue"], rows), dtype="str"),
            "label": rng.integers(0, 3, rows),
        }
    )


def housing_reference(rows: int = 300, seed: int = 5, start: str = "2025-01-01"):  # type: ignore[no-untyped-def]
    """A labeled regression table: an id, a date, numeric features (one with missing values),
    a categorical, and a continuous target ``price`` (a noisy function of the features)."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    area = np.round(rng.uniform(30, 200, rows), 1)
    rooms = rng.integers(1, 7, rows)
    age = np.round(rng.uniform(0, 80, rows), 1).astype("float64")
    age[rng.random(rows) < 0.08] = np.nan
    district = rng.choice(["centre", "north", "harbour", "hills"], rows)
    bonus = pd.Series(district).map({"centre": 90.0, "north": 10.0, "harbour": 40.0, "hills": 25.0})
    price = 2.5 * area + 12 * rooms - 0.6 * np.nan_to_num(age, nan=40.0) + bonus.to_numpy()
    price = np.round(price + rng.normal(0, 15, rows), 2)
    return pd.DataFrame(
        {
            "listing_id": np.arange(rows) + 100_000 + seed * 10_000,
            "listed_on": pd.date_range(start, periods=rows, freq="h").strftime("%Y-%m-%d %H:%M"),
            "area": area,
            "rooms": rooms,
            "age": age,
            "district": pd.array(district, dtype="str"),
            "price": price,
        }
    )


def housing_schema():  # type: ignore[no-untyped-def]
    """The schema of ``housing_reference``."""
    from edgeloop.core.config import SchemaSettings

    return SchemaSettings(
        features=["area", "rooms", "age", "district"],
        categorical=["district"],
        target="price",
        task="regression",
        id="listing_id",
        time="listed_on",
        target_range=[0.0, 1000.0],
    )


def edit_config(root: Path, **sections: Any) -> None:
    """Update the project's ``edgeloop.yaml``: a dict updates that section, another value
    replaces the key."""
    import yaml

    cfg = root / "edgeloop.yaml"
    data = yaml.safe_load(cfg.read_text(encoding="utf-8"))
    for name, values in sections.items():
        if isinstance(values, dict):
            data.setdefault(name, {}).update(values)
        else:
            data[name] = values
    cfg.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")


def new_project(
    base: Path, name: str = "proj", reference: Any = None, target: str = "label", **sections: Any
) -> Path:
    """A user project made with ``init --data`` on a small CSV (``reference``, by default
    ``small_reference()``) in ``base / name``: git + DVC + embedded stores; ``sections`` go
    into its config (``edit_config``) before the first commit."""
    from edgeloop.stack.init import init_project

    root = base / name
    root.mkdir()
    git_init(root)
    src = base / "reference.csv"
    (small_reference() if reference is None else reference).to_csv(src, index=False)
    init_project(root, data=src, target=target)
    if sections:
        edit_config(root, **sections)
    git_commit_all(root, "init")
    return root


@pytest.fixture()
def project(tmp_path: Path) -> Path:
    """A user project made with ``init --data`` on a small CSV: git + DVC + embedded stores."""
    return new_project(tmp_path)


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
