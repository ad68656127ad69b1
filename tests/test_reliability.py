"""The reliability table: scikit-learn's ``calibration_curve`` with every bin's count, and ECE on the same bins."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.calibration import calibration_curve

from cxrbook.evaluation import metric_plots as MP
from cxrbook.evaluation import metrics as M


def simulated(n: int = 20000, seed: int = 0, power: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Scores uniform on [0, 1]; labels drawn with P(positive) = score ** power (1: perfectly calibrated)."""
    rng = np.random.default_rng(seed)
    s = rng.uniform(0, 1, n)
    return (rng.uniform(0, 1, n) < s ** power).astype(int), s


def test_calibrated_scores_lie_on_the_diagonal_and_miscalibrated_ones_do_not():
    y, s = simulated()
    rc = MP.reliability_curve(y, s)
    assert len(rc) == 10 and rc["count"].sum() == len(y) and (rc["count"] > 0).all()
    gap = (rc["observed_fraction"] - rc["mean_predicted"]).abs()
    assert gap.max() < 0.04 and M.expected_calibration_error(y, s) < 0.02
    # over-confident scores: the truth is score ** 3, well below the diagonal in the middle bins
    y, s = simulated(power=3.0)
    rc = MP.reliability_curve(y, s)
    gap = rc["mean_predicted"] - rc["observed_fraction"]
    assert gap.max() > 0.2 and M.expected_calibration_error(y, s) > 0.15
    assert rc["count"].sum() == len(y)


def test_scores_on_bin_edges_fall_in_sklearns_bins_and_ece_uses_the_same_ones():
    # 0.1, 0.5 and 0.3 lie on (or within rounding of) edges; sklearn puts an edge score in the lower bin
    y = np.array([0, 1, 1, 0, 1, 0, 1, 1, 0, 1])
    s = np.array([0.0, 0.1, 0.1, 0.3, 0.5, 0.5, 0.55, 1.0, 0.9, 0.95])
    rc = MP.reliability_curve(y, s)
    observed, predicted = calibration_curve(y, s, n_bins=10, strategy="uniform")
    ok = rc["count"] > 0
    assert rc.loc[ok, "observed_fraction"].tolist() == pytest.approx(observed.tolist())
    assert rc.loc[ok, "mean_predicted"].tolist() == pytest.approx(predicted.tolist())
    assert rc["count"].tolist() == [3, 0, 1, 0, 2, 1, 0, 0, 1, 2]
    assert rc.loc[~ok, ["mean_predicted", "observed_fraction"]].isna().all().all()
    ece = (rc.loc[ok, "count"] * (rc.loc[ok, "mean_predicted"] - rc.loc[ok, "observed_fraction"]).abs()).sum()
    assert M.expected_calibration_error(y, s) == pytest.approx(ece / len(y))
