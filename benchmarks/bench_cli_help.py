"""How fast does ``edgeloop --help`` answer, compared with importing the stack it drives?

Runs, in the same session and alternating, ``python -c "import prefect, mlflow,
great_expectations"`` and ``edgeloop --help`` (the console script beside the interpreter),
``--repeat`` times each after one untimed warm-up of each, and reports the medians and their
ratio. Goal: ``edgeloop --help`` takes at most 0.1x the import time (the CLI imports lazily).

Bytecode: by default the children write and reuse ``.pyc`` files in a private temporary folder
(``PYTHONPYCACHEPREFIX``), as on a normal install, even when the environment sets
``PYTHONDONTWRITEBYTECODE`` and the venv holds no ``.pyc`` files (uv does not compile them):
recompiling prefect, mlflow and GX from source on every start nearly doubles the import time
and would flatter the ratio. ``--bytecode inherit`` keeps the caller's environment as it is.

    .venv/bin/python benchmarks/bench_cli_help.py [--repeat 5] [--bytecode cached|inherit]

Writes ``benchmarks/results/cli_help.json``.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _harness import ROOT, add_output, arguments, medians, stamp, write_results

GOAL_RATIO = 0.1

#: The venv's bin folder, not resolved: sys.executable may be a symlink to a base interpreter.
BIN = Path(sys.executable).parent
IMPORTS_CMD = [sys.executable, "-c", "import prefect, mlflow, great_expectations"]
# Run the console script with the same interpreter (what its shebang does, minus PATH lookups).
EDGELOOP_CMD = [sys.executable, str(BIN / "edgeloop"), "--help"]


def time_command(cmd: list[str], env: dict[str, str]) -> float:
    """Wall time of one run of ``cmd`` in seconds; raise if it fails."""
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        raise RuntimeError(
            f"{shlex.join(cmd)} exited with {proc.returncode}:\n  " + "\n  ".join(tail)
        )
    return elapsed


def run(repeat: int, edgeloop_cmd: list[str], bytecode: str) -> dict:
    """Warm both commands up once, then time them alternately ``repeat`` times."""
    commands = {"imports": IMPORTS_CMD, "edgeloop_help": edgeloop_cmd}
    times: dict[str, list[float]] = {name: [] for name in commands}
    with tempfile.TemporaryDirectory(prefix="edgeloop-bench-pyc-") as pyc:
        env = dict(os.environ)
        if bytecode == "cached":
            env.pop("PYTHONDONTWRITEBYTECODE", None)
            env["PYTHONPYCACHEPREFIX"] = pyc
        for cmd in commands.values():
            time_command(cmd, env)  # warm-up: page cache and .pyc files, not timed
        for _ in range(repeat):
            for name, cmd in commands.items():
                times[name].append(time_command(cmd, env))
    med = medians(times)
    ratio = med["edgeloop_help"] / med["imports"]
    return {
        **stamp("cli_help"),
        "repeat": repeat,
        "commands": {name: shlex.join(cmd) for name, cmd in commands.items()},
        "stand_in": edgeloop_cmd != EDGELOOP_CMD,
        "bytecode": bytecode,
        "times_s": {name: [round(t, 4) for t in ts] for name, ts in times.items()},
        "median_s": {name: round(m, 4) for name, m in med.items()},
        "ratio": round(ratio, 4),
        "goal_ratio": GOAL_RATIO,
        "goal_met": ratio <= GOAL_RATIO,
    }


def print_table(result: dict) -> None:
    rows = [
        (name, result["median_s"][name], min(result["times_s"][name]), max(result["times_s"][name]))
        for name in result["median_s"]
    ]
    print(f"{'command':<16} {'median s':>9} {'min s':>8} {'max s':>8}")
    for name, med, lo, hi in rows:
        print(f"{name:<16} {med:>9.3f} {lo:>8.3f} {hi:>8.3f}")
    verdict = "met" if result["goal_met"] else "MISSED"
    print(f"bytecode: {result['bytecode']}")
    print(
        f"ratio edgeloop_help / imports = {result['ratio']:.3f} (goal <= {GOAL_RATIO}: {verdict})"
    )
    if result["stand_in"]:
        print(
            f"note: measured a stand-in for edgeloop --help: {result['commands']['edgeloop_help']}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = arguments(__doc__)
    parser.add_argument("--repeat", type=int, default=5, help="timed runs of each command")
    parser.add_argument(
        "--edgeloop-cmd",
        help="measure this command instead of 'edgeloop --help' (a stand-in; recorded as such)",
    )
    parser.add_argument(
        "--bytecode",
        choices=["cached", "inherit"],
        default="cached",
        help="cached: children reuse .pyc from a private temp folder (default);"
        " inherit: run with the caller's environment unchanged",
    )
    add_output(parser, "cli_help.json", "the goal is missed")
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    edgeloop_cmd = shlex.split(args.edgeloop_cmd) if args.edgeloop_cmd else EDGELOOP_CMD
    try:
        result = run(args.repeat, edgeloop_cmd, args.bytecode)
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        if "edgeloop.cli" in str(exc):
            print(
                "hint: edgeloop/cli.py does not exist yet; measure a stand-in with"
                " --edgeloop-cmd \"python -c 'import edgeloop.core.config'\"",
                file=sys.stderr,
            )
        return 2
    print_table(result)
    write_results(args.out, result)
    print(f"wrote {args.out}")
    return 1 if args.check and not result["goal_met"] else 0


if __name__ == "__main__":
    sys.exit(main())
