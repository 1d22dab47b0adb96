"""The architecture's rules, checked like any other behaviour (docs/architecture.md).

Layer rules and the pipelines' import limits are import-linter contracts (pyproject.toml);
types are checked by mypy (strict on ``edgeloop.core`` and ``pipelines``); modules stay small.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

BIN = Path(sys.executable).parent
MAX_MODULE_LINES = 600


def _run(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)


def test_layer_contracts_hold() -> None:
    out = _run(str(BIN / "lint-imports"), "--no-cache")
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    assert "0 broken" in out.stdout


def test_no_module_over_600_lines() -> None:
    sources = [*REPO.glob("edgeloop/**/*.py"), *REPO.glob("pipelines/**/*.py")]
    assert sources
    long = {
        str(p.relative_to(REPO)): n
        for p in sources
        if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES
    }
    assert not long, f"modules over {MAX_MODULE_LINES} lines (split them by component): {long}"


def test_every_error_is_an_edgeloop_error_defined_in_core() -> None:
    import ast

    stray = []
    for p in [
        *REPO.glob("edgeloop/**/*.py"),
        *REPO.glob("pipelines/**/*.py"),
        *REPO.glob("flows/*.py"),
    ]:
        if p.relative_to(REPO).as_posix() == "edgeloop/core/errors.py":
            continue
        for node in ast.walk(ast.parse(p.read_text(encoding="utf-8"))):
            # A private class is internal control flow, never raised to a user.
            if (
                isinstance(node, ast.ClassDef)
                and not node.name.startswith("_")
                and any(
                    getattr(b, "id", getattr(b, "attr", "")).endswith(("Error", "Exception"))
                    for b in node.bases
                )
            ):
                stray.append(f"{p.relative_to(REPO)}:{node.lineno} {node.name}")
    assert not stray, f"exception classes outside edgeloop/core/errors.py: {stray}"

    from edgeloop.core import errors

    classes = [v for v in vars(errors).values() if isinstance(v, type) and issubclass(v, Exception)]
    assert all(issubclass(c, errors.EdgeloopError) for c in classes), classes


@pytest.mark.slow
def test_types_check() -> None:
    out = _run(str(BIN / "mypy"))
    assert out.returncode == 0, out.stdout[-6000:] + out.stderr[-2000:]
