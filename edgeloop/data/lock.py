"""The project's data lock and the journal of the change its holder is making.

Every command that writes ``data/`` (the dataset, the ledger, labels, the edge-case queue)
holds ``data_lock``: one writer at a time, so two batches never get the same sequence number.
A second command is refused naming the holder, or waits with ``wait=True`` (``--wait``).

Inside the lock each change is journaled (``change``): before a file of ``data/`` is created
its path goes to ``.edgeloop/locks/data-journal.json`` (``track``), with the ledger's length
and the DVC version the change started from. ``dvc add`` writing ``data.dvc`` is the commit
point. A command killed before it leaves a journal that the next holder rolls back
(``recover``: the tracked files removed, the ledger cut back); killed after it, the change is
kept and the caller finishes what is left (the push here, an MLflow run in the flow). Either
way the rerun says what it found, on stderr (stdout may be ``--json``).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from edgeloop.core.config import Settings
from edgeloop.core.errors import BusyError
from edgeloop.core.layout import Layout
from edgeloop.data.versioning import DataVersioner, read_pointer_md5

LOCK_NAME = "data.lock"
JOURNAL_NAME = "data-journal.json"

# The lock is per process and re-entrant: a flow holds it and the store's writes, which run
# in the flow's task threads, take it again.
_depth: dict[Path, int] = {}
_guard = threading.Lock()
_active: list[Change] = []


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _command_line(command: str) -> str:
    argv = sys.argv[1:]
    if Path(sys.argv[0]).name == "edgeloop" and argv:
        return " ".join(["edgeloop", *argv])
    return command


@contextlib.contextmanager
def data_lock(settings: Settings, command: str, wait: bool = False) -> Iterator[None]:
    """Hold the project's data lock for ``command``; refuse (``BusyError``) or wait when taken."""
    path = Layout.of(settings).locks / LOCK_NAME
    with _guard:
        if _depth.get(path):
            _depth[path] += 1
            held = True
        else:
            held = False
    if held:
        try:
            yield
        finally:
            with _guard:
                _depth[path] -= 1
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+", encoding="utf-8") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(f)
            if not wait:
                raise BusyError(
                    f"another edgeloop command is writing the data ({holder}); wait for it to"
                    f" finish, or pass --wait to queue behind it. Lock: {path}"
                ) from None
            sys.stderr.write(f"waiting for the data lock ({holder})\n")
            sys.stderr.flush()
            fcntl.flock(f, fcntl.LOCK_EX)
        f.seek(0)
        f.truncate()
        record = {"pid": os.getpid(), "command": _command_line(command), "since": _now()}
        f.write(json.dumps(record))
        f.flush()
        with _guard:
            _depth[path] = 1
        try:
            yield
        finally:
            with _guard:
                _depth[path] = 0
            f.seek(0)
            f.truncate()
            f.flush()
            fcntl.flock(f, fcntl.LOCK_UN)


def _holder(f: Any) -> str:
    f.seek(0)
    text = f.read().strip()
    try:
        h = json.loads(text)
        return f"pid {h['pid']}, '{h['command']}', since {h['since']}"
    except (ValueError, KeyError, TypeError):
        return text or "unknown process"


# ---------------------------------------------------------------------- journal
@dataclass
class Change:
    """One journaled change of ``data/`` (see the module docstring)."""

    path: Path
    root: Path
    command: str
    pid: int
    since: str
    version_before: str
    ledger_bytes: int
    created: list[str] = field(default_factory=list)
    step: str = "started"
    info: dict[str, Any] = field(default_factory=dict)

    def save(self) -> None:
        body = {k: v for k, v in self.__dict__.items() if k not in ("path", "root")}
        write_atomic(self.path, json.dumps(body, indent=1).encode())

    def track(self, path: Path) -> None:
        """Record ``path`` before it is created: a rollback removes it."""
        rel = os.path.relpath(path, self.root)
        if rel not in self.created:
            self.created.append(rel)
            self.save()

    def mark(self, step: str, **info: Any) -> None:
        self.step = step
        self.info.update(info)
        self.save()


@contextlib.contextmanager
def change(settings: Settings, command: str) -> Iterator[Change]:
    """Journal one change of ``data/`` (the caller holds ``data_lock``); ended on success only."""
    layout = Layout.of(settings)
    ch = Change(
        path=layout.locks / JOURNAL_NAME,
        root=layout.root,
        command=command,
        pid=os.getpid(),
        since=_now(),
        version_before=read_pointer_md5(layout.pointer) or "",
        ledger_bytes=layout.ledger.stat().st_size if layout.ledger.exists() else 0,
    )
    ch.path.parent.mkdir(parents=True, exist_ok=True)
    ch.save()
    _active.append(ch)
    try:
        yield ch
    except BaseException:
        # An error: undo an uncommitted change now (a committed one is finished by the next
        # command, as after a kill).
        if (read_pointer_md5(layout.pointer) or "") == ch.version_before:
            _undo(layout, json.loads(ch.path.read_text(encoding="utf-8")))
            ch.path.unlink(missing_ok=True)
        raise
    finally:
        _active.remove(ch)
    ch.path.unlink(missing_ok=True)


def track(path: Path) -> None:
    """Record ``path`` in this process's open change (if any) before creating it."""
    if _active:
        _active[-1].track(path)


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.partial")
    tmp.parent.mkdir(parents=True, exist_ok=True)
    track(tmp)
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to; renamed onto ``path`` when the block ends."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.partial")
    tmp.parent.mkdir(parents=True, exist_ok=True)
    track(path)
    track(tmp)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


# ---------------------------------------------------------------------- recovery
@dataclass(frozen=True)
class Recovery:
    """What ``recover`` found: notes to show and, for a committed change, its journal."""

    notes: list[str]
    committed: dict[str, Any] | None = None


def recover(settings: Settings) -> Recovery:
    """Roll back (or keep and push) the change a killed predecessor left; call under the lock."""
    layout = Layout.of(settings)
    path = layout.locks / JOURNAL_NAME
    if not path.exists():
        return Recovery([])
    try:
        j = json.loads(path.read_text(encoding="utf-8"))
        who = f"'{j['command']}' (pid {j['pid']}, since {j['since']})"
    except (ValueError, KeyError, TypeError):
        # Killed while writing its first journal line: nothing of data/ was touched yet.
        path.unlink()
        return Recovery(["recovered: removed an unreadable journal (no data was changed)"])
    if (read_pointer_md5(layout.pointer) or "") == j["version_before"]:
        removed, cut = _undo(layout, j)
        note = f"recovered: rolled back the interrupted {who}"
        note += f": removed {', '.join(removed)}" if removed else ": nothing was written"
        note += "; ledger cut back to its entries before it" if cut else ""
        path.unlink()
        return Recovery([note])
    # data.dvc moved: the change is a committed version. Finish it (DVC is idempotent).
    version = DataVersioner(settings).commit()
    path.unlink()
    return Recovery(
        [f"recovered: kept the interrupted {who}, committed as data version {version[:12]}"],
        committed={**j, "version": version},
    )


def _undo(layout: Layout, journal: dict[str, Any]) -> tuple[list[str], bool]:
    """Remove what the change created, cut the ledger back: (files removed, ledger cut)."""
    removed = _remove_created(layout, journal)
    cut = _ledger_size(layout) > journal["ledger_bytes"]
    if cut:
        with open(layout.ledger, "r+b") as f:
            f.truncate(journal["ledger_bytes"])
    return removed, cut


def _remove_created(layout: Layout, journal: dict[str, Any]) -> list[str]:
    removed = []
    for rel in reversed(journal.get("created", [])):
        p = layout.root / rel
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists() or p.is_symlink():
            p.unlink()
        else:
            continue
        if not p.name.endswith(".partial"):
            removed.append(rel)
    return removed


def _ledger_size(layout: Layout) -> int:
    return layout.ledger.stat().st_size if layout.ledger.exists() else 0


def say(notes: list[str]) -> None:
    """Show recovery notes on stderr (stdout may carry ``--json``)."""
    for note in notes:
        sys.stderr.write(note + "\n")
    sys.stderr.flush()
