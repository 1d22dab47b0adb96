"""A new user's own data, end to end through the CLI: files of the kinds teams really have.

Each file is made here, seeded, with what public tabular data carries: an integer or string id,
a date column in two formats (ISO and dd/mm/yyyy) or epoch seconds, missing values, a
high-cardinality string, a constant and an all-null column, an imbalanced binary target, a
continuous one. Nothing is tuned to these files: the same inference runs on any table.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from tests.conftest import git_commit_all, git_init, run_cli

pytestmark = pytest.mark.slow


def churn(rows: int, first_id: int, start: str, seed: int, *, labeled: bool = True) -> pd.DataFrame:
    """Customers of a subscription business; ``churned`` (about 10 %) depends on the features."""
    rng = np.random.default_rng(seed)
    dates = pd.Timestamp(start) + pd.to_timedelta(rng.integers(0, 180, rows), unit="D")
    iso = rng.random(rows) < 0.5
    plan = rng.choice(["basic", "pro", "enterprise"], rows, p=[0.6, 0.3, 0.1])
    tenure = rng.integers(1, 72, rows)
    calls = rng.poisson(1.5, rows)
    charges = np.round(rng.normal(70, 20, rows), 2)
    charges[rng.random(rows) < 0.05] = np.nan
    logit = -2.6 + 0.55 * calls - 0.04 * tenure + 0.9 * (plan == "basic")
    frame = pd.DataFrame(
        {
            "customer_id": np.arange(first_id, first_id + rows),
            "signup_date": np.where(iso, dates.strftime("%Y-%m-%d"), dates.strftime("%d/%m/%Y")),
            "plan": plan,
            "city": rng.choice([f"city_{i:03d}" for i in range(300)], rows),
            "tenure_months": tenure,
            "support_calls": calls,
            "monthly_charges": charges,
            "source": "web",
            "notes": np.nan,
        }
    )
    if labeled:
        frame["churned"] = (rng.random(rows) < 1 / (1 + np.exp(-logit))).astype(int)
    return frame


def orders(
    rows: int, first: int, start_ts: int, seed: int, *, labeled: bool = True
) -> pd.DataFrame:
    """Web orders: string ids, epoch-second timestamps, a SKU code with many values, 3 classes."""
    rng = np.random.default_rng(seed)
    qty = rng.integers(0, 6, rows)
    amount = np.round(rng.gamma(2.0, 30.0, rows), 2)
    frame = pd.DataFrame(
        {
            "order_id": [f"ORD-{i:07d}" for i in range(first, first + rows)],
            "created_ts": start_ts + np.sort(rng.integers(0, 90 * 86400, rows)),
            "sku": rng.choice([f"SKU{i:04d}" for i in range(400)], rows),
            "channel": rng.choice(["web", "app", "store"], rows),
            "quantity": qty,
            "amount": amount,
        }
    )
    if labeled:
        score = amount / 60 + qty / 3 + rng.normal(0, 0.4, rows)
        frame["segment"] = np.select([score < 1.2, score < 2.2], ["low", "mid"], "high")
    return frame


def _project(tmp_path: Path, reference: pd.DataFrame, target: str, name: str) -> Path:
    root = tmp_path / name
    root.mkdir()
    git_init(root)
    src = tmp_path / f"{name}-reference.csv"
    reference.to_csv(src, index=False)
    out = run_cli("init", "--data", str(src), "--target", target, cwd=root)
    assert out.returncode == 0, out.stdout + out.stderr
    git_commit_all(root, "init")
    return root


def test_churn_table_runs_the_loop(tmp_path: Path) -> None:
    root = _project(tmp_path, churn(3000, 1, "2024-01-01", 1), "churned", "churn")
    config = (root / "edgeloop.yaml").read_text(encoding="utf-8")
    # Roles: the id and the date are never features; constant and all-null columns are left out.
    for line in ("id: customer_id", "time: signup_date", "high_cardinality: [city]", "split: time"):
        assert line in config, config
    assert "ignore: [source, notes]" in config and "balanced_accuracy" in config

    # Next month's customers: ids and dates beyond the reference's, unlabeled: accepted.
    later = tmp_path / "next_month.csv"
    churn(500, 3001, "2024-07-01", 2, labeled=False).to_csv(later, index=False)
    out = run_cli("ingest", str(later), "--json", cwd=root)
    assert out.returncode == 0, out.stdout + out.stderr
    (batch,) = json.loads(out.stdout)
    assert (batch["status"], batch["rows_accepted"]) == ("accepted", 500), batch

    # A corrupt export: a repeated id, a date that is not one, a negative count.
    bad = churn(50, 3501, "2024-08-01", 3, labeled=False)
    bad.loc[4, "customer_id"] = bad.loc[3, "customer_id"]
    bad.loc[7, "signup_date"] = "not a date"
    bad.loc[9, "support_calls"] = -2
    corrupt = tmp_path / "corrupt.csv"
    bad.to_csv(corrupt, index=False)
    out = run_cli("ingest", str(corrupt), "--json", cwd=root)
    assert out.returncode == 1, out.stdout + out.stderr
    (batch,) = json.loads(out.stdout)
    assert batch["status"] == "partial" and batch["rows_quarantined"] == 4, batch
    for column in ("customer_id", "signup_date", "support_calls"):
        assert column in batch["reason"], batch["reason"]
    report = (root / batch["stored"][-1]).read_text(encoding="utf-8") if batch.get("stored") else ""
    assert "not a date" in report or "not a date" in out.stdout

    # The first champion has to beat the majority baseline on balanced accuracy.
    out = run_cli("retrain", "--json", cwd=root)
    assert out.returncode == 0, out.stdout + out.stderr
    summary = json.loads(out.stdout)
    assert summary["alias"] == "champion"
    assert (
        summary["metrics"]["balanced_accuracy"]
        > summary["baseline_metrics"]["baseline_balanced_accuracy"] + 0.05
    )
    gates = {g["name"]: g for g in summary["gates"]["checks"]}
    assert gates["min_lift_over_baseline"]["passed"] and "class_1_recall" in gates

    # Scoring surfaces edge cases; annotators see the customer's own id.
    assert run_cli("score", cwd=root).returncode == 0
    exports = tmp_path / "exports"
    out = run_cli("annotate", "export", "--out", str(exports), "--format", "csv", cwd=root)
    assert out.returncode == 0, out.stdout + out.stderr
    (sheet,) = exports.glob("*.csv")
    with sheet.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert rows and "customer_id" in rows[0]
    assert {int(r["customer_id"]) for r in rows} <= set(range(3001, 3551))


def test_orders_with_string_ids_and_epoch_times(tmp_path: Path) -> None:
    root = _project(tmp_path, orders(1500, 1, 1_700_000_000, 4), "segment", "orders")
    config = (root / "edgeloop.yaml").read_text(encoding="utf-8")
    assert "id: order_id" in config and "time: created_ts" in config, config
    later = tmp_path / "week.csv"
    orders(300, 1501, 1_700_000_000 + 91 * 86400, 5, labeled=False).to_csv(later, index=False)
    out = run_cli("ingest", str(later), "--json", cwd=root)
    assert out.returncode == 0, out.stdout + out.stderr
    assert json.loads(out.stdout)[0]["status"] == "accepted"
    # Five years ahead is not a plausible order time; a negative quantity is impossible.
    bad = orders(40, 1801, 1_700_000_000 + 92 * 86400, 6, labeled=False)
    bad.loc[2, "created_ts"] = 1_700_000_000 + 5 * 365 * 86400 + 10**8
    bad.loc[5, "quantity"] = -1
    corrupt = tmp_path / "corrupt.csv"
    bad.to_csv(corrupt, index=False)
    out = run_cli("ingest", str(corrupt), "--json", cwd=root)
    assert out.returncode == 1, out.stdout + out.stderr
    (batch,) = json.loads(out.stdout)
    assert batch["rows_quarantined"] == 2 and "created_ts" in batch["reason"], batch
    assert "quantity" in batch["reason"], batch["reason"]
    out = run_cli("retrain", "--json", cwd=root)
    assert out.returncode == 0, out.stdout + out.stderr
    assert json.loads(out.stdout)["alias"] == "champion"


def test_a_continuous_target_makes_a_regression_project(tmp_path: Path) -> None:
    frame = churn(400, 1, "2024-01-01", 7, labeled=False)
    frame["price"] = np.round(np.random.default_rng(8).normal(300_000, 50_000, len(frame)), 2)
    root = tmp_path / "houses"
    root.mkdir()
    git_init(root)
    src = tmp_path / "houses.csv"
    frame.to_csv(src, index=False)
    out = run_cli("init", "--data", str(src), "--target", "price", cwd=root)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "continuous: regression (400 distinct values" in out.stdout, out.stdout
    config = yaml.safe_load((root / "edgeloop.yaml").read_text(encoding="utf-8"))
    assert config["schema"]["task"] == "regression" and config["schema"]["classes"] == []
