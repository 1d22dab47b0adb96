"""``edgeloop init``: set a checkout up, idempotently, for the demo or for the user's own data."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import yaml

from edgeloop._internal import runtime
from edgeloop.core import keys
from edgeloop.core.config import (
    CONFIG_FILENAME,
    SchemaSettings,
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

RESERVED_COLUMNS = keys.RESERVED_COLUMNS


@dataclass
class InitReport:
    """What ``init`` did, step by step (printed by the CLI)."""

    settings: Settings
    steps: list[str] = field(default_factory=list)
    data_version: str | None = None

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
            # The demo stream is small: tens of labeled rows per batch reach the shadow comparison.
            "shadow": {"min_samples": 50},
            "edge_cases": {"budget": 25, "max_class_share": 0.4},
            # Retrain once two batches' worth of edge cases are labeled.
            "annotation": {"retrain_after_labels": 40},
        },
        root=root,
        source=root / CONFIG_FILENAME,
    )


def is_demo(settings: Settings) -> bool:
    return settings.data_schema == demo_schema()


def infer_schema(path: Path, target: str) -> tuple[SchemaSettings, pd.DataFrame]:
    """Read the user's labeled file and derive the schema: features, categoricals, classes."""
    df = read_batch(path)
    if target not in df.columns:
        raise EdgeloopError(
            f"{path}: no column {target!r} (columns: {', '.join(map(str, df.columns))})"
        )
    if df[target].isna().any():
        rows = df.index[df[target].isna()].tolist()[:5]
        raise EdgeloopError(f"{path}: column {target!r} has missing labels (rows {rows}...)")
    clash = [c for c in RESERVED_COLUMNS if c in df.columns]
    if clash:
        raise EdgeloopError(f"{path}: columns {clash} are reserved by edgeloop; rename them")
    features = [str(c) for c in df.columns if c != target]
    categorical = [c for c in features if not pd.api.types.is_numeric_dtype(df[c])]
    labels = sorted(df[target].unique().tolist(), key=str)
    classes: list[int | str] = [
        int(v) if isinstance(v, (int, float)) and float(v).is_integer() else str(v) for v in labels
    ]
    schema = SchemaSettings(
        features=features, categorical=categorical, target=target, classes=classes
    )
    return schema, df


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


def init_project(
    root: Path,
    *,
    config: Path | None = None,
    data: Path | None = None,
    target: str | None = None,
    force: bool = False,
) -> InitReport:
    """Set the project up: config, suite, stores, DVC and the first dataset version."""
    root = root.resolve()
    config = (config or root / CONFIG_FILENAME).resolve()
    frame: pd.DataFrame | None
    if data is not None:
        if not target:
            raise EdgeloopError("--data needs --target COLUMN (the label column)")
        schema, frame = infer_schema(Path(data), target)
        settings = settings_from_dict(
            {"project": root.name or "edgeloop", "schema": schema.model_dump()},
            root=root,
            source=config,
        )
        report = InitReport(settings)
        text = yaml.safe_dump(
            settings.to_dict(), sort_keys=False, width=100, default_flow_style=None
        )
        _write_if_new(config, text, force, report, "config")
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
        frame = None

    _ensure_gitignore(root, report)
    runtime.prepare(settings)
    settings = load_settings(config)
    report.settings = settings

    # The suite: bootstrapped from the user's data, or the demo's (bootstrapped, then edited).
    suite_path = settings.suite_path()
    if frame is not None:
        suite = bootstrap_suite(frame, settings.data_schema, name=settings.validation.suite)
        _write_if_new(suite_path, json.dumps(suite, indent=2) + "\n", force, report, "suite")
    elif not suite_path.exists():
        if not is_demo(settings):
            raise EdgeloopError(
                f"{suite_path}: no expectation suite; run 'edgeloop init --data PATH --target COL'"
            )
        _write_if_new(
            suite_path,
            json.dumps(demo_suite(settings.seeds.demo), indent=2) + "\n",
            force,
            report,
            "suite",
        )
    else:
        report.say(f"suite: using {suite_path}")

    labels_path = settings.suite_path(settings.annotation.suite)
    if not labels_path.exists():
        labels_path.write_text(
            json.dumps(labels_suite(settings.data_schema), indent=2) + "\n", encoding="utf-8"
        )
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
