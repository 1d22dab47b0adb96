"""The exceptions edgeloop raises on purpose. Each names what is wrong and where."""

from __future__ import annotations

from typing import Any


class EdgeloopError(Exception):
    """Base of every error edgeloop reports to a user (the CLI prints it without a traceback)."""

    exit_code = 2


class BatchReadError(EdgeloopError):
    """A batch file cannot be read as a table (wrong extension, empty, truncated, garbage)."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem


class SuiteError(EdgeloopError):
    """An expectation suite file is missing or not a valid suite."""


class StoreError(EdgeloopError):
    """A store (DVC, MLflow, the data folder) cannot be used."""


class GateError(EdgeloopError):
    """A gate said no. ``result`` carries the full decision (what failed, with numbers)."""

    exit_code = 1

    def __init__(self, message: str, result: Any) -> None:
        super().__init__(message)
        self.result = result


class ValidationGateError(GateError):
    """One or more batches were quarantined by validation."""
