"""The MLflow Model Registry, with an alias history MLflow does not keep.

Aliases used: ``champion`` (serves), ``challenger`` (candidate in silent mode),
``previous-champion`` (for rollback). Every alias move is recorded as a small MLflow run in the
``<project>-registry`` experiment (who, when, why, from which version to which), so the history
lives in the same store as the registry, also on a team server.

Registration is ordered so that a crash at any point leaves the previous champion serving:
the new version is created with ``edgeloop.status=pending``; only then is the alias moved (one
atomic MLflow call); then the version is marked ``ready`` and the move recorded. A version left
``pending`` by a killed process never holds an alias and is marked ``abandoned`` by the next
retrain; an alias moved without its history record is reconciled (recorded) the same way.
"""

from __future__ import annotations

import getpass
import os
import socket
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

import mlflow.artifacts
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from edgeloop._internal import faults
from edgeloop.core import keys
from edgeloop.core.config import Settings
from edgeloop.core.errors import RegistryError
from edgeloop.core.keys import CHAMPION, REGISTRY_EXPERIMENT
from edgeloop.tracking import trusted
from edgeloop.tracking.store import configure, ensure_experiment


def actor() -> str:
    """Who moved an alias: ``$EDGELOOP_ACTOR``, else user@host."""
    return os.environ.get("EDGELOOP_ACTOR") or f"{getpass.getuser()}@{socket.gethostname()}"


@dataclass(frozen=True)
class AliasEvent:
    """One alias move."""

    alias: str
    version: str
    previous: str
    actor: str
    reason: str
    at: str
    run_id: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Registry:
    """Registered versions and aliases of the project's model."""

    def __init__(self, settings: Settings) -> None:
        configure(settings)
        self.settings = settings
        self.name = settings.model_name
        self.client = MlflowClient()

    # ------------------------------------------------------------------ reads
    def aliases(self) -> dict[str, str]:
        """alias -> version (read from the registered model: search results omit aliases)."""
        try:
            rm = self.client.get_registered_model(self.name)
        except MlflowException:
            return {}
        return {a: str(v) for a, v in (rm.aliases or {}).items()}

    def resolve(self, ref: str | None) -> str:
        """``champion`` / ``NAME@alias`` / ``@alias`` / ``3`` / ``v3`` -> version number."""
        ref = (ref or CHAMPION).strip()
        if "@" in ref:
            name, _, alias = ref.partition("@")
            if name and name != self.name:
                raise RegistryError(f"model {name!r} is not this project's model ({self.name!r})")
            ref = alias
        ref = ref.removeprefix("v")
        if ref.isdigit():
            self.version(ref)  # raises if unknown
            return ref
        aliases = self.aliases()
        if ref not in aliases:
            known = ", ".join(f"{a}=v{v}" for a, v in sorted(aliases.items())) or "none yet"
            raise RegistryError(f"no model holds alias {ref!r} in {self.name} (aliases: {known})")
        return aliases[ref]

    def version(self, version: str) -> Any:
        try:
            return self.client.get_model_version(self.name, str(version))
        except MlflowException:
            raise RegistryError(f"{self.name} has no version {version}") from None

    def model_uri(self, alias_or_version: str) -> str:
        v = alias_or_version
        return f"models:/{self.name}/{v}" if str(v).isdigit() else f"models:/{self.name}@{v}"

    def load(self, alias_or_version: str) -> Any:
        """The scikit-learn model of an alias or version, if it asks only for trusted types."""
        ref = str(alias_or_version)
        what = f"model v{ref}" if ref.isdigit() else f"model {self.name}@{ref}"
        with tempfile.TemporaryDirectory(prefix="edgeloop-model-") as tmp:
            local = mlflow.artifacts.download_artifacts(
                artifact_uri=self.model_uri(ref), dst_path=tmp
            )
            return trusted.load_model(local, what)

    # ------------------------------------------------------------------ history
    def _history_experiment(self) -> str:
        return ensure_experiment(self.settings, REGISTRY_EXPERIMENT)

    def history(self, alias: str | None = None) -> list[AliasEvent]:
        """Every recorded alias move, oldest first."""
        exp = self._history_experiment()
        flt = f"tags.`{keys.TAG_MODEL}` = '{self.name}'"
        if alias:
            flt += f" and tags.`{keys.TAG_ALIAS}` = '{alias}'"
        runs = self.client.search_runs(
            [exp], filter_string=flt, order_by=["attributes.start_time ASC"], max_results=5000
        )
        return [
            AliasEvent(
                alias=r.data.tags.get(keys.TAG_ALIAS, ""),
                version=r.data.tags.get(keys.TAG_VERSION, ""),
                previous=r.data.tags.get(keys.TAG_PREVIOUS, ""),
                actor=r.data.tags.get(keys.TAG_ACTOR, ""),
                reason=r.data.tags.get(keys.TAG_REASON, ""),
                at=r.data.tags.get(keys.TAG_AT, ""),
                run_id=r.info.run_id,
            )
            for r in runs
        ]

    def _record(self, alias: str, version: str, previous: str, reason: str) -> AliasEvent:
        exp = self._history_experiment()
        ev = AliasEvent(
            alias,
            version,
            previous,
            actor(),
            reason,
            datetime.now(UTC).isoformat(timespec="seconds"),
        )
        run = self.client.create_run(
            exp,
            run_name=f"{alias} -> v{version or '(removed)'}",
            tags={
                keys.TAG_KIND: keys.KIND_ALIAS_MOVE,
                keys.TAG_MODEL: self.name,
                keys.TAG_ALIAS: alias,
                keys.TAG_VERSION: version,
                keys.TAG_PREVIOUS: previous,
                keys.TAG_ACTOR: ev.actor,
                keys.TAG_REASON: reason,
                keys.TAG_AT: ev.at,
                keys.TAG_NOTE: reason,
            },
        )
        self.client.set_terminated(run.info.run_id)
        return AliasEvent(**{**ev.to_dict(), "run_id": run.info.run_id})

    # ------------------------------------------------------------------ writes
    def move_alias(self, alias: str, version: str, reason: str) -> AliasEvent:
        """Point ``alias`` at ``version`` (one atomic call), then record who/when/why."""
        previous = self.aliases().get(alias, "")
        self.client.set_registered_model_alias(self.name, alias, str(version))
        faults.point("after-alias")
        return self._record(alias, str(version), previous, reason)

    def remove_alias(self, alias: str, reason: str) -> AliasEvent | None:
        previous = self.aliases().get(alias)
        if previous is None:
            return None
        self.client.delete_registered_model_alias(self.name, alias)
        return self._record(alias, "", previous, reason)

    def register(
        self, model_uri: str, run_id: str, alias: str, reason: str
    ) -> tuple[str, AliasEvent]:
        """Create a version from a logged model and give it ``alias``; crash-safe (see module)."""
        try:
            self.client.get_registered_model(self.name)
        except MlflowException:
            self.client.create_registered_model(
                self.name, description="Registered by edgeloop retrain"
            )
        # A logged model's URI is ``models:/<model_id>``; a tracking server (unlike the embedded
        # SQLite store) refuses to register it unless the model id is passed too.
        model_id = (
            model_uri.removeprefix("models:/") if model_uri.startswith("models:/m-") else None
        )
        mv = self.client.create_model_version(
            self.name,
            source=model_uri,
            run_id=run_id,
            tags={keys.TAG_STATUS: "pending"},
            model_id=model_id,
        )
        version = str(mv.version)
        _wait_ready(self.client, self.name, version)
        faults.point("register")
        try:
            event = self.move_alias(alias, version, reason)
        except Exception:
            # Nothing points at it yet: mark it so it is never mistaken for a usable model.
            self.client.set_model_version_tag(self.name, version, keys.TAG_STATUS, "abandoned")
            raise
        self.client.set_model_version_tag(self.name, version, keys.TAG_STATUS, "ready")
        return version, event

    def recover(self) -> list[str]:
        """After a crash: mark pending versions abandoned, record unrecorded alias moves."""
        notes: list[str] = []
        try:
            versions = self.client.search_model_versions(f"name = '{self.name}'")
        except MlflowException:
            return notes
        aliases = self.aliases()
        held = set(aliases.values())
        for mv in versions:
            if (mv.tags or {}).get(keys.TAG_STATUS) == "pending":
                if str(mv.version) in held:
                    self.client.set_model_version_tag(
                        self.name, mv.version, keys.TAG_STATUS, "ready"
                    )
                else:
                    self.client.set_model_version_tag(
                        self.name, mv.version, keys.TAG_STATUS, "abandoned"
                    )
                    notes.append(
                        f"v{mv.version} was left pending by an interrupted run: marked abandoned"
                    )
        last: dict[str, str] = {}
        for ev in self.history():
            last[ev.alias] = ev.version
        for alias, version in aliases.items():
            if last.get(alias) != version:
                self._record(
                    alias,
                    version,
                    last.get(alias, ""),
                    "reconciled: alias moved by an interrupted run",
                )
                notes.append(f"{alias} -> v{version} had no history record: recorded")
        return notes


def _wait_ready(client: Any, name: str, version: str, timeout: float = 60.0) -> None:
    """File and SQL stores register synchronously; a server may take a moment."""
    deadline = time.monotonic() + timeout
    while True:
        mv = client.get_model_version(name, version)
        if str(mv.status) in ("READY", "ModelVersionStatus.READY") or time.monotonic() > deadline:
            return
        time.sleep(0.2)
