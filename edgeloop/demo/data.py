"""Demo data: scikit-learn's bundled handwritten digits, as a reference set plus a drifting stream.

The story. A postal sorting line reads handwritten digits from 8x8 scans (pixel intensities
0..16). The model was trained on scans from scanners A and B. Then a new scanner, C, is rolled
out: its scans have lower contrast, more sensor noise and a slight misalignment, and its share
of the traffic grows batch after batch. Ambiguous digits (1/7, 3/8/9, 4/9) written on scanner C
are exactly the edge cases a confidence threshold surfaces, and the ones worth labeling.

Everything is seeded (``seed``) and generated in memory from ``sklearn.datasets.load_digits``
(shipped inside scikit-learn; nothing is downloaded), so the same seed gives byte-identical files.

Stream (``demo_stream``), in order:

* ``batch_01``, ``batch_02``: scanners A/B only, no drift.
* ``batch_03`` .. ``batch_08``: scanner C's share rises from 30 % to 90 %; C's contrast falls
  and its noise grows with each batch (``drift_severity``).
* ``batch_05`` also carries a few corrupted rows (a null pixel, an out-of-range intensity, an
  unknown scanner id): under the default ``rows`` policy only those rows are quarantined.
* ``batch_06_broken_export``: batch 6 as written by a broken exporter (a renamed column and
  "#ERR" text in a pixel column): the whole file is quarantined. The fixed export, ``batch_06``,
  arrives right after it.

Production batches are mostly unlabeled: only a seeded ``AUDIT_FRACTION`` (20 %) of rows
carry their label, as if a manual check station verified one letter in five. The full ground
truth is written beside each batch under ``truth/`` for the demo's *simulated annotator* (the
one stand-in the demo uses), never for the model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

    from edgeloop.core.config import SchemaSettings

TARGET = "digit"
SCANNER = "scanner"
FEATURES = [f"px_{r}_{c}" for r in range(8) for c in range(8)]
CLASSES = list(range(10))
REFERENCE_ROWS = 600
STREAM_BATCHES = 8
ID_COLUMN = "row_id"
AUDIT_FRACTION = 0.2

#: Failure-trigger rules for the demo (written to expectations/edge_rules.yaml by init).
DEMO_RULES = """\
# Failure-trigger rules: rows matching every condition of a rule go to annotators, whatever
# the model's confidence. Columns: any feature, predicted, confidence, margin, p_<class>.
rules:
  - name: faint_scan_from_c
    description: Scanner C's faint scans are where the model fails silently.
    when:
      - {column: scanner, op: "==", value: C}
      - {column: px_3_4, op: "<", value: 4}
  - name: one_or_seven_under_0_8
    description: 1 and 7 are the classic confusion; check them unless the model is sure.
    when:
      - {column: predicted, op: in, value: [1, 7]}
      - {column: confidence, op: "<", value: 0.8}
"""


@dataclass(frozen=True)
class DemoBatch:
    """One file of the demo stream and the ground truth held back for the simulated annotator."""

    name: str
    frame: pd.DataFrame
    truth: pd.DataFrame
    note: str


def demo_schema() -> SchemaSettings:
    """The schema the demo config declares."""
    from edgeloop.core.config import SchemaSettings

    return SchemaSettings(
        features=[*FEATURES, SCANNER], categorical=[SCANNER], target=TARGET, classes=list(CLASSES)
    )


def _digits(seed: int) -> tuple[np.ndarray, np.ndarray]:
    import numpy as np
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = bunch.data.astype(np.int64)
    y = bunch.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(y))
    return x[order], y[order]


def drift_severity(batch_index: int) -> float:
    """0 for the first two batches, then rising linearly to 1 at the last."""
    if batch_index < 3:
        return 0.0
    return (batch_index - 2) / (STREAM_BATCHES - 2)


def scanner_c(images: np.ndarray, severity: float, rng: np.random.Generator) -> np.ndarray:
    """What scanner C does to a scan: lower contrast, noise, a one-pixel shift for some."""
    import numpy as np

    img = images.reshape(-1, 8, 8).astype(np.float64)
    contrast = 0.85 - 0.35 * severity
    img = img * contrast + rng.normal(0.0, 0.5 + 2.0 * severity, img.shape)
    shift = rng.random(len(img)) < 0.5 * severity
    img[shift] = np.roll(img[shift], 1, axis=2)
    return np.clip(np.rint(img), 0, 16).astype(np.int64).reshape(len(images), 64)


def _frame(x: np.ndarray, scanners: list[str], y: np.ndarray | None) -> pd.DataFrame:
    import pandas as pd

    df = pd.DataFrame(x, columns=FEATURES)
    df[SCANNER] = pd.array(scanners, dtype="str")
    if y is not None:
        df[TARGET] = y
    return df


def reference_frame(seed: int = 7) -> pd.DataFrame:
    """The labeled reference set the first model is trained on (scanners A and B, a little C)."""
    import numpy as np

    x, y = _digits(seed)
    x, y = x[:REFERENCE_ROWS], y[:REFERENCE_ROWS]
    rng = np.random.default_rng(seed + 1)
    scanners = rng.choice(["A", "B", "C"], size=len(y), p=[0.5, 0.45, 0.05])
    is_c = scanners == "C"
    x = x.copy()
    # The few C scans in the reference were taken before its contrast problem: mild only.
    x[is_c] = scanner_c(x[is_c], 0.0, rng)
    return _frame(x, [str(s) for s in scanners], y)


def demo_stream(seed: int = 7) -> list[DemoBatch]:
    """The production stream, in arrival order (see the module docstring)."""
    import numpy as np
    import pandas as pd

    x, y = _digits(seed)
    x, y = x[REFERENCE_ROWS:], y[REFERENCE_ROWS:]
    chunks = np.array_split(np.arange(len(y)), STREAM_BATCHES)
    rng = np.random.default_rng(seed + 2)
    audit_rng = np.random.default_rng(seed + 3)
    out: list[DemoBatch] = []
    for i, idx in enumerate(chunks, start=1):
        sev = drift_severity(i)
        c_share = 0.0 if sev == 0 else 0.3 + 0.6 * sev
        scanners = rng.choice(["A", "B", "C"], size=len(idx), p=[(1 - c_share) / 2] * 2 + [c_share])
        xb = x[idx].copy()
        is_c = scanners == "C"
        if is_c.any():
            xb[is_c] = scanner_c(xb[is_c], sev, rng)
        frame = _frame(xb, [str(s) for s in scanners], None)
        audited = audit_rng.random(len(idx)) < AUDIT_FRACTION
        frame[TARGET] = pd.array(
            [int(v) if a else None for v, a in zip(y[idx], audited, strict=True)], dtype="Int64"
        )
        truth = frame[[]].assign(**{TARGET: y[idx]})
        name = f"batch_{i:02d}"
        note = "in distribution" if sev == 0 else f"scanner C at {c_share:.0%}, severity {sev:.2f}"
        if i == 5:
            frame = _corrupt_rows(frame)
            note += "; 3 corrupted rows"
        if i == 6:
            out.append(
                DemoBatch(f"{name}_broken_export", _broken_export(frame), truth, "broken exporter")
            )
            note += "; fixed re-export"
        out.append(DemoBatch(name, frame, truth, note))
    return out


def _corrupt_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """A null pixel, an impossible intensity, an unknown scanner id: one bad row each."""
    df = frame.copy()
    df["px_3_3"] = df["px_3_3"].astype("float64")
    df.loc[4, "px_3_3"] = float("nan")
    df.loc[17, "px_2_5"] = 40
    df.loc[29, SCANNER] = "Z9"
    return df


def _broken_export(frame: pd.DataFrame) -> pd.DataFrame:
    """What a broken exporter writes: a renamed column and text in a numeric one."""
    df = frame.rename(columns={"px_0_0": "pixel_0_0"})
    df["px_4_4"] = df["px_4_4"].astype("str")
    # Not "n/a": pandas would read that as a null; an error token keeps the column text.
    df.loc[::7, "px_4_4"] = "#ERR"
    return df


def write_stream(folder: Path, seed: int = 7) -> list[Path]:
    """Write the stream as CSV files (and ``truth/`` beside it); return the batch paths in order."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "truth").mkdir(exist_ok=True)
    paths = []
    for i, b in enumerate(demo_stream(seed)):
        path = folder / f"{i + 1:02d}-{b.name}.csv"
        b.frame.to_csv(path, index=False)
        b.truth.to_csv(folder / "truth" / f"{b.name}.csv", index_label="row")
        paths.append(path)
    return paths


def demo_suite(seed: int = 7) -> dict[str, Any]:
    """The demo's batch suite: bootstrapped from the reference, then edited as a user would.

    The edits: pixel ranges come from the scanner spec (0..16), not from what the reference
    happened to contain (a corner pixel that was always 0 is not an error when it is 1), and
    they and the scanner set are hard (a soft range would only warn).
    """
    from pipelines.profile import bootstrap_suite

    suite = bootstrap_suite(reference_frame(seed), demo_schema(), name="batch")
    # The spec's hard 0..16 below makes a separate ">= 0" on a pixel redundant.
    suite["expectations"] = [
        e
        for e in suite["expectations"]
        if not (
            e["type"] == "expect_column_values_to_be_between"
            and e["kwargs"]["column"] in FEATURES
            and "max_value" not in e["kwargs"]
        )
    ]
    for exp in suite["expectations"]:
        if (
            exp["type"] == "expect_column_values_to_be_between"
            and exp["kwargs"]["column"] in FEATURES
        ):
            exp["kwargs"]["min_value"], exp["kwargs"]["max_value"] = 0, 16
            exp["severity"] = "critical"  # the spec's range: outside it is a broken scan
        elif (
            exp["type"] == "expect_column_values_to_be_in_set"
            and exp["kwargs"]["column"] == SCANNER
        ):
            exp["severity"] = "critical"  # scanners are known devices: a new one is an error
    suite["meta"]["note"] = (
        "Bootstrapped from the demo reference set, then pixel ranges set to the scanner spec 0..16."
    )
    return suite
