"""``edgeloop init --data`` on a user's file: roles and gates in the config, one readable
summary, no friction over the untouched demo, refusals that name the column or the file; the
user's id carried through scoring and annotation exports."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from click.testing import CliRunner

from edgeloop.core.config import load_settings
from edgeloop.core.errors import EdgeloopError
from edgeloop.data.store import DataStore
from edgeloop.data.versioning import DataVersioner
from edgeloop.stack.init import init_project, untouched_demo
from tests.conftest import edit_config, git_commit_all, git_init
from tests.pipelines.test_roles import customers

TARGET = "churned"


def user_csv(base: Path, rows: int = 600) -> Path:
    path = base / "customers.csv"
    customers(rows).to_csv(path, index=False)
    return path


def fresh(base: Path, name: str = "proj") -> Path:
    root = base / name
    root.mkdir()
    git_init(root)
    return root


def test_init_writes_roles_gates_and_one_summary(tmp_path: Path) -> None:
    root = fresh(tmp_path)
    report = init_project(root, data=user_csv(tmp_path), target=TARGET)
    raw = yaml.safe_load((root / "edgeloop.yaml").read_text(encoding="utf-8"))
    schema = raw["schema"]
    assert schema["id"] == "customer_id" and schema["time"] == "signup"
    assert schema["features"] == ["age", "income", "city", "plan", "vip"]
    assert schema["high_cardinality"] == ["city"] and "city" in schema["categorical"]
    assert set(schema["ignore"]) == {"last_seen_ts", "country", "notes"}
    assert raw["gates"]["metric"] == "balanced_accuracy"
    assert raw["gates"]["min_lift_over_baseline"] == 0.05
    assert raw["gates"]["baseline"] == "most_frequent"
    assert raw["gates"]["class_recall_floors"] == {"1": 0.2}
    for line in ("customer_id", "unique integers named like an id", "signup", "time"):
        assert line in report.summary
    assert "target: churned: 0 " in report.summary and "imbalanced" in report.summary
    assert (root / "expectations" / "batch.json").exists()
    assert DataVersioner(report.settings).is_clean()
    # Again: idempotent, nothing to replace.
    again = init_project(root, data=user_csv(tmp_path), target=TARGET)
    assert "config: edgeloop.yaml is up to date" in again.steps
    assert again.data_version == report.data_version


def test_init_cli_flags_and_summary(tmp_path: Path) -> None:
    from edgeloop.cli import main

    root = fresh(tmp_path)
    args = ["init", "--config", str(root / "edgeloop.yaml"), "--data", str(user_csv(tmp_path))]
    args += ["--target", TARGET, "--time", "last_seen_ts", "--ignore", "age", "--ignore", "plan"]
    args += ["--categorical", "city", "--numeric", "vip"]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    assert "last_seen_ts" in res.output and "set by --time" in res.output
    assert "gates: metric balanced_accuracy" in res.output
    schema = load_settings(root / "edgeloop.yaml").data_schema
    assert schema.time == "last_seen_ts" and "signup" in schema.ignore
    assert {"age", "plan"} <= set(schema.ignore) and schema.numeric == ["income", "vip"]
    assert "--id COL" in CliRunner().invoke(main, ["init", "--help"]).output


@pytest.mark.parametrize(
    ("change", "kwargs", "message"),
    [
        ({}, {"id": "cust"}, r"--id cust: no such column \(columns: customer_id, signup"),
        (
            {"customer_id": [1, 2, 2, *range(4, 598), 7, 7, 600]},
            {"id": "customer_id"},
            r"--id customer_id: not unique: 2 value\(s\) occur more than once \(2, 7\)",
        ),
        (
            {"signup": ["31.02.2023", "someday", *["2023-01-01"] * 598]},
            {"time": "signup"},
            None,
        ),
        ({TARGET: 1}, {}, "'churned' has one class only"),
        (
            {TARGET: np.linspace(0, 1, 600)},
            {"task": "classification"},
            "--task classification: target column 'churned' has non-integer values",
        ),
    ],
)
def test_bad_input_is_refused_before_anything_is_written(
    tmp_path: Path, change: dict, kwargs: dict, message: str | None
) -> None:
    root = fresh(tmp_path)
    df = customers(600).assign(**change)
    src = tmp_path / "bad.csv"
    df.to_csv(src, index=False)
    if message is None:  # the time column: fine by share, so make most values unparseable
        df.loc[:300, "signup"] = "someday"
        df.to_csv(src, index=False)
        message = r"--time signup: .* do not parse as times \(e\.g\. 'someday'"
    with pytest.raises(EdgeloopError, match=message) as err:
        init_project(root, data=src, target=TARGET, **kwargs)
    assert str(err.value).startswith(f"{src}: ")
    assert not (root / "edgeloop.yaml").exists()


def demo_repo(base: Path) -> Path:
    """A repository where ``edgeloop init`` (the demo) ran and was committed."""
    root = fresh(base, "edgeloop")
    init_project(root)
    git_commit_all(root, "demo")
    return root


def test_init_data_replaces_the_untouched_demo_in_a_fresh_clone(tmp_path: Path) -> None:
    origin = demo_repo(tmp_path)
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(origin), str(clone)], check=True)
    assert not (clone / "data").exists() and (clone / "data.dvc").exists()
    demo_version = DataVersioner(load_settings(clone / "edgeloop.yaml")).version()
    assert untouched_demo(clone, clone / "edgeloop.yaml")

    report = init_project(clone, data=user_csv(tmp_path), target=TARGET)
    assert "replaced the untouched demo config, suite and data" in report.steps
    settings = load_settings(clone / "edgeloop.yaml")
    assert settings.project == "clone" and settings.data_schema.id == "customer_id"
    suite = json.loads(settings.suite_path().read_text(encoding="utf-8"))
    assert "customer_id" in json.dumps(suite) and "px_0_0" not in json.dumps(suite)
    labels = json.loads(settings.suite_path(settings.annotation.suite).read_text("utf-8"))
    sets = [
        e["kwargs"]["value_set"]
        for e in labels["expectations"]
        if e["kwargs"] == {"column": "label", "value_set": e["kwargs"].get("value_set")}
    ]
    assert sets == [[0, 1]]  # the user's classes, not the demo's ten digits
    assert not (clone / settings.edge_cases.rules_file).exists()  # the demo's rules are gone
    versioner = DataVersioner(settings)
    assert report.data_version not in (None, demo_version)
    assert versioner.version() == report.data_version and versioner.is_clean()
    assert len(DataStore(settings).load_dataset()) == 600


def test_a_changed_demo_is_never_replaced_without_force(tmp_path: Path) -> None:
    root = demo_repo(tmp_path)
    src = user_csv(tmp_path)
    suite = root / "expectations" / "batch.json"
    original = suite.read_text(encoding="utf-8")
    suite.write_text(original.replace('"max_value": 16', '"max_value": 17', 1), encoding="utf-8")
    assert not untouched_demo(root, root / "edgeloop.yaml")
    with pytest.raises(EdgeloopError, match=r"edgeloop.yaml: exists and differs; pass --force"):
        init_project(root, data=src, target=TARGET)
    suite.write_text(original, encoding="utf-8")
    assert untouched_demo(root, root / "edgeloop.yaml")

    edit_config(root, gates={"min_accuracy": 0.9})
    config = (root / "edgeloop.yaml").read_text(encoding="utf-8")
    with pytest.raises(EdgeloopError, match=r"edgeloop.yaml: exists and differs; pass --force"):
        init_project(root, data=src, target=TARGET)
    assert (root / "edgeloop.yaml").read_text(encoding="utf-8") == config  # untouched
    assert (root / "expectations" / "batch.json").read_text(encoding="utf-8") == original

    report = init_project(root, data=src, target=TARGET, force=True)
    assert report.settings.data_schema.id == "customer_id"
    assert DataVersioner(report.settings).is_clean()
    # A user's own reference set is not replaced by another file without --force either.
    other = tmp_path / "other.csv"
    customers(600, seed=5).to_csv(other, index=False)
    with pytest.raises(EdgeloopError, match=r"batch.json: exists and differs"):
        init_project(root, data=other, target=TARGET)
    # Same config and suite (two rows swapped), other rows: the reference set is refused too.
    swapped = customers(600).iloc[[1, 0, *range(2, 600)]]
    swapped.to_csv(other, index=False)
    with pytest.raises(EdgeloopError, match=r"reference.parquet: holds a different reference"):
        init_project(root, data=other, target=TARGET)
    assert init_project(root, data=other, target=TARGET, force=True).data_version


# ---------------------------------------------------------------------- the id, carried
class _Uniform:
    classes_ = np.array([0, 1])

    def predict_proba(self, x: pd.DataFrame) -> np.ndarray:
        return np.tile([0.7, 0.3], (len(x), 1))


def test_score_and_exports_carry_the_users_id(tmp_path: Path) -> None:
    from edgeloop.batch.annotation import export_tasks, label_studio_tasks, open_tasks
    from pipelines.score import score_frame

    root = fresh(tmp_path)
    settings = init_project(root, data=user_csv(tmp_path), target=TARGET).settings
    data = DataStore(settings).load_dataset()
    scores = score_frame(_Uniform(), data, settings.data_schema)
    assert list(scores.columns[:3]) == ["row_id", "customer_id", "batch_id"]
    assert scores["customer_id"].tolist() == data["customer_id"].tolist()

    queue = scores.iloc[[3, 10]].assign(reasons="low_confidence", surfaced_at="2024-01-01")
    qdir = settings.path("data") / "annotation" / "queue"
    qdir.mkdir(parents=True)
    queue.to_parquet(qdir / "000001-x.parquet", index=False)
    out = export_tasks(settings, tmp_path / "exports")
    csv = pd.read_csv(next(f for f in out["files"] if f.endswith(".csv")))
    assert list(csv.columns[:3]) == ["row_id", "customer_id", "batch_id"]
    assert csv["customer_id"].tolist() == [4, 11]
    task = label_studio_tasks(open_tasks(settings), settings)[0]["data"]
    assert task["customer_id"] == 4 and task["row"].startswith("customer_id=4, ")
