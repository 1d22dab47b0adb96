"""CSV files for people: text a spreadsheet would execute gets a leading quote, nothing else."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from edgeloop.data.exports import FORMULA_STARTS, safe_cell, safe_cells, write_csv_for_people

HOSTILE = ['=HYPERLINK("http://x")', "+1", "-x", "@SUM(A1)", "\tcmd", "\rcmd"]


@pytest.mark.parametrize("value", HOSTILE)
def test_a_formula_cell_gets_a_leading_quote(value: str) -> None:
    assert safe_cell(value) == "'" + value


@pytest.mark.parametrize("value", ["north", "", " =x", "'=1+1", "1-2", "<script>", "a=b"])
def test_other_text_is_left_alone(value: str) -> None:
    # A cell already quoted (an annotator's answer coming back) is not quoted twice.
    assert safe_cell(value) == value


@pytest.mark.parametrize("value", [-3.5, -1, 0, np.float64(-2.0), None, np.nan, pd.NA, True])
def test_numbers_and_missing_values_are_not_text(value: object) -> None:
    assert safe_cell(value) is value


def test_a_frame_keeps_numbers_and_ids_and_quotes_text(tmp_path: Path) -> None:
    frame = pd.DataFrame(
        {
            "row_id": ["ref-000001", "000002-0123456789ab-000003", "ref-000004"],
            "income": [-3.5, 12.0, np.nan],
            "age": [-1, 2, 3],
            "region": pd.array(["=1+1", "north", None], dtype="str"),
            "mixed": [-7, "-7", "@x"],
            "kind": pd.Categorical(["+a", "b", "+a"]),
            "at": pd.to_datetime(["2024-01-01", "2024-01-02", None]),
            "=cost": [1, 2, 3],
        }
    )
    out = safe_cells(frame)
    assert list(out.columns) == [*frame.columns[:-1], "'=cost"]
    assert out["row_id"].tolist() == frame["row_id"].tolist()
    assert out["income"].equals(frame["income"]) and out["age"].equals(frame["age"])
    assert out["region"].tolist()[:2] == ["'=1+1", "north"] and pd.isna(out["region"].iloc[2])
    assert out["mixed"].tolist() == [-7, "'-7", "'@x"]
    assert out["kind"].tolist() == ["'+a", "b", "'+a"]
    assert out["at"].equals(frame["at"])
    assert frame["region"].iloc[0] == "=1+1"  # the caller's frame is not changed

    path = write_csv_for_people(frame, tmp_path / "out.csv")
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    assert rows[0][-1] == "'=cost"
    cells = [c for row in rows for c in row]
    assert not [c for c in cells if c.startswith(FORMULA_STARTS) and c not in ("-3.5", "-1", "-7")]
    assert rows[1][1:3] == ["-3.5", "-1"]  # negative numbers stay numbers
    back = pd.read_csv(path)
    assert back["income"].iloc[0] == -3.5 and back["row_id"].tolist() == frame["row_id"].tolist()
