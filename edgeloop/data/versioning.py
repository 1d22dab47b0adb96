"""Dataset versions with DVC: ``data/`` is one tracked directory, ``data.dvc`` names its version.

Uses DVC's Python API (``dvc.repo.Repo``) rather than the CLI: it saves ~1 s of start-up per
call. The default remote is a local folder (``paths.dvc_remote``, git-ignored); set
``EDGELOOP_DVC_REMOTE_URL`` (or ``services.dvc_remote_url``) to push to a team remote instead,
for example ``s3://bucket/edgeloop``.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from edgeloop._internal import faults
from edgeloop.core.config import Settings
from edgeloop.core.errors import StoreError

LOCAL_REMOTE = "local"
TEAM_REMOTE = "team"


@dataclass(frozen=True)
class GitInfo:
    """The code a run used: commit and whether the work tree had uncommitted changes."""

    commit: str
    dirty: bool
    available: bool


def git_info(root: Path) -> GitInfo:
    """Commit and dirty flag of the work tree at ``root`` ("unknown" outside git)."""

    def run(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=root, capture_output=True, text=True, check=True, timeout=20
        ).stdout.strip()

    try:
        commit = run("rev-parse", "HEAD")
    except (OSError, subprocess.SubprocessError):
        return GitInfo("unknown", False, is_git_repo(root))
    try:
        # Data and stores are ignored by git, so "dirty" means code or config changed.
        dirty = bool(run("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        dirty = False
    return GitInfo(commit, dirty, True)


def is_git_repo(root: Path) -> bool:
    try:
        subprocess.run(
            ["git", "rev-parse", "--git-dir"], cwd=root, capture_output=True, check=True, timeout=20
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return True


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """DVC's Python API prints CLI hints ("git add ...") to stdout: keep them out of ours."""
    # DVC logs hints (INFO) and expected misses (WARNING) through a handler bound to the real
    # stdout; edgeloop reports what matters itself.
    logging.getLogger("dvc").setLevel(logging.ERROR)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        yield


class DataVersioner:
    """Initialises DVC in the project, commits ``data/`` as a new version, pushes, restores."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.root = settings.root
        self.data_dir = settings.path("data")
        self.pointer = self.data_dir.with_suffix(".dvc")

    # ------------------------------------------------------------------ set-up
    def ensure_initialised(self) -> list[str]:
        """Run ``dvc init`` if needed and configure the remotes. Idempotent; says what it did."""
        from dvc.repo import Repo  # lazy: see _repo

        done: list[str] = []
        if not (self.root / ".dvc").is_dir():
            no_scm = not is_git_repo(self.root)
            with _quiet():
                Repo.init(str(self.root), no_scm=no_scm)
            done.append("dvc init" + (" --no-scm (no git repository here)" if no_scm else ""))
        with self._repo() as repo:
            with repo.config.edit() as conf:
                core = conf.setdefault("core", {})
                if core.get("analytics") is not False or core.get("remote") is None:
                    core["analytics"] = False
                    core.setdefault("remote", LOCAL_REMOTE)
                remotes = conf.setdefault("remote", {})
                if LOCAL_REMOTE not in remotes:
                    # DVC stores a local path relative to .dvc/, so the committed config works
                    # in every clone.
                    # DVC takes a relative path as relative to the cwd and rewrites it relative to
                    # .dvc/, so the committed config works in every clone.
                    target = self.settings.path("dvc_remote").resolve()
                    remotes[LOCAL_REMOTE] = {"url": os.path.relpath(target, Path.cwd())}
                    done.append(f"DVC remote '{LOCAL_REMOTE}' -> {self.settings.paths.dvc_remote}")
            url = self.settings.services.dvc_remote_url
            if url:
                # Machine-specific: config.local is not committed.
                with repo.config.edit("local") as conf:
                    remotes = conf.setdefault("remote", {})
                    if remotes.get(TEAM_REMOTE, {}).get("url") != url:
                        remotes[TEAM_REMOTE] = {"url": url}
                        conf.setdefault("core", {})["remote"] = TEAM_REMOTE
                        done.append(f"DVC remote '{TEAM_REMOTE}' -> {url} (default, config.local)")
        return done

    def _repo(self) -> Any:
        # lazy: dvc.repo costs 0.3-0.7 s; the fit worker and the retrain's cache check import
        # this module on their critical path and only read data.dvc (version, read_pointer_size)
        from dvc.repo import Repo

        try:
            # Wait for another edgeloop process's lock instead of failing after 3 s.
            return Repo(str(self.root), _wait_for_lock=True)
        except Exception as exc:
            raise StoreError(f"{self.root}: cannot open the DVC repository: {exc}") from None

    @property
    def remote_name(self) -> str:
        return TEAM_REMOTE if self.settings.services.dvc_remote_url else LOCAL_REMOTE

    # ------------------------------------------------------------------ versions
    def version(self) -> str | None:
        """The dataset version: the md5 of ``data/`` recorded in ``data.dvc``."""
        return read_pointer_md5(self.pointer)

    def commit(self, push: bool = True) -> str:
        """``dvc add data`` (+ push): returns the new dataset version."""
        if not self.data_dir.is_dir():
            raise StoreError(f"{self.data_dir}: no data folder to version")
        with self._repo() as repo:
            try:
                with _quiet():
                    repo.add([str(self.data_dir)])
            except Exception as exc:
                raise StoreError(f"dvc add {self.data_dir} failed: {exc}") from None
            # The commit point of a change to data/ (edgeloop.data.lock): data.dvc is written.
            faults.point("data:dvc-added")
            if push:
                self._push(repo)
                faults.point("data:dvc-pushed")
        version = self.version()
        if version is None:
            raise StoreError(f"{self.pointer}: DVC wrote no md5")
        return version

    def _push(self, repo: Any) -> None:
        try:
            with _quiet():
                repo.push(targets=[str(self.pointer)], remote=self.remote_name)
        except Exception as exc:
            raise StoreError(
                f"dvc push to remote '{self.remote_name}' failed: {exc} (the version is committed"
                " locally in .dvc/cache; run 'dvc push' once the remote is reachable)"
            ) from None

    def is_clean(self) -> bool:
        """True when ``data/`` holds exactly the version in ``data.dvc``."""
        if not self.pointer.exists():
            return False
        with self._repo() as repo, _quiet():
            return not repo.status(targets=[str(self.pointer)])

    def restore(self, pointer: Path | None = None) -> str:
        """Bring the data a pointer names (default ``data.dvc``) into its folder.

        From the cache, else from the remote. Returns "present", "checked out" or "pulled";
        raises StoreError if neither has it. Another pointer (an old ``data.dvc`` saved with a
        model, say) restores that version beside it without touching ``data/``.
        """
        pointer = pointer or self.pointer
        if not pointer.exists():
            raise StoreError(f"{pointer}: no dataset version to restore")
        with self._repo() as repo, _quiet():
            status = repo.status(targets=[str(pointer)])
            if not status:
                return "present"
            try:
                repo.checkout(targets=[str(pointer)], force=True)
                return "checked out"
            except Exception:
                pass
            try:
                repo.pull(targets=[str(pointer)], remote=self.remote_name, force=True)
                return "pulled"
            except Exception as exc:
                raise StoreError(
                    f"{pointer}: version {read_pointer_md5(pointer)} is neither in the DVC cache"
                    f" nor on remote '{self.remote_name}' ({type(exc).__name__})"
                ) from None


def read_pointer_md5(pointer: Path) -> str | None:
    """``outs[0].md5`` of a ``.dvc`` file, or None if there is none."""
    return _pointer_out(pointer).get("md5")


def read_pointer_size(pointer: Path) -> int:
    """``outs[0].size`` of a ``.dvc`` file (bytes of the data it names), 0 if there is none."""
    return int(_pointer_out(pointer).get("size") or 0)


def _pointer_out(pointer: Path) -> dict[str, Any]:
    if not pointer.exists():
        return {}
    data = yaml.safe_load(pointer.read_text(encoding="utf-8")) or {}
    outs = data.get("outs") or []
    return outs[0] if outs else {}
