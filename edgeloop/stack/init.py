"""``edgeloop init``: set a checkout up, idempotently, for the demo or for the user's own data."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import yaml

from edgeloop._internal import runtime
from edgeloop.core import keys
from edgeloop.core.config import (
    CONFIG_FILENAME,
    Settings,
    dump_settings,
    load_settings,
    settings_from_dict,
)
from edgeloop.core.errors import EdgeloopError, StoreError
from edgeloop.data.readers import read_batch
from edgeloop.data.store import DataStore
from edgeloop.data.versioning import DataVersioner
from edgeloop.demo.data import DEMO_RULES, demo_schema, demo_suite, reference_frame
from pipelines.labels import labels_suite
from pipelines.profile import bootstrap_suite
from pipelines.roles import Overrides, Roles, Task, infer_roles

RESERVED_COLUMNS = keys.RESERVED_COLUMNS


@dataclass
class InitReport:
    """What ``init`` did, step by step (printed by the CLI)."""

    settings: Settings
    steps: list[str] = field(default_factory=list)
    data_version: str | None = None
    #: With ``--data``: every column's role and reason, the target, the gates (printed by the CLI).
    summary: str = ""
    roles: Roles | None = None

    def say(self, text: str) -> None:
        self.steps.append(text)


def demo_settings(root: Path) -> Settings:
    """The config the demo ships with (also what ``init`` writes when there is none)."""
    return settings_from_dict(
        {
            "project": "edgeloop-demo",
            "schema": demo_schema().model_dump(),
            "training": {
                "estimator": "sklearn.ensemble.RandomForestClassifier",
                "params": {"n_estimators": 200, "n_jobs": -1},
                # The new scanner is where the model is expected to struggle: track it apart.
                "slices": [{"name": "scanner_c", "column": "scanner", "op": "==", "value": "C"}],
            },
            "gates": {
                "min_macro_f1": 0.85,
                "min_accuracy": 0.85,
                "slice_floors": {"scanner_c": 0.5},
                "max_regression": 0.02,
            },
            # The demo stream is small: a challenger sees a few hundred rows before the next
            # retrain replaces it, so the confidence sequence is tuned to 300 rows (any value
            # keeps it valid). Its champion moves as soon as the rule says so (on each import).
            "shadow": {"min_samples": 50, "auto_promote": True, "cs_tuned_rows": 300},
            # 10 of each batch's 25 labels go to the evaluation sample (the comparison's
            # evidence), 15 to edge cases.
            "edge_cases": {"budget": 25, "max_class_share": 0.4, "evaluation_share": 0.4},
            # Retrain once two batches' worth of edge cases are labeled.
            "annotation": {"retrain_after_labels": 40},
        },
        root=root,
        source=root / CONFIG_FILENAME,
    )


def is_demo(settings: Settings) -> bool:
    return settings.data_schema == demo_schema()


def read_user_data(
    path: Path, target: str, overrides: Overrides | None = None, task: Task | None = None
) -> tuple[Roles, pd.DataFrame]:
    """Read the user's labeled file and infer each column's role and the task
    (``pipelines.roles``; ``task`` overrides the inferred one)."""
    df = read_batch(path)
    clash = [c for c in RESERVED_COLUMNS if c in df.columns]
    if clash:
        raise EdgeloopError(f"{path}: columns {clash} are reserved by edgeloop; rename them")
    try:
        return infer_roles(df, target, overrides, task), df
    except EdgeloopError as exc:
        raise EdgeloopError(f"{path}: {exc}") from None


def _differs(path: Path, text: str) -> bool:
    return path.exists() and path.read_text(encoding="utf-8") != text


def _write_if_new(path: Path, text: str, force: bool, report: InitReport, what: str) -> None:
    if path.exists():
        if path.read_text(encoding="utf-8") == text:
            report.say(f"{what}: {path.name} is up to date")
            return
        if not force:
            raise EdgeloopError(f"{path}: exists and differs; pass --force to overwrite it")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    report.say(f"{what}: wrote {path}")


def _same_rows(stored: Path, frame: pd.DataFrame) -> bool:
    """Whether the stored reference set holds ``frame``'s rows (as text: dtypes may differ)."""
    old = pd.read_parquet(stored).drop(columns=list(RESERVED_COLUMNS), errors="ignore")
    new = frame.reset_index(drop=True)
    if list(old.columns) != list(map(str, new.columns)) or len(old) != len(new):
        return False
    return bool(old.astype("str").equals(new.astype("str").set_axis(old.columns, axis=1)))


def untouched_demo(root: Path, config: Path) -> bool:
    """True when the config, the suite and the data are still those the demo ships with
    (a fresh clone, or one where only ``edgeloop init`` ran): safe to replace without --force."""
    if not config.exists():
        return False
    try:
        current = load_settings(config)
    except EdgeloopError:
        return False
    if current != demo_settings(root):
        return False
    suite = current.suite_path()
    if suite.exists():
        try:
            if json.loads(suite.read_text(encoding="utf-8")) != demo_suite(current.seeds.demo):
                return False
        except json.JSONDecodeError:
            return False
    labels = current.suite_path(current.annotation.suite)
    if _differs(labels, _labels_text(current)):
        return False
    rules = root / current.edge_cases.rules_file
    if _differs(rules, DEMO_RULES):
        return False
    store = DataStore(current)
    if store.ledger():
        return False
    if not store.root.exists():
        # Only data.dvc: it must name a reference set alone (no batches, labels or queue).
        pointer = DataVersioner(current).pointer
        if not pointer.exists():
            return True
        outs = (yaml.safe_load(pointer.read_text(encoding="utf-8")) or {}).get("outs") or [{}]
        return int(outs[0].get("nfiles") or 0) <= 1
    files = [p for p in store.root.rglob("*") if p.is_file()]
    return files == [store.reference_path] and _same_rows(
        store.reference_path, reference_frame(current.seeds.demo)
    )


def init_project(
    root: Path,
    *,
    config: Path | None = None,
    data: Path | None = None,
    target: str | None = None,
    id: str | None = None,
    time: str | None = None,
    ignore: Iterable[str] = (),
    categorical: Iterable[str] = (),
    numeric: Iterable[str] = (),
    task: Task | None = None,
    force: bool = False,
) -> InitReport:
    """Set the project up: config, suite, stores, DVC and the first dataset version.

    With ``data``: each column's role is inferred (``pipelines.roles``; the keyword arguments
    override it) and the task (classification, or regression for a continuous target; ``task``
    overrides it), the schema and gates go to the config and a suite is bootstrapped. A config,
    suite or reference set that differs is replaced only with ``force``, or when it is still
    the untouched demo's.
    """
    root = root.resolve()
    config = (config or root / CONFIG_FILENAME).resolve()
    if data is not None:
        if not target:
            raise EdgeloopError("--data needs --target COLUMN (the label column)")
        overrides = Overrides.of(id, time, tuple(ignore), tuple(categorical), tuple(numeric))
        roles, frame = read_user_data(Path(data), target, overrides, task)
        report = _write_user_project(root, config, roles, frame, force)
        settings = report.settings
    else:
        if config.exists():
            settings = load_settings(config)
            report = InitReport(settings)
            report.say(f"config: using {config}")
        else:
            settings = demo_settings(root)
            report = InitReport(settings)
            dump_settings(settings, config)
            report.say(f"config: wrote the demo config to {config}")
        _ensure_gitignore(root, report)
        runtime.prepare(settings)
        settings = load_settings(config)
        report.settings = settings
        _ensure_demo_suite(settings, force, report)
        frame = None

    labels_path = settings.suite_path(settings.annotation.suite)
    if not labels_path.exists():
        labels_path.write_text(_labels_text(settings), encoding="utf-8")
        report.say(f"suite: wrote {labels_path}")
    rules_path = settings.root / settings.edge_cases.rules_file
    if not rules_path.exists() and is_demo(settings):
        rules_path.write_text(DEMO_RULES, encoding="utf-8")
        report.say(f"edge-case rules: wrote {rules_path}")

    # Stores: folders only; the MLflow tables are created on first use.
    for name in ("mlflow", "prefect_home", "incoming"):
        settings.path(name).mkdir(parents=True, exist_ok=True)
    report.say(
        f"stores: MLflow {settings.path('mlflow')}, Prefect home {settings.path('prefect_home')}"
    )

    versioner = DataVersioner(settings)
    for step in versioner.ensure_initialised():
        report.say(step)

    store = DataStore(settings)
    if frame is not None:
        store.write_reference(frame)
        report.data_version = versioner.commit()
        report.say(
            f"data: reference set of {len(frame)} rows from {data}, version {report.data_version}"
        )
    else:
        report.data_version = _ensure_data(settings, versioner, store, report)
    return report


def _labels_text(settings: Settings) -> str:
    return json.dumps(labels_suite(settings.data_schema), indent=2) + "\n"


def _write_user_project(
    root: Path, config: Path, roles: Roles, frame: pd.DataFrame, force: bool
) -> InitReport:
    """Config, suites and the demo's leftovers for the user's data; checks every file it would
    replace before writing any (a refusal leaves the project as it was)."""
    settings = settings_from_dict(
        {
            "project": root.name or "edgeloop",
            "schema": roles.schema(),
            "training": roles.training_defaults(),
            "gates": roles.gate_defaults(),
            **roles.other_defaults(),
        },
        root=root,
        source=config,
    )
    report = InitReport(settings, summary=roles.summary(), roles=roles)
    replacing = not force and untouched_demo(root, config)
    overwrite = force or replacing
    config_text = yaml.safe_dump(
        settings.to_dict(), sort_keys=False, width=100, default_flow_style=None
    )
    suite = bootstrap_suite(frame, settings.data_schema, name=settings.validation.suite)
    suite_text = json.dumps(suite, indent=2) + "\n"
    labels_path = settings.suite_path(settings.annotation.suite)
    labels_text = _labels_text(settings)
    reference = DataStore(settings).reference_path
    if not overwrite:
        for path, text in ((config, config_text), (settings.suite_path(), suite_text)):
            if _differs(path, text):
                raise EdgeloopError(f"{path}: exists and differs; pass --force to overwrite it")
        if reference.exists() and not _same_rows(reference, frame):
            raise EdgeloopError(
                f"{reference}: holds a different reference set; pass --force to replace it"
            )
    if replacing:
        report.say("replaced the untouched demo config, suite and data")
        rules = root / settings.edge_cases.rules_file
        if rules.exists() and rules.read_text(encoding="utf-8") == DEMO_RULES:
            rules.unlink()  # the demo's rules name the demo's columns
            report.say(f"edge-case rules: removed the demo's {rules.name}")
    _write_if_new(config, config_text, overwrite, report, "config")
    _ensure_gitignore(root, report)
    runtime.prepare(settings)
    report.settings = load_settings(config)
    _write_if_new(report.settings.suite_path(), suite_text, overwrite, report, "suite")
    if overwrite and _differs(labels_path, labels_text):
        _write_if_new(labels_path, labels_text, True, report, "suite")
    return report


def _ensure_demo_suite(settings: Settings, force: bool, report: InitReport) -> None:
    """The demo's suite (bootstrapped, then edited), unless a suite is there already."""
    suite_path = settings.suite_path()
    if suite_path.exists():
        report.say(f"suite: using {suite_path}")
        return
    if not is_demo(settings):
        raise EdgeloopError(
            f"{suite_path}: no expectation suite; run 'edgeloop init --data PATH --target COL'"
        )
    text = json.dumps(demo_suite(settings.seeds.demo), indent=2) + "\n"
    _write_if_new(suite_path, text, force, report, "suite")


def _ensure_data(
    settings: Settings, versioner: DataVersioner, store: DataStore, report: InitReport
) -> str | None:
    """Make sure ``data/`` holds the version ``data.dvc`` names (restore, or rebuild the demo's)."""
    committed = versioner.version()
    if store.reference_path.exists() and committed:
        report.say(f"data: present, version {committed}")
        return committed
    if committed:
        try:
            how = versioner.restore()
            report.say(f"data: version {committed} {how} from DVC")
            return committed
        except StoreError as exc:
            if not is_demo(settings):
                raise
            report.say(f"data: {exc}")
    if not is_demo(settings):
        raise EdgeloopError(f"{store.root}: no data; run 'edgeloop init --data PATH --target COL'")
    # A fresh clone has data.dvc but not the remote's content: the demo data is regenerated
    # from its seed, which gives the same bytes and so the same version.
    store.write_reference(reference_frame(settings.seeds.demo))
    version = versioner.commit()
    if committed is None:
        report.say(f"data: demo reference set written, version {version}")
    elif version == committed:
        report.say(
            f"data: demo reference regenerated byte-identically, version {version} (as in data.dvc)"
        )
    else:
        report.say(
            f"data: demo reference regenerated but differs from data.dvc ({committed});"
            f" re-added as version {version}"
        )
    return version


#: Local state that never belongs in git (DVC adds /data itself).
GITIGNORE_LINES = [
    "/.prefect/",
    "/.dvcstore/",
    "/.edgeloop/",
    "/incoming/",
    "/scores/",
    "/exports/",
    "/reports/",
    "/mlflow/",
]


def _ensure_gitignore(root: Path, report: InitReport) -> None:
    """A user's project gets the same ignores as this repository (stores, working folders)."""
    path = root / ".gitignore"
    have = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
    # This repository keeps mlflow/ itself (with its own .gitignore): ignore only its contents.
    missing = [
        line for line in GITIGNORE_LINES
        if line not in have and not (line == "/mlflow/" and (root / "mlflow" / ".gitignore").exists())
    ]  # fmt: skip
    if missing:
        with path.open("a", encoding="utf-8") as f:
            f.write(("\n" if have and have[-1] else "") + "\n".join(missing) + "\n")
        report.say(f"git: ignoring {', '.join(missing)}")
