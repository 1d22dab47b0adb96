"""What the serving process and its worker process share: the framing, the messages, the slots.

Everything that happens after an answer (challenger scoring, row hashing, prediction-log
writes) runs in one child process (``edgeloop.serving.worker``), so it never competes with
requests for the serving process's GIL. The serving process (``edgeloop.serving.worker_link``)
only frames one message per answered request and hands it to an asyncio transport (a
non-blocking send on a Unix socket pair); the queue bounds are checked on the serving side
against counters the worker publishes in shared memory, so a check costs a few loads, not a
round trip.
"""

from __future__ import annotations

import logging
import pickle
import struct
from dataclasses import dataclass
from typing import Any, NamedTuple

from edgeloop.core.config import Settings

#: Shared int64 slots the worker writes and the service reads.
TAKEN_ITEMS, TAKEN_ROWS, RECEIVED_LOG_ROWS = 0, 1, 2
#: Shared float64 slot: time.monotonic() at which the challenger became busy (0 when idle).
#: CLOCK_MONOTONIC is system-wide on Linux, so both processes read the same clock.
BUSY_SINCE = 0
_FRAME = struct.Struct("<Q")


def pack(message: tuple[Any, ...]) -> bytes:
    blob = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return _FRAME.pack(len(blob)) + blob


def unpack(buf: bytearray) -> list[Any]:
    """Complete messages at the front of ``buf`` (removed from it)."""
    out = []
    pos = 0
    while len(buf) - pos >= _FRAME.size:
        (size,) = _FRAME.unpack_from(buf, pos)
        end = pos + _FRAME.size + size
        if len(buf) < end:
            break
        # A copy, not a memoryview: a live view would stop ``del buf[:pos]`` from resizing.
        out.append(pickle.loads(buf[pos + _FRAME.size : end]))
        pos = end
    del buf[:pos]
    return out


class Answered(NamedTuple):
    """What the worker needs about one answered request (a tuple: cheap to build and pickle)."""

    request_id: str
    ts: float
    version: str
    latency_ms: float
    #: Empty for a regressor (a classifier always has two classes or more).
    classes: tuple[Any, ...]
    class_keys: tuple[str, ...]
    #: The champion's output, float64, row-major: probabilities (n x len(classes)), or for a
    #: regressor (no classes) its value and its members' spread (n x 2, NaN without members).
    proba: bytes
    n: int
    #: How the rows sit in ``body``: 0 a list, 1 ``{"rows": [...]}``, 2 one row object.
    shape: int
    body: bytes
    #: The challenger version to shadow with (None: log only).
    shadow: str | None


@dataclass(frozen=True)
class WorkerConfig:
    """What the worker process is started with (pickled to it)."""

    settings: Settings
    log_path: str
    log_pending_rows: int
    stall_seconds: float
    poll_seconds: float


def log_to_console() -> None:
    """Show the ``edgeloop`` loggers' messages on stderr, unless a handler is already set."""
    applog = logging.getLogger("edgeloop")
    if not applog.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s:     %(message)s"))
        applog.addHandler(handler)
        applog.setLevel(logging.INFO)
