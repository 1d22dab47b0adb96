"""The seeded synthetic batches the benchmarks and ``edgeloop synth`` use."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from edgeloop.demo.synthetic import REGION, REGRESSION_TARGET, TARGET, synthetic_frame
from pipelines.roles import infer_roles


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_same_seed_same_frame_other_seed_other_frame(task: str) -> None:
    a = synthetic_frame(500, seed=3, task=task)
    pd.testing.assert_frame_equal(a, synthetic_frame(500, seed=3, task=task))
    assert not a.equals(synthetic_frame(500, seed=4, task=task))


def test_regression_frame_has_a_continuous_target_that_depends_on_the_region() -> None:
    df = synthetic_frame(4000, seed=0, task="regression")
    assert TARGET not in df.columns
    assert df[REGRESSION_TARGET].dtype == np.float64
    by_region = df.groupby(REGION)[REGRESSION_TARGET].mean()
    # The offsets (0, 40, -25, 15) dominate the noise of a 1,000-row mean.
    assert by_region["south"] - by_region["east"] > 40
    roles = infer_roles(df, REGRESSION_TARGET)
    assert roles.task == "regression"
    assert REGION in roles.categorical


def test_unlabeled_and_unknown_task() -> None:
    assert REGRESSION_TARGET not in synthetic_frame(10, seed=0, task="regression", labeled=False)
    with pytest.raises(ValueError, match="task must be"):
        synthetic_frame(10, seed=0, task="ranking")
