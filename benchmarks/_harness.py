"""Shared timing, profiling and results code of the ``bench_*.py`` scripts.

The scripts run as ``python benchmarks/bench_x.py``, so this folder is on ``sys.path`` and
they import this module as ``_harness``.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import json
import os
import platform
import pstats
import shutil
import statistics
import subprocess
import time
import tracemalloc
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
# What a benchmark's throw-away edgeloop project keeps out of git.
PROJECT_GITIGNORE = "/.prefect/\n/.dvcstore/\n/incoming/\n/mlflow/\n/.edgeloop/\n"


# ---------------------------------------------------------------------- timing
def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    """(wall seconds, result) of one call."""
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def medians(series: dict[str, list[float]]) -> dict[str, float]:
    return {k: statistics.median(v) for k, v in series.items()}


def rotation(names: list[str], i: int) -> list[str]:
    """Round ``i``'s order of the arms: rotated each round so no arm always runs after another."""
    return names[i % len(names) :] + names[: i % len(names)]


class Timings:
    """Wall and CPU seconds per named arm; CPU time is less disturbed by other processes."""

    def __init__(self) -> None:
        self.wall: dict[str, list[float]] = {}
        self.cpu: dict[str, list[float]] = {}

    def __call__(self, name: str, fn: Callable[[], Any]) -> Any:
        cpu0, wall0 = time.process_time(), time.perf_counter()
        out = fn()
        self.wall.setdefault(name, []).append(time.perf_counter() - wall0)
        self.cpu.setdefault(name, []).append(time.process_time() - cpu0)
        return out

    def rounds(self, arms: dict[str, Callable[[], Any]], repeat: int) -> None:
        """Time every arm ``repeat`` times, in a rotated order each round."""
        names = list(arms)
        for i in range(repeat):
            for name in rotation(names, i):
                self(name, arms[name])

    @staticmethod
    def medians(series: dict[str, list[float]]) -> dict[str, float]:
        return medians(series)


# ---------------------------------------------------------------------- memory and profile
def peak_memory(fn: Callable[[], Any]) -> float:
    """Peak MB tracemalloc saw above the baseline during one call."""
    gc.collect()
    tracemalloc.start()
    base, _ = tracemalloc.get_traced_memory()
    tracemalloc.reset_peak()
    out = fn()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    del out
    return round((peak - base) / 1e6, 1)


def profile(fn: Callable[[], Any], top: int) -> tuple[list[dict[str, Any]], str, float]:
    """cProfile one call: the ``top`` entries by own time, their printable text, total seconds."""
    prof = cProfile.Profile()
    prof.enable()
    fn()
    prof.disable()
    stats = pstats.Stats(prof)
    total: float = stats.total_tt  # type: ignore[attr-defined]
    rows = []
    for (file, line, func), (_cc, ncalls, tt, ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        short = file.split("site-packages/")[-1].replace(str(Path.cwd()) + "/", "")
        rows.append({"function": f"{short}:{line}({func})", "calls": ncalls,
                     "tottime_s": tt, "cumtime_s": ct})  # fmt: skip
    rows.sort(key=lambda r: r["tottime_s"], reverse=True)
    text = io.StringIO()
    pstats.Stats(prof, stream=text).sort_stats("tottime").print_stats(top)
    for r in rows:
        r["tottime_s"], r["cumtime_s"] = round(r["tottime_s"], 4), round(r["cumtime_s"], 4)
    return rows[:top], text.getvalue(), total


# ---------------------------------------------------------------------- results
def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def stamp(benchmark: str, **versions: str) -> dict[str, Any]:
    """The head of a results file: which benchmark, when, on what (``versions`` after Python)."""
    return {
        "benchmark": benchmark,
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        **versions,
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
    }


def write_results(out: Path, result: dict[str, Any]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


def arguments(doc: str | None) -> argparse.ArgumentParser:
    """A benchmark's argument parser, described by the first paragraph of its docstring."""
    return argparse.ArgumentParser(description=(doc or "").split("\n\n")[0])


def add_output(parser: argparse.ArgumentParser, name: str, check: str) -> None:
    """``--out`` (default ``results/<name>``) and ``--check`` (exit 1 when ``check``)."""
    parser.add_argument("--out", type=Path, default=RESULTS / name)
    parser.add_argument("--check", action="store_true", help=f"exit 1 when {check}")


# ---------------------------------------------------------------------- projects
def git(cwd: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True)


def new_repo(path: Path) -> None:
    """An empty git repository at ``path`` (replacing what is there) for a benchmark project."""
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    git(path, "init", "-q")
    git(path, "config", "user.name", "edgeloop bench")
    git(path, "config", "user.email", "bench@example.invalid")
    (path / ".gitignore").write_text(PROJECT_GITIGNORE, encoding="utf-8")
