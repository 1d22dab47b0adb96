"""Demo data: deterministic files, and a stream that breaks exactly as the module docstring says.

GX validation of the 198-expectation demo suite costs seconds per batch, so this module runs
four validations in all: the reference, batch 5, the broken export, and the remaining batches
concatenated (sound because every expectation of the suite is per column or per row and the
batches share columns and dtypes, which is checked first).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from edgeloop.core.config import ValidationSettings
from edgeloop.data.readers import read_batch
from edgeloop.demo.data import (
    CLASSES,
    FEATURES,
    REFERENCE_ROWS,
    SCANNER,
    TARGET,
    demo_schema,
    demo_suite,
    reference_frame,
    write_stream,
)
from pipelines.validate import decide, normalize_batch, validate_frame

SETTINGS = ValidationSettings()  # the default "rows" policy
EXPECTED_FILES = [
    "01-batch_01.csv",
    "02-batch_02.csv",
    "03-batch_03.csv",
    "04-batch_04.csv",
    "05-batch_05.csv",
    "06-batch_06_broken_export.csv",
    "07-batch_06.csv",
    "08-batch_07.csv",
    "09-batch_08.csv",
]
CORRUPTED = "05-batch_05.csv"
BROKEN = "06-batch_06_broken_export.csv"


@pytest.fixture(scope="module")
def suite() -> dict:
    return demo_suite()


@pytest.fixture(scope="module")
def stream(tmp_path_factory) -> list[Path]:
    return write_stream(tmp_path_factory.mktemp("stream"))


@pytest.fixture(scope="module")
def batches(stream) -> dict[str, pd.DataFrame]:
    return {p.name: normalize_batch(read_batch(p), demo_schema()) for p in stream}


def files_under(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


# --------------------------------------------------------------------------- determinism


def test_reference_parquet_is_byte_identical_for_same_seed(tmp_path: Path) -> None:
    a, b = tmp_path / "a.parquet", tmp_path / "b.parquet"
    reference_frame(7).to_parquet(a)
    reference_frame(7).to_parquet(b)
    assert a.read_bytes() == b.read_bytes()


def test_reference_depends_on_seed() -> None:
    assert not reference_frame(7).equals(reference_frame(8))


def test_stream_files_are_byte_identical_for_same_seed(tmp_path: Path) -> None:
    first = write_stream(tmp_path / "one", seed=7)
    second = write_stream(tmp_path / "two", seed=7)
    assert [p.name for p in first] == [p.name for p in second] == EXPECTED_FILES
    one, two = files_under(tmp_path / "one"), files_under(tmp_path / "two")
    assert len(one) == 2 * len(EXPECTED_FILES)  # each batch and its truth file
    assert one.keys() == two.keys()
    for name in one:
        assert one[name] == two[name], name
    other = files_under(write_stream(tmp_path / "three", seed=8)[0].parent)
    assert other["01-batch_01.csv"] != one["01-batch_01.csv"]


# --------------------------------------------------------------------------- shape of the data


def test_reference_frame_shape() -> None:
    ref = reference_frame()
    assert list(ref.columns) == [*FEATURES, SCANNER, TARGET]
    assert len(ref) == REFERENCE_ROWS
    assert set(ref[TARGET]) == set(CLASSES)
    assert set(ref[SCANNER]) <= {"A", "B", "C"}
    assert ref[FEATURES].min().min() >= 0 and ref[FEATURES].max().max() <= 16


def test_stream_order_labels_and_truth(stream) -> None:
    assert [p.name for p in stream] == EXPECTED_FILES
    for path in stream:
        raw = read_batch(path)
        truth = pd.read_csv(path.parent / "truth" / f"{path.stem.split('-', 1)[1]}.csv")
        assert len(truth) == len(raw)
        assert set(truth[TARGET]) <= set(CLASSES)
        # Production is mostly unlabeled: only the seeded audit sample carries its label,
        # and that label is the true one.
        labeled = raw[TARGET].notna()
        assert 0.05 < labeled.mean() < 0.4, f"{path.name}: {labeled.mean():.0%} labeled"
        assert (raw.loc[labeled, TARGET].astype(int) == truth.loc[labeled, TARGET]).all()


def test_scanner_c_share_grows(batches) -> None:
    share = {name: (df[SCANNER] == "C").mean() for name, df in batches.items()}
    assert share["01-batch_01.csv"] == 0 and share["02-batch_02.csv"] == 0
    assert share["03-batch_03.csv"] < share["09-batch_08.csv"]
    assert share["09-batch_08.csv"] > 0.7


# --------------------------------------------------------------------------- validation


def test_demo_suite_accepts_reference(suite) -> None:
    assert len(suite["expectations"]) == 198
    report = decide(validate_frame(reference_frame(), suite, batch="reference"), SETTINGS)
    assert report.decision == "accepted", report.reason


def test_clean_batches_are_accepted(suite, batches) -> None:
    clean = {name: df for name, df in batches.items() if name not in (CORRUPTED, BROKEN)}
    assert len(clean) == 7
    # The concatenation stands for each batch only if they agree on columns and dtypes.
    first = next(iter(clean.values()))
    for name, df in clean.items():
        assert list(df.columns) == [*FEATURES, SCANNER, TARGET], name
        assert df.dtypes.equals(first.dtypes), name
    combined = pd.concat(clean.values(), ignore_index=True)
    report = decide(validate_frame(combined, suite, batch="clean batches"), SETTINGS)
    assert report.decision == "accepted", report.reason


def test_batch_05_loses_only_its_three_corrupted_rows(suite, batches) -> None:
    df = batches[CORRUPTED]
    report = decide(validate_frame(df, suite, batch=CORRUPTED), SETTINGS)
    assert report.decision == "partial", report.reason
    assert len(report.bad_rows) == 3
    assert report.rows_accepted == len(df) - 3
    # A null pixel, an out-of-range intensity, an unknown scanner id: one row each.
    by_kind = {f.expectation: f for f in report.failed}
    assert set(by_kind) == {
        "expect_column_values_to_not_be_null",
        "expect_column_values_to_be_between",
        "expect_column_values_to_be_in_set",
    }
    assert by_kind["expect_column_values_to_be_in_set"].column == SCANNER
    assert by_kind["expect_column_values_to_be_in_set"].examples == ["Z9"]
    assert by_kind["expect_column_values_to_be_between"].examples == [40]
    assert all(f.unexpected_count == 1 for f in report.failed)
    assert sorted(r for f in report.failed for r in f.rows) == list(report.bad_rows)
    bad = df.iloc[list(report.bad_rows)]
    assert bad[SCANNER].eq("Z9").sum() == 1
    assert bad[FEATURES].isna().any(axis=1).sum() == 1
    assert (bad[FEATURES] > 16).any(axis=1).sum() == 1


def test_broken_export_is_quarantined_whole(suite, batches) -> None:
    df = batches[BROKEN]
    report = decide(validate_frame(df, suite, batch=BROKEN), SETTINGS)
    assert report.decision == "quarantined"
    assert report.rows_accepted == 0
    assert "table-level failure" in report.reason
    assert "expect_table_columns_to_match_set" in report.reason
    assert "pixel_0_0" in report.reason and "px_0_0" in report.reason
    assert "px_4_4" in report.failed_columns  # the "n/a" values


def test_the_committed_config_is_the_one_the_demo_ships_with() -> None:
    """A fresh clone's edgeloop.yaml is ``demo_settings``: ``init`` and the demo treat it as
    untouched, and a setting the demo relies on (e.g. ``shadow.auto_promote``) is really on."""
    from edgeloop.core.config import load_settings
    from edgeloop.stack.init import demo_settings

    root = Path(__file__).resolve().parents[2]
    committed = load_settings(root / "edgeloop.yaml")
    assert committed == demo_settings(root)
    assert committed.shadow.auto_promote
