"""A regression project through the loop as a user runs it: init on a CSV with a continuous
target, ingest, retrain, score, edge cases, annotate (CSV out and back), a challenger, shadow
evaluation, monitoring, status and the review.

The labels come from held-back ground truth: this test's simulated annotator (the stand-in the
demo uses too), not a person.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests.conftest import git_commit_all, git_init, housing_reference, run_cli

pytestmark = pytest.mark.slow


def _batch(path: Path, rows: int, seed: int, start: str) -> pd.DataFrame:
    """Write an unlabeled batch; return its held-back truth (listing_id, price)."""
    df = housing_reference(rows, seed, start=start)
    df.drop(columns=["price"]).to_csv(path, index=False)
    return df[["listing_id", "price"]]


def test_a_continuous_target_runs_the_whole_loop(tmp_path: Path) -> None:
    root = tmp_path / "houses"
    root.mkdir()
    git_init(root)
    housing_reference(400, seed=5).to_csv(tmp_path / "reference.csv", index=False)
    res = run_cli("init", "--data", str(tmp_path / "reference.csv"), "--target", "price", cwd=root)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "regression" in res.stdout
    cfg = yaml.safe_load((root / "edgeloop.yaml").read_text(encoding="utf-8"))
    assert cfg["schema"]["task"] == "regression" and cfg["schema"]["classes"] == []
    assert cfg["gates"]["metric"] == "r2" and cfg["shadow"]["metric"] == "abs_error"
    # Small batches: lower the budget so a few labels per batch arrive, and retrain by hand.
    cfg["edge_cases"]["budget"] = 20
    cfg["annotation"]["retrain_after_labels"] = 0
    (root / "edgeloop.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    git_commit_all(root, "init")

    res = run_cli("retrain", "--json", cwd=root)
    assert res.returncode == 0, res.stdout + res.stderr
    first = json.loads(res.stdout)
    assert first["status"] == "registered" and first["alias"] == "champion", first
    assert first["metrics"]["r2"] > 0.6 and first["metrics"]["mae"] > 0

    truth = [
        _batch(tmp_path / "b1.csv", 150, seed=21, start="2025-03-01"),
        _batch(tmp_path / "b2.csv", 150, seed=22, start="2025-03-08"),
    ]
    res = run_cli("ingest", str(tmp_path / "b1.csv"), str(tmp_path / "b2.csv"), "--json", cwd=root)
    assert res.returncode == 0, res.stdout + res.stderr

    res = run_cli("score", "--json", cwd=root)
    assert res.returncode == 0, res.stdout + res.stderr
    scores = sorted((root / "scores").glob("*/champion-v1.parquet"))
    assert len(scores) == 2
    scored = pd.read_parquet(scores[0])
    assert scored["predicted"].dtype == "float64" and scored["spread"].gt(0).all()

    res = run_cli("annotate", "export", "--format", "csv", "--out", str(tmp_path / "x"), cwd=root)
    assert res.returncode == 0, res.stdout + res.stderr
    (exported,) = (tmp_path / "x").glob("tasks-*.csv")
    tasks = pd.read_csv(exported)
    assert 0 < len(tasks) <= 40 and tasks["predicted"].dtype == "float64"
    # The simulated annotator answers from the held-back truth; one answer is not a number.
    answers = pd.concat(truth).set_index("listing_id")["price"]
    tasks["label"] = tasks["listing_id"].map(answers)
    tasks["label"] = tasks["label"].astype("object")
    tasks.loc[0, "label"] = "expensive"
    answered = tmp_path / "answered.csv"
    tasks.to_csv(answered, index=False)
    res = run_cli("annotate", "import", str(answered), "--json", cwd=root)
    assert res.returncode == 1, res.stdout + res.stderr  # one row rejected, named
    imported = json.loads(res.stdout)
    assert imported["accepted"] == len(tasks) - 1 and imported["rejected"] == 1
    report = Path(imported["report"])
    report = report if report.is_absolute() else root / report
    assert "expensive" in report.read_text(encoding="utf-8")
    assert "not a number" in report.read_text(encoding="utf-8")

    res = run_cli("retrain", "--force", "--json", cwd=root)
    assert res.returncode in (0, 1), res.stdout + res.stderr
    second = json.loads(res.stdout)
    assert second["metrics"]["r2"] > 0.6
    assert second["status"] == "registered" and second["alias"] == "challenger", second
    # A batch after the challenger's deployment: scored by both, its edge cases and evaluation
    # sample answered, then the shadow evaluation on it.
    truth.append(_batch(tmp_path / "b3.csv", 150, seed=23, start="2025-03-15"))
    res = run_cli("ingest", str(tmp_path / "b3.csv"), cwd=root)
    assert res.returncode == 0, res.stdout + res.stderr
    res = run_cli("score", "--json", cwd=root)
    assert res.returncode == 0, res.stdout + res.stderr
    assert len(sorted((root / "scores").glob("*/challenger-v2.parquet"))) == 3
    res = run_cli("annotate", "export", "--format", "csv", "--out", str(tmp_path / "y"), cwd=root)
    assert res.returncode == 0, res.stdout + res.stderr
    (exported,) = (tmp_path / "y").glob("tasks-*.csv")
    tasks = pd.read_csv(exported)
    answers = pd.concat(truth).set_index("listing_id")["price"]
    tasks["label"] = tasks["listing_id"].map(answers)
    tasks.to_csv(answered, index=False)
    res = run_cli("annotate", "import", str(answered), "--no-retrain", "--json", cwd=root)
    assert res.returncode == 0, res.stdout + res.stderr
    res = run_cli("shadow-evaluate", "--json", cwd=root)
    assert res.returncode == 0, res.stdout + res.stderr
    shadow = json.loads(res.stdout)
    comparison = shadow["comparison"]
    assert comparison["metric"] == "abs_error" and comparison["n_rows"] == 150, shadow
    assert comparison["n"] > 0 and comparison["scale"] > 0  # labeled rows both models scored
    assert shadow["state"] in ("promote", "keep", "need_more"), shadow

    res = run_cli("monitor", "--json", cwd=root)
    assert res.returncode == 0, res.stdout + res.stderr
    res = run_cli("status", "--json", cwd=root)
    assert res.returncode == 0, res.stdout + res.stderr
    state = json.loads(res.stdout)
    assert state["models"]["champion"]["r2"] > 0.6
    res = run_cli("report", "--json", cwd=root)
    assert res.returncode == 0, res.stdout + res.stderr
    (review_file,) = (root / "reports").glob("weekly-*.md")
    review = review_file.read_text(encoding="utf-8")
    assert "R²" in review and "MAE" in review and "macro" not in review.lower()
