"""The worker process: logs every answered request and scores it with the challenger.

Started by ``edgeloop.serving.worker_link`` (multiprocessing "spawn": a fresh interpreter that
imports this module for ``worker_main``). It must stay light to import: no Starlette, no
Prometheus, and MLflow and scikit-learn only once there is a challenger to load.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import select
import signal
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson

from edgeloop.core.errors import InputError
from edgeloop.core.keys import CHALLENGER, CHAMPION
from edgeloop.serving.ipc import (
    BUSY_SINCE,
    RECEIVED_LOG_ROWS,
    TAKEN_ITEMS,
    TAKEN_ROWS,
    Answered,
    WorkerConfig,
    log_to_console,
    pack,
    unpack,
)
from edgeloop.serving.predlog import Entry, PredictionLog, RowBatch
from edgeloop.tracking.store import configure

if TYPE_CHECKING:
    from edgeloop.serving.loading import LoadedModel

log = logging.getLogger("edgeloop.service")

#: The shadow thread scores queued requests together, up to this many rows per call.
SHADOW_BATCH_ROWS = 2048
#: ... waiting up to this long for more requests to join a batch (shadow answers are not urgent).
SHADOW_LINGER_SECONDS = 0.05
#: How often the worker sends its counters (when they changed).
WORKER_REPORT_SECONDS = 0.1
#: The worker reads what has arrived, then pauses this long before reading again (unless more
#: is waiting): one wake-up per few requests instead of one per request, so on a small machine
#: it preempts the serving process (and the clients) less often. Nothing it does is urgent.
WORKER_READ_PAUSE_SECONDS = 0.005
_READ_CHUNK = 1 << 20


@dataclass(eq=False)
class ShadowItem:
    """One answered request, waiting for the challenger (in the worker process)."""

    request_id: str
    ts: float
    batch: RowBatch
    #: The champion's answer per row: its class key, or a regressor's value (float).
    champion: list[Any]


class _Shadow:
    """One thread scoring queued requests with the challenger. Replaced (not killed: Python
    cannot) when it is stuck on a challenger that has since been replaced."""

    def __init__(self, worker: _Worker, generation: int) -> None:
        self.worker = worker
        self.retired = False
        self.thread = threading.Thread(
            target=self.run, name=f"edgeloop-shadow-{generation}", daemon=True
        )
        self.thread.start()

    def _busy(self, since: float) -> None:
        if not self.retired:
            self.worker.floats[BUSY_SINCE] = since

    def run(self) -> None:
        w = self.worker
        q = w.queue
        while not self.retired:
            w.ensure_model(self)
            try:
                first = q.get(timeout=0.25)
            except queue.Empty:
                continue
            items = [first]
            rows = w.taken(first)
            # Linger a little: under load, scoring many requests in one call costs about what
            # one costs.
            deadline = time.monotonic() + SHADOW_LINGER_SECONDS
            while rows < SHADOW_BATCH_ROWS and not self.retired:
                remaining = deadline - time.monotonic()
                try:
                    item = q.get(timeout=remaining) if remaining > 0 else q.get_nowait()
                except queue.Empty:
                    break
                items.append(item)
                rows += w.taken(item)
            w.ensure_model(self)  # the items may name a challenger that is not loaded yet
            self._busy(time.monotonic())
            try:
                w.score(items)
            except Exception:  # never let one bad batch end shadow scoring
                log.exception("shadow scoring failed")
            finally:
                self._busy(0.0)


class _Worker:
    """The worker process: reads answered requests, logs them, shadows them, reports."""

    def __init__(self, config: WorkerConfig, sock: socket.socket, ints: Any, floats: Any) -> None:
        self.config = config
        self.settings = config.settings
        self.sock = sock
        self.ints = ints
        self.floats = floats
        self.counts: dict[tuple[str, ...], int] = {}
        self.queue: queue.SimpleQueue[ShadowItem] = queue.SimpleQueue()
        self.wanted: str | None = None
        self.model: LoadedModel | None = None
        self._failed: tuple[str, float] | None = None
        self._client: Any = None
        self._error_logged: set[str] = set()
        self._send_lock = threading.Lock()
        self._count_lock = threading.Lock()
        self.predlog = PredictionLog(
            Path(config.log_path),
            config.log_pending_rows,
            on_drop=lambda n: self.count(("log_dropped",), n),
            key_field=config.settings.data_schema.id,
        )
        self._generation = 0
        self.shadow: _Shadow | None = None

    def count(self, key: tuple[str, ...], n: int = 1) -> None:
        # Three threads count (reader, shadow, log writer): a read-modify-write needs the lock.
        with self._count_lock:
            self.counts[key] = self.counts.get(key, 0) + n

    def send(self, message: tuple[Any, ...]) -> None:
        # A service that is gone shows as end-of-file on the next read; the log is still written.
        with self._send_lock, contextlib.suppress(OSError):
            self.sock.sendall(pack(message))

    def taken(self, item: ShadowItem) -> int:
        n = len(item.batch)
        self.ints[TAKEN_ROWS] += n
        self.ints[TAKEN_ITEMS] += 1
        return n

    # ------------------------------------------------------------------ challenger
    def ensure_model(self, shadow: _Shadow) -> None:
        """Load the wanted challenger version if it is not the one loaded (shadow thread)."""
        wanted = self.wanted
        current = self.model.version if self.model is not None else None
        if wanted == current:
            return
        if wanted is None:
            self.model = None
            return
        failed = self._failed
        if (
            failed
            and failed[0] == wanted
            and time.monotonic() - failed[1] < self.config.poll_seconds
        ):
            return  # a failed load is retried every poll, not in a tight loop
        # No lock: a thread stuck in a load must not block its replacement; a load that
        # finishes for a retired thread is discarded.
        shadow._busy(time.monotonic())  # a load that hangs is a stall too
        try:
            # lazy: a worker without a challenger never imports MLflow or scikit-learn (seconds)
            from mlflow.tracking import MlflowClient

            from edgeloop.serving.loading import load_version

            if self._client is None:
                uri = configure(self.settings)
                self._client = MlflowClient(tracking_uri=uri, registry_uri=uri)
            model = load_version(self.settings, self._client, CHALLENGER, wanted)
        except Exception as exc:
            self.count(("load_error",))
            self._failed = (wanted, time.monotonic())
            log.warning("worker: cannot load challenger v%s: %s", wanted, exc)
            self.send(("load_failed", wanted))  # the service need not wait for it
            return
        finally:
            shadow._busy(0.0)
        self._failed = None
        if shadow.retired:
            return
        self.model = model
        log.info(
            "worker: challenger v%s loaded%s", wanted, " (fast path)" if model.fast_path else ""
        )
        self.send(("loaded", wanted))

    def want(self, version: str | None) -> None:
        """The challenger to use from now on; a thread stuck on the old one is replaced."""
        if version == self.wanted:
            return
        self.wanted = version
        shadow = self.shadow
        if shadow is not None and version is not None:
            since = self.floats[BUSY_SINCE]
            stalled = since and time.monotonic() - since > self.config.stall_seconds
            if stalled:
                shadow.retired = True
                self.floats[BUSY_SINCE] = 0.0
                self._start_shadow()
                log.warning("worker: shadow thread was stuck: replaced")

    def _start_shadow(self) -> None:
        self._generation += 1
        self.shadow = _Shadow(self, self._generation)

    def score(self, items: list[ShadowItem]) -> None:
        model = self.model
        if model is None or model.version != self.wanted:
            self.count(("dropped", "no_challenger"), len(items))
            return
        usable: list[tuple[ShadowItem, list[list[Any]]]] = []
        for item in items:
            try:  # the challenger validates the rows against its own schema
                usable.append((item, model.schema.coerce(item.batch.rows)))
            except InputError as exc:
                self.count(("dropped", "schema_mismatch"))
                if model.version not in self._error_logged:
                    self._error_logged.add(model.version)
                    log.warning("challenger v%s cannot score these rows: %s", model.version, exc)
        if not usable:
            return
        ncols = len(model.schema.columns)
        cols = (
            usable[0][1]
            if len(usable) == 1
            else [[v for _, c in usable for v in c[j]] for j in range(ncols)]
        )
        t0 = time.perf_counter()
        try:
            proba = model.predict(cols)
        except Exception as exc:
            self.count(("error", model.version), len(usable))
            if model.version not in self._error_logged:
                self._error_logged.add(model.version)
                log.warning("challenger v%s failed to score: %r", model.version, exc)
            return
        latency_ms = (time.perf_counter() - t0) * 1000.0
        if model.regression:
            self._log_values(model, usable, proba, latency_ms)
            return
        idx = proba.argmax(axis=1).tolist()
        plist = proba.tolist()
        keys = model.class_keys
        start = agree = 0
        for item, _ in usable:
            n = len(item.batch)
            mine = idx[start : start + n]
            agree += sum(keys[j] == k for j, k in zip(mine, item.champion, strict=True))
            self.predlog.submit(
                Entry(
                    ts=item.ts,
                    request_id=item.request_id,
                    alias=CHALLENGER,
                    version=model.version,
                    batch=item.batch,
                    predicted=[model.classes[j] for j in mine],
                    probabilities=plist[start : start + n],
                    class_keys=keys,
                    latency_ms=latency_ms,
                )
            )
            start += n
        self.count(("rows",), start)
        self.count(("agree",), agree)
        self.count(("disagree",), start - agree)

    def _log_values(
        self,
        model: LoadedModel,
        usable: list[tuple[ShadowItem, list[list[Any]]]],
        out: np.ndarray,
        latency_ms: float,
    ) -> None:
        """A regression challenger's values in the log; agreement within the tolerance."""
        values, spread = out[:, 0].tolist(), out[:, 1].tolist()
        # The edge cases' rule: the two disagree beyond tolerance x the training target's std
        # (the challenger's own; unknown without one: rows then count as neither).
        tolerance = self.settings.edge_cases.disagreement_tolerance * model.scale
        judged = tolerance == tolerance
        start = agree = 0
        for item, _ in usable:
            n = len(item.batch)
            mine = values[start : start + n]
            if judged:
                agree += sum(
                    abs(a - b) <= tolerance for a, b in zip(mine, item.champion, strict=True)
                )
            self.predlog.submit(
                Entry(
                    ts=item.ts,
                    request_id=item.request_id,
                    alias=CHALLENGER,
                    version=model.version,
                    batch=item.batch,
                    predicted=mine,
                    probabilities=(),
                    class_keys=(),
                    latency_ms=latency_ms,
                    spread=spread[start : start + n],
                )
            )
            start += n
        self.count(("rows",), start)
        if judged:
            self.count(("agree",), agree)
            self.count(("disagree",), start - agree)

    # ------------------------------------------------------------------ the channel
    def answered(self, a: Answered, keep_log: bool, shadow: str | None) -> None:
        try:
            data = orjson.loads(a.body)
            rows = data if a.shape == 0 else data["rows"] if a.shape == 1 else [data]
            batch = RowBatch(rows)
            regression = not a.classes
            # A regressor's output is its value and its spread (ipc.Answered).
            proba = np.frombuffer(a.proba, dtype=np.float64).reshape(a.n, len(a.classes) or 2)
            if regression:
                values, spread = proba[:, 0].tolist(), proba[:, 1].tolist()
            else:
                idx = proba.argmax(axis=1).tolist()
        except Exception:  # cannot happen for a body the service accepted; never fatal
            log.exception("worker: unreadable request %s", a.request_id)
            if keep_log:
                self.count(("log_dropped",), a.n)
            if shadow is not None:
                self.count(("dropped", "no_challenger"))
            return
        finally:
            if keep_log:
                self.ints[RECEIVED_LOG_ROWS] += a.n
        if keep_log:
            self.predlog.submit(
                Entry(
                    a.ts,
                    a.request_id,
                    CHAMPION,
                    a.version,
                    batch,
                    values,
                    (),
                    (),
                    a.latency_ms,
                    spread,
                )
                if regression
                else Entry(
                    a.ts,
                    a.request_id,
                    CHAMPION,
                    a.version,
                    batch,
                    [a.classes[j] for j in idx],
                    proba.tolist(),
                    a.class_keys,
                    a.latency_ms,
                )
            )
        if shadow is not None:
            self.want(shadow)
            keys = a.class_keys
            champion = values if regression else [keys[j] for j in idx]
            self.queue.put(ShadowItem(a.request_id, a.ts, batch, champion))

    def run(self, challenger: str | None) -> None:
        self.predlog.start()
        self.wanted = challenger
        self._start_shadow()
        self.send(("ready", os.getpid()))
        buf = bytearray()
        reported: dict[tuple[str, ...], int] = {}
        next_report = time.monotonic() + WORKER_REPORT_SECONDS
        stop = False
        while not stop:
            timeout = max(0.0, next_report - time.monotonic())
            readable, _, _ = select.select([self.sock], [], [], timeout)
            if readable:
                data = self.sock.recv(_READ_CHUNK)
                if not data:
                    break  # the service closed its end (or died): finish up
                buf += data
                for message in unpack(buf):
                    kind = message[0]
                    if kind == "answered":
                        self.answered(Answered._make(message[1]), *message[2:])
                    elif kind == "challenger":
                        self.want(message[1])
                    elif kind == "stop":
                        stop = True
                        break
                if len(data) < _READ_CHUNK and not stop:
                    time.sleep(WORKER_READ_PAUSE_SECONDS)
            if time.monotonic() >= next_report:
                next_report = time.monotonic() + WORKER_REPORT_SECONDS
                with self._count_lock:
                    changed = self.counts != reported
                    if changed:
                        reported = dict(self.counts)
                if changed:
                    self.send(("counts", reported))
        # Stopping: what is still queued for the challenger is not scored; the log is written.
        if self.shadow is not None:
            self.shadow.retired = True
        left = 0
        with contextlib.suppress(queue.Empty):
            while True:
                self.queue.get_nowait()
                left += 1
        if left:
            self.count(("dropped", "challenger_stalled"), left)
        self.predlog.close(timeout=8.0)
        with self._count_lock:
            final = dict(self.counts)
        self.send(("counts", final))


def worker_main(
    config: WorkerConfig, sock: socket.socket, ints: Any, floats: Any, challenger: str | None
) -> None:
    """Entry point of the worker process."""
    # Ctrl-C and SIGTERM reach the whole process group: the service stops this process itself
    # (after the log is written), and it also exits when the service's end of the socket closes.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    log_to_console()
    code = 0
    try:
        _Worker(config, sock, ints, floats).run(challenger)
    except Exception:
        log.exception("worker process failed")
        code = 1
    finally:
        logging.shutdown()
    # A challenger thread stuck in a call must not keep the process alive.
    os._exit(code)
