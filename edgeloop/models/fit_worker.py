"""The candidate's fit in a process of its own, started as soon as a retrain knows it needs one.

Why a process: scikit-learn's fit releases the GIL in its C loops and takes it back between
them thousands of times. In the retrain's own process, Prefect's threads (API client, log and
event workers) and the imports done during the fit hold the GIL in between, and every hand-back
waits for the interpreter's switch interval: a HistGradientBoosting fit beside one busy Python
thread took 10x as long (measured). A process of its own fits at the speed of a bare script,
on the other core, while the retrain loads the data, evaluates the champion and logs.

Why early: ``edgeloop retrain`` starts it before the embedded Prefect server is up (the boot
takes seconds), and the flow adopts it when its inputs match (the retrain's cache key: data
version, config, training code, ``max_rows``); otherwise the flow starts one itself as soon as
its cache lookup misses, if the data is large enough to be worth it (``WORKER_FROM_BYTES``).
The worker loads the same DVC version, splits with the same seed and fits with
``settings.seeds.train``: the model is the one an in-process fit gives.

    python -m edgeloop.models.fit_worker REQUEST.json   (run by edgeloop, not by hand)

Imports of the data stores, MLflow and scikit-learn stay inside the functions on purpose: the
CLI imports this module to start the worker before anything heavy is loaded, and each side (the
retrain, the worker) imports only what it uses.
"""

from __future__ import annotations

import atexit
import json
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeloop._internal import faults, runtime
from edgeloop._internal.runtime import die_with_parent
from edgeloop.core.config import Settings, load_settings
from edgeloop.core.errors import EdgeloopError, TrainingError
from edgeloop.core.layout import Layout

if TYPE_CHECKING:
    import numpy as np


@dataclass(frozen=True)
class Fitted:
    """What the worker sends back: the model, its holdout predictions and their seconds."""

    model: Any
    holdout_predicted: np.ndarray
    fit_seconds: float
    predict_seconds: float


class FitWorker:
    """One fit running in its own process; ``result()`` waits for it."""

    def __init__(self, settings: Settings, data_version: str, key: str, max_rows: int) -> None:
        work = Layout.of(settings).tmp
        work.mkdir(parents=True, exist_ok=True)
        self._dir = Path(tempfile.mkdtemp(prefix="fit-", dir=work))
        request = {
            "config": str(settings.source),
            "max_rows": max_rows,
            "data_version": data_version,
            "key": key,
            "parent": os.getpid(),
            "out": str(self._dir / "fitted.pickle"),
        }
        (self._dir / "request.json").write_text(json.dumps(request), encoding="utf-8")
        logs = Layout.of(settings).logs
        logs.mkdir(parents=True, exist_ok=True)
        self.log = logs / "fit-worker.log"
        with self.log.open("ab") as log:
            # No preexec_fn: the flow starts this while Prefect's threads run, and code run
            # between fork and exec can deadlock on a lock one of them held (the worker ties
            # itself to this process first thing instead: main()).
            self.process: subprocess.Popen[bytes] = subprocess.Popen(
                [sys.executable, "-m", "edgeloop.models.fit_worker", str(self._dir / "request.json")],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log,
            )  # fmt: skip

    def result(self) -> Fitted:
        """The fitted model; the worker's own error (same type and message) if it failed."""
        try:
            code = self.process.wait()
            out = self._dir / "fitted.pickle"
            if not out.exists():
                raise EdgeloopError(
                    f"the fit process exited with code {code} before it finished: see {self.log}"
                )
            # Our own child wrote it, into a folder only this process knows: trusted.
            with out.open("rb") as f:
                sent = pickle.load(f)
        finally:
            self.cancel()
        if isinstance(sent, Fitted):
            return sent
        error_type, message = sent
        raise (TrainingError if error_type == "TrainingError" else EdgeloopError)(message)

    def cancel(self) -> None:
        """Stop the worker if it still runs and remove its files (idempotent)."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        shutil.rmtree(self._dir, ignore_errors=True)


#: Workers started before the flow that will use them (by the CLI), by cache key.
_STARTED: dict[str, FitWorker] = {}

#: Below this much data (the size DVC records in ``data.dvc``) a flow fits in its own process:
#: a fit of seconds loses little to the GIL, and a worker's start (2-3 s of imports and its
#: own read) would cost more than it saves. ``edgeloop retrain`` starts one whatever the size,
#: as it then starts while the Prefect server boots, which takes longer.
WORKER_FROM_BYTES = 16 * 2**20


def start(settings: Settings, data_version: str, key: str, max_rows: int) -> FitWorker | None:
    """The worker for these inputs: the one the CLI started for them, else a new one, or
    None when the data is small enough to fit in the flow's process (``WORKER_FROM_BYTES``)."""
    from edgeloop.data.versioning import read_pointer_size

    early = _STARTED.pop(key, None)
    if early is not None and early.process.poll() in (None, 0):
        return early
    if early is not None:
        early.cancel()
    if read_pointer_size(settings.path("data").with_suffix(".dvc")) < WORKER_FROM_BYTES:
        return None
    return FitWorker(settings, data_version, key, max_rows)


def start_early(settings: Settings, max_rows: int) -> bool:
    """Start the fit for the current inputs now, for the flow to adopt (``start``); whether
    one was started.

    Quiet when the inputs cannot be read (the flow then reports it with full context); a
    worker nobody adopted is stopped when the command exits.
    """
    # lazy: the CLI imports this module to start the worker early (inputs is light: no MLflow).
    from edgeloop.data.versioning import DataVersioner
    from edgeloop.models.inputs import cache_key

    # The version data.dvc names, not checked against the work tree (DVC's import and status
    # would delay the fit, the critical path): the flow checks it, and a worker it does not
    # adopt is stopped at exit.
    try:
        version = DataVersioner(settings).version()
    except EdgeloopError:
        return False
    if not version:
        return False
    key = cache_key(settings, version, max_rows)
    worker = _STARTED[key] = FitWorker(settings, version, key, max_rows)
    atexit.register(worker.cancel)
    return True


def _fit(request: dict[str, Any]) -> Fitted:
    """In the worker: load the dataset version, split, fit, predict the holdout."""
    from edgeloop.data.store import DataStore
    from edgeloop.data.versioning import DataVersioner
    from pipelines import train as tr

    settings = load_settings(request["config"])
    versioner = DataVersioner(settings)
    dataset = DataStore(settings).load_training_dataset()[0]
    version = versioner.version() or ""
    if version != request["data_version"]:
        raise EdgeloopError(
            f"the data changed while the fit started: {request['data_version'][:12]} was asked,"
            f" {version[:12]} is in {versioner.pointer}"
        )
    training = settings.training
    if training.fit:
        runtime.project_importable(settings.root)
    if request["max_rows"]:
        training = training.model_copy(update={"max_rows": request["max_rows"]})
    schema = settings.data_schema
    split = tr.split(dataset, schema, training, settings.seeds.split)
    del dataset
    faults.point("fit")
    t0 = time.perf_counter()
    model = tr.fit(split.train, schema, training, settings.seeds.train)
    t1 = time.perf_counter()
    predicted = model.predict(tr.features(split.holdout, schema))
    return Fitted(model, predicted, t1 - t0, time.perf_counter() - t1)


def main(argv: list[str]) -> int:
    request = json.loads(Path(argv[0]).read_text(encoding="utf-8"))
    if sys.platform == "linux":
        die_with_parent()
        if os.getppid() != request["parent"]:
            return 1  # the retrain died before this process could tie itself to it
    out = Path(request["out"])
    print(
        f"{time.strftime('%Y-%m-%dT%H:%M:%S')} pid {os.getpid()}: fitting data"
        f" {request['data_version'][:12]} (retrain key {request['key'][:12]})",
        flush=True,
    )
    try:
        sent: Any = _fit(request)
        print(f"  fitted in {sent.fit_seconds:.1f} s", flush=True)
    except EdgeloopError as exc:
        sent = (type(exc).__name__, str(exc))
    except Exception as exc:  # reported to the retrain, which fails with it
        traceback.print_exc()
        sent = ("EdgeloopError", f"the fit process failed: {type(exc).__name__}: {exc}")
    partial = out.with_suffix(".partial")
    with partial.open("wb") as f:
        pickle.dump(sent, f, protocol=pickle.HIGHEST_PROTOCOL)
    os.replace(partial, out)  # whole or absent: the retrain never reads half a model
    return 0


if __name__ == "__main__":
    # Through the module's own name, so what is pickled names edgeloop.models.fit_worker.Fitted
    # (not __main__.Fitted, which the retrain could not load).
    from edgeloop.models.fit_worker import main as _main

    sys.exit(_main(sys.argv[1:]))
