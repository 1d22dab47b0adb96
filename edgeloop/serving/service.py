"""The prediction service (silent mode): the champion answers, the challenger shadows it.

``Service`` holds the models, the registry poller and the request handlers of one app
(``edgeloop.serving.app.create_app`` builds the Starlette app around it). At start-up it loads
the models that hold the ``champion`` and ``challenger`` aliases in the MLflow registry; a
background thread re-reads the aliases every ``serving.poll_seconds`` and swaps a model in
when its alias moves (one reference assignment, so a request sees either the old model or the
new one, never a mix).

``POST /predict`` validates the rows against the champion's input schema (its MLflow
signature), scores them with the champion and answers. Only then is the request (its body and
the champion's probabilities) handed to a **worker process** (``worker_link``, ``worker``),
with one non-blocking write on a Unix socket pair: the worker scores the rows with the
challenger (which it loads by version, following the alias moves the service tells it about)
and writes both models' predictions to the prediction log (``edgeloop.serving.predlog``). So
challenger scoring, row hashing and SQLite writes never take the serving process's GIL or
delay an answer; a slow, failing or hung challenger cannot fail one. Work beyond the bounds
(``serving.shadow_queue_size``, ``serving.log_queue_size``) is dropped and counted, never
queued without bound. The worker reports its counters back for ``/metrics``; it stops with
the service and is restarted (and counted) if it dies.

Speed: for the pipeline edgeloop trains (one-hot encoder + passthrough in a ColumnTransformer,
then a forest), the per-request path skips pandas and scikit-learn's per-call validation and
builds the model's feature matrix directly (``predictors.fast_predictor``). That fast path is
checked against the pipeline's own ``predict_proba`` on sample rows when a model is loaded and
used only if they agree exactly; any other pipeline runs through scikit-learn as is.

Regression (``schema.task: regression``, a regressor as champion): each row is answered with
its predicted ``value`` and, for an ensemble with members (random forest, extra trees, bagging),
their ``spread`` and the ``confidence`` derived from it (``pipelines.score``); never classes.
A model of the other task than the config's is not loaded (the reason is in ``/readyz``).

Nothing here runs on import; MLflow, scikit-learn and pandas are imported when the app starts.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from typing import TYPE_CHECKING, Any

import orjson

from edgeloop.core.config import Settings
from edgeloop.core.errors import InputError, ServiceError
from edgeloop.core.keys import CHALLENGER, CHAMPION
from edgeloop.serving.ipc import Answered, WorkerConfig
from edgeloop.serving.metrics import Metrics
from edgeloop.serving.predlog import connect
from edgeloop.serving.schema import rows_of
from edgeloop.serving.worker_link import WorkerLink
from edgeloop.tracking.store import configure

if TYPE_CHECKING:
    from edgeloop.serving.loading import LoadedModel

log = logging.getLogger("edgeloop.service")

#: A challenger busy on one batch for longer than this is reported unhealthy and new shadow
#: work is dropped at once instead of waiting in the queue.
DEFAULT_STALL_SECONDS = 10.0
#: Longest wait at start-up for the worker to load the challenger before the service starts.
WORKER_START_SECONDS = 60.0


class Service:
    """Models, background threads and the request handlers of one app."""

    def __init__(self, settings: Settings, *, stall_seconds: float = DEFAULT_STALL_SECONDS) -> None:
        self.settings = settings
        self.cfg = settings.serving
        self.stall_seconds = stall_seconds
        schema = settings.data_schema
        self.metrics = Metrics(regression=schema.is_regression, value_range=schema.target_range)
        self.champion: LoadedModel | None = None
        self.challenger: LoadedModel | None = None
        self.reasons: dict[str, str] = {
            CHAMPION: "the service is starting: the registry has not been read yet",
            CHALLENGER: "the registry has not been read yet",
        }
        #: The event loop that serves requests (set by the app's lifespan before ``start``).
        self.loop: asyncio.AbstractEventLoop | None = None
        self.link: WorkerLink | None = None
        self._client: Any = None
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None
        self._failed: dict[str, str] = {}
        self.tracking_uri = ""

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Start the worker process, read the registry once (so a champion is ready), poll."""
        if self.loop is None:
            raise ServiceError("Service.start needs the event loop that serves requests")
        log_path = self.settings.root / self.cfg.log_path
        connect(log_path).close()  # a bad log path fails here, not in the worker
        config = WorkerConfig(
            settings=self.settings,
            log_path=str(log_path),
            # Room for at least one maximal request from each model.
            log_pending_rows=max(self.cfg.log_queue_size, 2 * self.cfg.max_rows_per_request),
            stall_seconds=self.stall_seconds,
            poll_seconds=self.cfg.poll_seconds,
        )
        # Started first: it imports MLflow and scikit-learn while this process loads the models.
        self.link = WorkerLink(self, self.loop, config)
        self.link.start()
        self.metrics.shadow_healthy.set_function(lambda: 1.0 if self.shadow_healthy() else 0.0)
        self.metrics.shadow_queue.set_function(lambda: float(self.link.depth() if self.link else 0))
        # lazy (here and below): MLflow and scikit-learn take seconds to import; imported only
        # once the worker has started, this process and the worker import them at once.
        from mlflow.tracking import MlflowClient

        self.tracking_uri = configure(self.settings)
        self._client = MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)
        self.poll_once()
        chall = self.challenger
        if not self.link.wait_ready(chall.version if chall else None, WORKER_START_SECONDS):
            log.warning(
                "the worker process is not ready after %.0f s: starting anyway (shadow work"
                " and log records are dropped and counted until it is)",
                WORKER_START_SECONDS,
            )
        self._poller = threading.Thread(
            target=self._poll_loop, name="edgeloop-registry", daemon=True
        )
        self._poller.start()

    def stop(self) -> None:
        """Stop polling; the worker writes the log records it holds and exits (or is killed)."""
        self._stop.set()
        if self._poller is not None:
            self._poller.join(5.0)
        if self.link is not None:
            self.link.stop()

    # ------------------------------------------------------------------ registry
    def _poll_loop(self) -> None:
        while not self._stop.wait(self.cfg.poll_seconds):
            try:
                self.poll_once()
            except Exception:  # the loop must survive anything a registry can throw
                log.exception("registry poll failed")

    def _read_aliases(self) -> dict[str, str] | None:
        """alias -> version; None when the registered model does not exist (yet)."""
        from mlflow.exceptions import MlflowException  # lazy: see start

        try:
            rm = self._client.get_registered_model(self.settings.model_name)
        except MlflowException as exc:
            if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
                return None
            raise
        return {a: str(v) for a, v in (rm.aliases or {}).items()}

    def poll_once(self) -> None:
        """Read the aliases; load and swap in any model whose alias moved."""
        name = self.settings.model_name
        try:
            aliases = self._read_aliases()
        except Exception as exc:
            # Keep serving what is loaded: a registry blip must not take the service down.
            self.metrics.registry_errors.labels("poll").inc()
            msg = f"registry {self.tracking_uri} unreachable: {exc}"
            for alias in (CHAMPION, CHALLENGER):
                if getattr(self, alias) is None:
                    self.reasons[alias] = msg
            log.warning(msg)
            return
        every = f"every {self.cfg.poll_seconds:g} s"
        for alias in (CHAMPION, CHALLENGER):
            wanted = (aliases or {}).get(alias)
            current: LoadedModel | None = getattr(self, alias)
            if wanted is None:
                why = f"no version of registered model {name!r} holds alias {alias!r}"
                if aliases is None:
                    why += f" (the model does not exist yet in {self.tracking_uri})"
                else:
                    known = ", ".join(f"{a}=v{v}" for a, v in sorted(aliases.items())) or "none"
                    why += f" (aliases: {known})"
                self.reasons[alias] = f"{why}; the registry is re-read {every}"
                if current is not None:
                    log.warning(
                        "alias %s removed from %s: unloading v%s", alias, name, current.version
                    )
                    self._swap(alias, None)
                continue
            if current is not None and current.version == wanted:
                continue
            try:
                from edgeloop.serving.loading import load_version  # lazy: see start

                loaded = load_version(self.settings, self._client, alias, wanted)
            except Exception as exc:
                self.metrics.registry_errors.labels("load").inc()
                self.reasons[alias] = (
                    f"cannot load {name} v{wanted} ({alias}): {exc}; retried {every}"
                )
                if self._failed.get(alias) != wanted:  # log once per version, not every poll
                    self._failed[alias] = wanted
                    log.exception("cannot load %s v%s for %s", name, wanted, alias)
                continue
            self._failed.pop(alias, None)
            log.info(
                "%s: %s v%s loaded%s",
                alias,
                name,
                wanted,
                " (fast path)" if loaded.fast_path else "",
            )
            self._swap(alias, loaded)

    def _swap(self, alias: str, model: LoadedModel | None) -> None:
        # One reference assignment: a request holds the model it started with to the end.
        setattr(self, alias, model)
        self.metrics.version.labels(alias).set(int(model.version) if model else 0)
        if alias == CHALLENGER and self.link is not None:
            self.link.set_challenger(model.version if model else None)

    # ------------------------------------------------------------------ request path
    def shadow_healthy(self) -> bool:
        return (
            self.link is None
            or self.challenger is None
            or self.link.stalled_for() <= self.stall_seconds
        )

    def score(self, body: bytes, t0: float) -> tuple[int, bytes, str, Answered | None]:
        """Parse, validate, predict, answer.

        Returns (status, JSON body, request id, what to hand to the worker process once the
        answer is sent: None for an error).
        """
        model = self.champion  # this request uses this model to the end, whatever swaps
        if model is None:
            return 503, error_body(self.reasons[CHAMPION]), "", None
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            return 400, error_body(f"the body is not valid JSON: {exc}"), "", None
        try:
            rows = rows_of(data, model.schema)
            if not rows:
                raise InputError("no rows: send at least one row")
            if len(rows) > self.cfg.max_rows_per_request:
                raise InputError(
                    f"{len(rows)} rows is more than serving.max_rows_per_request"
                    f" ({self.cfg.max_rows_per_request}): split the request"
                )
            cols = model.schema.coerce(rows)
        except InputError as exc:
            return exc.status, error_body(exc.message, exc.field, exc.row), "", None
        try:
            proba = model.predict(cols)
        except Exception as exc:
            self.metrics.errors.labels(CHAMPION, model.version).inc()
            log.exception("champion v%s failed", model.version)
            return (
                500,
                error_body(f"the champion (v{model.version}) failed to score: {exc!r}"),
                "",
                None,
            )
        classes, keys = model.classes, model.class_keys
        request_id = uuid.uuid4().hex
        out = orjson.dumps(
            {
                "request_id": request_id,
                "model": {"alias": CHAMPION, "version": model.version},
                "predictions": (
                    _values(model, proba, self.metrics)
                    if model.regression
                    else [
                        {"class": classes[j], "probabilities": dict(zip(keys, p, strict=True))}
                        for j, p in zip(proba.argmax(axis=1).tolist(), proba.tolist(), strict=True)
                    ]
                ),
            }
        )
        latency_ms = (time.perf_counter() - t0) * 1000.0
        # The answer is ready; what follows only describes it for the worker process.
        n = len(rows)
        self.metrics.champion_rows.inc(n)
        chall = self.challenger
        answered = Answered(
            request_id,
            time.time(),
            model.version,
            latency_ms,
            classes,
            keys,
            proba.tobytes(),
            n,
            0 if rows is data else 2 if rows[0] is data else 1,
            body,
            chall.version if chall is not None else None,
        )
        return 200, out, request_id, answered

    def readiness(self) -> tuple[int, dict[str, Any]]:
        champ, chall = self.champion, self.challenger
        body: dict[str, Any] = {
            "ready": champ is not None,
            "model": self.settings.model_name,
            "champion": champ.info() if champ else None,
            "challenger": chall.info() if chall else None,
        }
        if champ is None:
            body["reason"] = self.reasons[CHAMPION]
        for alias in (CHAMPION, CHALLENGER):
            if alias in self._failed:  # still serving the previous version, if any
                body[f"{alias}_load_error"] = self.reasons[alias]
        if chall is None:
            body["challenger_reason"] = self.reasons[CHALLENGER]
        elif self.link is not None:
            stalled = self.link.stalled_for()
            body["challenger"]["healthy"] = stalled <= self.stall_seconds
            if stalled > self.stall_seconds:
                body["challenger"]["reason"] = (
                    f"stuck scoring shadow work for {stalled:.1f} s: shadow work is dropped"
                )
        if self.link is not None:
            body["worker"] = self.link.info()
        return (200 if champ is not None else 503), body


def _values(model: LoadedModel, out: Any, metrics: Metrics) -> list[dict[str, Any]]:
    """A regressor's answers: the value per row, with the members' spread and the confidence
    (``pipelines.score``'s definition; null when the model has no target scale) when the model
    is an ensemble."""
    from pipelines.score import regression_confidence  # lazy: numpy, pandas (see start)

    values = out[:, 0]
    if metrics.values is not None:
        metrics.values.observe(values)
    if not model.members:
        return [{"value": v} for v in values.tolist()]
    spread = out[:, 1]
    confidence = regression_confidence(spread, model.scale)
    # orjson writes NaN as null.
    return [
        {"value": v, "spread": s, "confidence": c}
        for v, s, c in zip(values.tolist(), spread.tolist(), confidence.tolist(), strict=True)
    ]


def error_body(message: str, field: str | None = None, row: int | None = None) -> bytes:
    """The JSON body of an error answer."""
    return orjson.dumps({"error": message, "field": field, "row": row})
