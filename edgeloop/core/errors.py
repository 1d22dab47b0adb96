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


class ConfigError(EdgeloopError, ValueError):
    """A config file is missing, unreadable, or has a bad key or value."""


class RegistryError(EdgeloopError):
    """A model reference that does not resolve, or a registry operation that cannot proceed."""


class BusyError(EdgeloopError):
    """Another command holds the lock (the message names the holder)."""


class TrainingError(EdgeloopError):
    """The data or the config cannot produce a model (too few rows, missing class, bad estimator)."""


class TrainingGateError(GateError):
    """The candidate failed a gate; ``result`` is the retrain summary with each failed gate."""


class PromotionGateError(GateError):
    """The promotion rule does not hold; ``result`` carries the evidence."""


class RulesError(EdgeloopError):
    """The failure-trigger rules file is invalid (names the file, the rule and the key)."""


class LabelFileError(EdgeloopError):
    """An export that cannot be read as labels (wrong format, empty)."""


class LabelGateError(GateError):
    """Some label rows were rejected (the good ones were added); ``result`` has the counts."""


class LabelStudioError(EdgeloopError):
    """Label Studio cannot be reached or refused a request (the message says which and why)."""


class MonitoringError(EdgeloopError):
    """Monitoring cannot run (unknown batch id, no reference rows, a missing column)."""


class ServiceError(EdgeloopError):
    """The service cannot start (port in use, unusable address)."""


class InputError(EdgeloopError):
    """A request the service refuses; ``field`` and ``row`` say where the problem is."""

    def __init__(
        self, message: str, field: str | None = None, row: int | None = None, status: int = 422
    ) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.row = row
        self.status = status


class DeployError(EdgeloopError):
    """The deployments cannot be served (no Prefect server, a bad schedule)."""


class UpError(EdgeloopError):
    """A part of the local stack could not start (port in use, a child that died)."""


class MovedStoreError(StoreError):
    """The embedded MLflow store keeps its artifacts in another folder (a moved or copied
    project): the message names both folders and the command that fixes it."""
