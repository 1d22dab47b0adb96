"""Label-free estimates of a monitored batch: CBPE accuracy of the champion and the challenger.

Each model's score file gives its top-1 confidence per row; ``pipelines.performance`` turns the
calibrated confidences into the batch's estimated accuracy (NannyML's CBPE method). The
calibrations are the JSON artifacts of the retrain runs (``edgeloop.models.training``):

* the challenger: its own run's ``keys.CALIBRATION_ARTIFACT`` (fitted on its holdout);
* the champion: its recalibration on the challenger's holdout (``keys.CHAMPION_CALIBRATION_ARTIFACT``
  of the challenger's run) when that run recalibrated this very version, so both estimates go
  through calibrations fitted on the same rows; otherwise its own run's calibration;
* a version registered before calibrations were stored: raw confidence, flagged ``raw``.

A regression project has no estimates (``note`` says why once: CBPE calibrates a classifier's
confidence); the monitor measures MAE, RMSE and R² on the labeled rows instead.

The estimates inform: ``flags`` asks for labels when the champion's estimate is below
``gates.min_accuracy`` or the challenger looks worse than the champion. Nothing here promotes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException

from edgeloop.core import keys
from edgeloop.core.config import Settings
from edgeloop.core.errors import EdgeloopError
from edgeloop.tracking.registry import Registry
from pipelines.performance import (
    REGRESSION_NOTE,
    AccuracyEstimate,
    ConfidenceCalibration,
    estimate_accuracy,
    estimate_macro_f1,
)

#: Where a model's calibration came from.
SOURCE_OWN = "own"  # its own retrain run's holdout
SOURCE_SHARED = "challenger-holdout"  # the champion recalibrated on the challenger's holdout
SOURCE_RAW = "raw"  # none stored: raw confidence


@dataclass(frozen=True)
class ModelEstimate:
    """One model's label-free estimates on one batch."""

    version: str
    accuracy: AccuracyEstimate
    macro_f1: float | None
    source: str

    @property
    def calibrated(self) -> bool:
        return self.source != SOURCE_RAW


@dataclass(frozen=True)
class BatchEstimates:
    """Champion's and challenger's estimates on a batch, and what they suggest."""

    champion: ModelEstimate | None = None
    challenger: ModelEstimate | None = None
    flags: list[str] = field(default_factory=list)
    #: Why there are no estimates at all (a regression target), else empty.
    note: str = ""

    def metrics(self) -> dict[str, float]:
        """The monitoring run's CBPE metrics (names in ``edgeloop.core.keys``)."""
        out: dict[str, float] = {}
        for alias, est, name in (
            (keys.CHAMPION, self.champion, keys.METRIC_CBPE_ACCURACY_CHAMPION),
            (keys.CHALLENGER, self.challenger, keys.METRIC_CBPE_ACCURACY_CHALLENGER),
        ):
            if est is None:
                continue
            out[name] = est.accuracy.estimate
            out[name + keys.CBPE_LOW_SUFFIX] = est.accuracy.low
            out[name + keys.CBPE_HIGH_SUFFIX] = est.accuracy.high
            out[keys.METRIC_CBPE_CALIBRATED_PREFIX + alias] = float(est.calibrated)
            if est.macro_f1 is not None:
                out[keys.METRIC_CBPE_MACRO_F1_PREFIX + alias] = est.macro_f1
        return {k: v for k, v in out.items() if math.isfinite(v)}

    def to_dict(self) -> dict[str, Any]:
        def one(e: ModelEstimate | None) -> dict[str, Any] | None:
            if e is None:
                return None
            return {
                "version": e.version,
                "source": e.source,
                "macro_f1": e.macro_f1,
                **e.accuracy.to_dict(),
            }

        return {
            "champion": one(self.champion),
            "challenger": one(self.challenger),
            "flags": self.flags,
            **({"note": self.note} if self.note else {}),
        }


class Calibrations:
    """The calibrations of registered versions, each read once per monitoring call."""

    def __init__(self, settings: Settings) -> None:
        self.registry = Registry(settings)
        self._runs: dict[str, str] = {}
        self._files: dict[tuple[str, str], dict[str, Any] | None] = {}

    def _run_id(self, version: str) -> str:
        if version not in self._runs:
            try:
                self._runs[version] = str(self.registry.version(version).run_id or "")
            except EdgeloopError:
                self._runs[version] = ""
        return self._runs[version]

    def _artifact(self, version: str, path: str) -> dict[str, Any] | None:
        key = (version, path)
        if key not in self._files:
            run_id = self._run_id(version)
            data: dict[str, Any] | None = None
            if run_id:
                import mlflow.artifacts

                try:
                    data = mlflow.artifacts.load_dict(f"runs:/{run_id}/{path}")
                except (MlflowException, OSError, ValueError):
                    data = None  # registered before calibrations were stored
            self._files[key] = data
        return self._files[key]

    def _parse(self, data: dict[str, Any] | None) -> ConfidenceCalibration | None:
        if data is None:
            return None
        try:
            return ConfidenceCalibration.from_dict(data)
        except EdgeloopError:
            return None  # an unreadable file is treated as none: the estimate is flagged raw

    def own(self, version: str) -> ConfidenceCalibration | None:
        """``version``'s calibration on its own holdout (None when it has none)."""
        return self._parse(self._artifact(version, keys.CALIBRATION_ARTIFACT))

    def champion(self, version: str, challenger: str) -> tuple[ConfidenceCalibration | None, str]:
        """The champion's calibration and its source (see the module docstring)."""
        if challenger:
            shared = self._artifact(challenger, keys.CHAMPION_CALIBRATION_ARTIFACT)
            if shared is not None and str(shared.get("version", "")) == version:
                cal = self._parse(shared)
                if cal is not None:
                    return cal, SOURCE_SHARED
        cal = self.own(version)
        return cal, SOURCE_OWN if cal is not None else SOURCE_RAW


def _scores(
    path: Path, row_ids: pd.Series, classes: list[Any]
) -> tuple[np.ndarray, np.ndarray | None]:
    """The file's confidence (and class probabilities, when all are there) of the batch's rows."""
    frame = pd.read_parquet(path).set_index(keys.ROW_ID)
    frame = frame[~frame.index.duplicated(keep="last")].reindex(row_ids)
    conf = frame["confidence"].to_numpy(dtype=np.float64)
    cols = [f"p_{c}" for c in classes]
    proba = None
    if all(c in frame.columns for c in cols):
        proba = frame[cols].to_numpy(dtype=np.float64)
        proba = proba[~np.isnan(conf)]
    return conf, proba


def _one(
    path: Path | None,
    version: str,
    cal: ConfidenceCalibration | None,
    source: str,
    row_ids: pd.Series,
    classes: list[Any],
    seed: int,
) -> ModelEstimate | None:
    if path is None:
        return None
    conf, proba = _scores(path, row_ids, classes)
    acc = estimate_accuracy(conf, cal, seed=seed)
    if acc is None:
        return None
    f1 = estimate_macro_f1(proba, cal) if proba is not None and len(proba) else None
    return ModelEstimate(version, acc, f1, source)


def estimate_batch(
    settings: Settings,
    calibrations: Calibrations,
    row_ids: pd.Series,
    champion: tuple[str, Path | None],
    challenger: tuple[str, Path | None],
) -> BatchEstimates:
    """CBPE of both models on the batch's rows (``row_ids``) from their score files (none for a
    regression target: ``BatchEstimates.note``)."""
    if settings.data_schema.is_regression:
        return BatchEstimates(note=REGRESSION_NOTE)
    classes = list(settings.data_schema.classes)
    seed = settings.seeds.split
    champ_v, champ_file = champion
    chall_v, chall_file = challenger
    cal, source = calibrations.champion(champ_v, chall_v if chall_file is not None else "")
    champ = _one(champ_file, champ_v, cal, source, row_ids, classes, seed)
    chall = None
    if chall_file is not None:
        own = calibrations.own(chall_v)
        chall_src = SOURCE_OWN if own is not None else SOURCE_RAW
        chall = _one(chall_file, chall_v, own, chall_src, row_ids, classes, seed)
    return BatchEstimates(champ, chall, flags(settings, champ, chall))


def flags(
    settings: Settings, champion: ModelEstimate | None, challenger: ModelEstimate | None
) -> list[str]:
    """What the estimates suggest, as notes for people: each asks for labels, none decides.

    * a model without calibration: its estimate is raw confidence (biased);
    * the champion's calibrated estimate below ``gates.min_accuracy``;
    * the challenger's estimate below the champion's by more than ``gates.max_regression`` and
      by more than one standard error of the difference (both calibrated, or both raw).
    """
    out = []
    for alias, est in ((keys.CHAMPION, champion), (keys.CHALLENGER, challenger)):
        if est is not None and not est.calibrated:
            out.append(
                f"{alias} v{est.version} has no calibration (registered before they were"
                " stored): its estimate is the raw mean confidence, biased"
            )
    floor = settings.gates.min_accuracy
    if champion is not None and champion.calibrated and floor > 0:
        a = champion.accuracy
        if a.estimate < floor:
            out.append(
                f"ask for labels: champion v{champion.version}'s estimated accuracy"
                f" {a.estimate:.3f} (95 % {a.low:.2f}-{a.high:.2f}) is below gates.min_accuracy"
                f" {floor:g}"
            )
    if (
        champion is not None
        and challenger is not None
        and champion.calibrated == challenger.calibrated
    ):
        a, b = champion.accuracy, challenger.accuracy
        gap = a.estimate - b.estimate
        se = math.hypot(a.std_error, b.std_error)
        if gap > max(settings.gates.max_regression, se):
            out.append(
                f"likely regression: challenger v{challenger.version} estimated {b.estimate:.3f}"
                f" vs champion v{champion.version} {a.estimate:.3f} (-{gap:.3f}, se {se:.3f}):"
                " label rows where they disagree before trusting the challenger"
            )
    return out
