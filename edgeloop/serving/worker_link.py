"""The serving side of the worker process: starts, feeds, watches, restarts and stops it.

The worker (``edgeloop.serving.worker``) does what follows an answer; ``WorkerLink.forward``
hands it one answered request with a non-blocking write, or drops (and counts) the work when
a bound is reached. The worker's reports become this process's Prometheus counters.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import socket
import threading
import time
from typing import TYPE_CHECKING, Any

from edgeloop.core.keys import CHALLENGER
from edgeloop.serving import ipc
from edgeloop.serving.worker import worker_main

if TYPE_CHECKING:
    from edgeloop.serving.service import Service

log = logging.getLogger("edgeloop.service")

#: Bytes the serving side may hold for a worker that is slow to read (beyond, work is dropped).
MAX_UNSENT_BYTES = 64 * 1024 * 1024


class _Protocol(asyncio.Protocol):
    """The serving side of one worker's socket: reads its reports, notices when it dies."""

    def __init__(self, link: WorkerLink, generation: int) -> None:
        self.link = link
        self.generation = generation
        self.buf = bytearray()

    def data_received(self, data: bytes) -> None:
        self.buf += data
        for message in ipc.unpack(self.buf):
            self.link.on_report(self.generation, message)

    def connection_lost(self, exc: Exception | None) -> None:
        self.link.on_lost(self.generation)


class WorkerLink:
    """Starts, feeds, watches and stops the worker process; turns its reports into metrics.

    ``forward`` runs on the event loop only; ``start``/``stop``/``set_challenger`` from threads.
    """

    def __init__(
        self, service: Service, loop: asyncio.AbstractEventLoop, config: ipc.WorkerConfig
    ) -> None:
        self.service = service
        self.metrics = service.metrics
        self.loop = loop
        self.config = config
        cfg = service.cfg
        self.max_items = cfg.shadow_queue_size
        # At most shadow_queue_size requests wait, and (whatever their size) no more rows than
        # one maximal request or shadow_queue_size single rows.
        self.max_rows = max(cfg.shadow_queue_size, cfg.max_rows_per_request)
        # Rows sent but not yet read by the worker (it then applies its own bound).
        self.max_log_rows = max(cfg.log_queue_size, 2 * cfg.max_rows_per_request)
        self.generation = 0
        self.proc: Any = None
        self.transport: asyncio.WriteTransport | None = None
        self.ints: Any = None
        self.floats: Any = None
        self.sent_items = self.sent_rows = self.sent_log_rows = 0
        self.restarts = 0
        self.challenger: str | None = None
        self.stopping = False
        self._cond = threading.Condition()
        self._ready = False
        self._loaded: str | None = None
        self._load_failed: str | None = None
        self._last: dict[tuple[str, ...], int] = {}
        self._backoff = 0.0

    # ------------------------------------------------------------------ lifecycle (threads)
    def start(self) -> None:
        """Spawn the worker and connect to it (returns before it has imported anything)."""
        ctx = multiprocessing.get_context("spawn")  # a fresh interpreter: no fork with threads
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        # A bigger kernel buffer (capped by net.core.wmem_max) takes a few 1,000-row requests
        # in one send, so the event loop rarely has to finish a write later.
        with contextlib.suppress(OSError):
            parent.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 * 1024 * 1024)
        ints, floats = ctx.RawArray("q", 3), ctx.RawArray("d", 1)
        with self._cond:
            self.generation += 1
            generation = self.generation
            self._ready, self._loaded, self._load_failed, self._last = False, None, None, {}
        proc = ctx.Process(
            target=worker_main,
            args=(self.config, child, ints, floats, self.challenger),
            name=f"edgeloop-worker-{generation}",
            daemon=True,  # never outlives an interpreter that exits without stopping it
        )
        try:
            proc.start()
        finally:
            child.close()

        async def connect() -> None:
            transport, _ = await self.loop.create_unix_connection(
                lambda: _Protocol(self, generation), sock=parent
            )
            # Counters are reset together with the channel they describe.
            self.sent_items = self.sent_rows = self.sent_log_rows = 0
            self.ints, self.floats, self.proc = ints, floats, proc
            self.transport = transport

        asyncio.run_coroutine_threadsafe(connect(), self.loop).result(30)
        log.info("worker process %d started (shadow scoring, prediction log)", proc.pid)

    def wait_ready(self, challenger: str | None, timeout: float) -> bool:
        """Wait until the worker runs and (if there is one) has loaded ``challenger``."""
        with self._cond:
            return self._cond.wait_for(
                lambda: self._ready and challenger in (None, self._loaded, self._load_failed),
                timeout,
            )

    def set_challenger(self, version: str | None) -> None:
        """The challenger alias moved: the worker preloads the new version."""
        self.challenger = version
        self.loop.call_soon_threadsafe(self._send, ("challenger", version))

    def stop(self, timeout: float = 10.0) -> None:
        """Ask the worker to write what it holds and exit; kill it if it does not."""
        self.stopping = True

        def close() -> None:
            if self.transport is not None and not self.transport.is_closing():
                self.transport.write(ipc.pack(("stop",)))
                self.transport.write_eof()  # still read its last report

        with contextlib.suppress(RuntimeError):  # the loop may already be closed
            self.loop.call_soon_threadsafe(close)
        proc = self.proc
        if proc is None:
            return
        proc.join(timeout)
        if proc.is_alive():
            log.warning("worker process %d did not stop in %.0f s: killed", proc.pid, timeout)
            proc.kill()
            proc.join(5.0)

        def drop() -> None:
            if self.transport is not None:
                self.transport.abort()

        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(drop)

    def _restart(self, generation: int) -> None:
        """A worker died: count it, count what it held, start another (with a backoff)."""
        old = self.proc
        if old is not None:
            old.join(5.0)
        with self._cond:
            if self.stopping or generation != self.generation:
                return
        # What was sent and never taken is lost with it.
        lost_items = self.sent_items - (self.ints[ipc.TAKEN_ITEMS] if self.ints else 0)
        lost_log = self.sent_log_rows - (self.ints[ipc.RECEIVED_LOG_ROWS] if self.ints else 0)
        if lost_items > 0:
            self.metrics.shadow_dropped.labels("worker_restarted").inc(lost_items)
        if lost_log > 0:
            self.metrics.log_dropped.inc(lost_log)
        self.restarts += 1
        self.metrics.worker_restarts.inc()
        code = old.exitcode if old is not None else None
        log.warning("worker process died (exit code %s): restarting", code)
        # A worker that dies at once (a broken environment) is not restarted in a tight loop.
        self._backoff = min(30.0, self._backoff * 2 or 0.5)
        time.sleep(self._backoff if self.restarts > 1 else 0.0)
        if not self.stopping:
            self.start()

    # ------------------------------------------------------------------ event loop
    def on_lost(self, generation: int) -> None:
        if generation == self.generation and not self.stopping:
            self.transport = None
            self.loop.run_in_executor(None, self._restart, generation)

    def on_report(self, generation: int, message: tuple[Any, ...]) -> None:
        if generation != self.generation:
            return
        kind = message[0]
        if kind == "counts":
            self._apply(message[1])
        elif kind in ("ready", "loaded", "load_failed"):
            with self._cond:
                if kind == "ready":
                    self._ready = True
                    self._backoff = 0.0
                elif kind == "loaded":
                    self._loaded = message[1]
                else:
                    self._load_failed = message[1]
                self._cond.notify_all()

    def _apply(self, counts: dict[tuple[str, ...], int]) -> None:
        """Cumulative counts from the worker -> increments of this process's counters."""
        m = self.metrics
        for key, value in counts.items():
            delta = value - self._last.get(key, 0)
            if delta <= 0:
                continue
            self._last[key] = value
            what = key[0]
            if what == "rows":
                m.challenger_rows.inc(delta)
            elif what == "agree":
                m.agree.inc(delta)
            elif what == "disagree":
                m.disagree.inc(delta)
            elif what == "error":
                m.errors.labels(CHALLENGER, key[1]).inc(delta)
            elif what == "dropped":
                m.shadow_dropped.labels(key[1]).inc(delta)
            elif what == "log_dropped":
                m.log_dropped.inc(delta)
            elif what == "load_error":
                m.registry_errors.labels("load").inc(delta)

    def _send(self, message: tuple[Any, ...]) -> None:
        t = self.transport
        if t is not None and not t.is_closing():
            t.write(ipc.pack(message))

    def stalled_for(self) -> float:
        floats = self.floats
        since = floats[ipc.BUSY_SINCE] if floats is not None else 0.0
        return 0.0 if since == 0.0 else max(0.0, time.monotonic() - since)

    def depth(self) -> int:
        return self.sent_items - self.ints[ipc.TAKEN_ITEMS] if self.ints is not None else 0

    def forward(self, a: ipc.Answered) -> None:
        """Hand an answered request to the worker: never blocks; drops (and counts) when full."""
        t = self.transport
        n = a.n
        shadow = a.shadow
        m = self.metrics
        if t is None or t.is_closing() or t.get_write_buffer_size() > MAX_UNSENT_BYTES:
            m.log_dropped.inc(n)
            if shadow is not None:
                m.shadow_dropped.labels("worker_restarting" if t is None else "queue_full").inc()
            return
        ints = self.ints
        keep_log = self.sent_log_rows - ints[ipc.RECEIVED_LOG_ROWS] + n <= self.max_log_rows
        if shadow is not None:
            if self.stalled_for() > self.config.stall_seconds:
                m.shadow_dropped.labels("challenger_stalled").inc()
                shadow = None
            elif (
                self.sent_items - ints[ipc.TAKEN_ITEMS] >= self.max_items
                or self.sent_rows - ints[ipc.TAKEN_ROWS] + n > self.max_rows
            ):
                m.shadow_dropped.labels("queue_full").inc()
                shadow = None
        if not keep_log:
            m.log_dropped.inc(n)
            if shadow is None:
                return
        if shadow is not None:
            self.sent_items += 1
            self.sent_rows += n
        if keep_log:
            self.sent_log_rows += n
        # A plain tuple pickles three times faster than the named one (no class lookup).
        t.write(ipc.pack(("answered", tuple(a), keep_log, shadow)))

    def info(self) -> dict[str, Any]:
        proc = self.proc
        return {
            "pid": proc.pid if proc is not None else None,
            "alive": bool(proc is not None and proc.is_alive()),
            "restarts": self.restarts,
            "challenger_loaded": self._loaded,
        }
