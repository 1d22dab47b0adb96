"""Hostile values from the data, end to end: formula cells and markup never run anywhere.

A project whose categorical column holds ``<script>`` and spreadsheet formulas, whose batch and
label files have markup in their names, goes through init, ingest, retrain, score, the CSV
export, a label import, monitor (dashboard) and the weekly review: every CSV cell a spreadsheet
would execute starts with ``'``, no page holds raw markup from the data, nothing crashes.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest

from edgeloop.data.exports import FORMULA_STARTS
from tests.conftest import new_project, production_batch, run_cli, small_reference

pytestmark = pytest.mark.slow

SCRIPT = "<script>alert(1)</script>"
FORMULAS = ['=HYPERLINK("http://x")', "+1", "-x", "@SUM(A1)"]
HOSTILE = [SCRIPT, *FORMULAS]
#: File names with markup and a formula start ("/" is the one character a name cannot hold).
BATCH_NAME = "@batch <i>one =1.csv"
QUARANTINED_NAME = "<img src=x onerror=alert(2)> =cmd.csv"
LABELS_NAME = "=labels <b>x .csv"


def _with_hostile_regions(frame, every: int):  # type: ignore[no-untyped-def]
    out = frame.copy()
    out["region"] = out["region"].astype("object")
    for i in range(0, len(out), every):
        out.loc[i, "region"] = HOSTILE[(i // every) % len(HOSTILE)]
    return out


def _ok(out) -> None:  # type: ignore[no-untyped-def]
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Traceback" not in out.stderr, out.stderr


def _no_raw_markup(page: str, what: str) -> None:
    assert "<script>alert" not in page and "<img src=x" not in page, what
    assert "<i>one" not in page and "<b>x" not in page, what


def test_hostile_values_are_neutralised_in_exports_and_escaped_in_reports(
    tmp_path: Path,
) -> None:
    reference = _with_hostile_regions(small_reference(), every=2)
    root = new_project(
        tmp_path, reference=reference, edge_cases={"min_confidence": 0.99, "budget": 40}
    )

    batch = tmp_path / BATCH_NAME
    _with_hostile_regions(production_batch(), every=1).to_csv(batch, index=False)
    out = run_cli("ingest", str(batch), "--json", cwd=root)
    _ok(out)
    assert json.loads(out.stdout)[0]["status"] == "accepted", out.stdout
    # A batch missing a column is quarantined: its file name reaches the review.
    broken = tmp_path / QUARANTINED_NAME
    production_batch(seed=12).drop(columns=["score"]).to_csv(broken, index=False)
    out = run_cli("ingest", str(broken), "--json", cwd=root)
    assert json.loads(out.stdout)[0]["status"] == "quarantined", out.stdout + out.stderr
    assert "Traceback" not in out.stderr, out.stderr

    _ok(run_cli("retrain", "--reason", f"{SCRIPT} =cmd|x", "--json", cwd=root))
    _ok(run_cli("score", cwd=root))

    # The annotators' sheet: every formula-looking text cell is quoted, ids and numbers are not.
    exports = tmp_path / "exports"
    _ok(run_cli("annotate", "export", "--out", str(exports), "--format", "csv", cwd=root))
    (sheet,) = exports.glob("*.csv")
    with sheet.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert rows, "no edge case was exported"
    regions = {r["region"] for r in rows}
    assert regions <= {SCRIPT, *(f"'{v}" for v in FORMULAS)}, regions
    assert {f"'{v}" for v in FORMULAS} & regions, regions
    for row in rows:
        for column, cell in row.items():
            if column in ("age", "income", "score", "confidence", "margin"):
                float(cell)  # a number stays a number
                continue
            assert not cell.startswith(FORMULA_STARTS), (column, cell)
        assert row["row_id"].startswith("000001-"), row["row_id"]  # ids are never quoted

    # Answers coming back: a quoted answer is kept as written, a formula one is not run later.
    answered = [dict(r) for r in rows[:3]]
    answered[0]["label"], answered[1]["label"], answered[2]["label"] = "1", "'=2+2", "=1+1"
    labels = tmp_path / LABELS_NAME
    with labels.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(answered[0]))
        writer.writeheader()
        writer.writerows(answered)
    out = run_cli("annotate", "import", str(labels), "--no-retrain", "--json", cwd=root)
    assert "Traceback" not in out.stderr, out.stderr
    (rejected,) = (root / "data" / "labels" / "rejected").glob("*/rejected.csv")
    with rejected.open(newline="", encoding="utf-8") as f:
        bad = {r["row_id"]: r for r in csv.DictReader(f)}
    assert bad[answered[1]["row_id"]]["label"] == "'=2+2"  # not altered, not quoted twice
    assert bad[answered[2]["row_id"]]["label"] == "'=1+1"
    assert answered[0]["row_id"] not in bad
    assert all(not c.startswith(FORMULA_STARTS) for r in bad.values() for c in r.values())

    # The dashboard and the weekly review: the values are there, escaped, never as markup.
    _ok(run_cli("monitor", "--no-retrain", "--json", cwd=root))
    dashboards = list(root.rglob("dashboard.html"))  # the page and its MLflow artifact copy
    assert root / "reports" / "dashboard.html" in dashboards, dashboards
    for dashboard in dashboards:
        page = dashboard.read_text(encoding="utf-8")
        _no_raw_markup(page, str(dashboard))
        assert "<table>" in page and "data:image/png" in page

    _ok(run_cli("report", "--json", cwd=root))
    (review_html,) = root.glob("reports/weekly-*.html")
    (review_md,) = root.glob("reports/weekly-*.md")
    page = review_html.read_text(encoding="utf-8")
    _no_raw_markup(page, "review")
    assert "&lt;script&gt;alert(1)&lt;/script&gt; =cmd|x" in page  # the retrain reason
    assert "&lt;img src=x onerror=alert(2)&gt; =cmd.csv" in page  # the quarantined file
    assert "=labels &lt;b&gt;x .csv" in page  # the label import
    text = review_md.read_text(encoding="utf-8")
    # Markup from the data only backslash-escaped: plain text in any markdown viewer.
    assert not re.search(r"(?<!\\)<(script|img|b>|i>)", text), text
    assert "\\<script\\>alert(1)\\</script\\> =cmd\\|x" in text
