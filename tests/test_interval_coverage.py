"""Coverage of :mod:`cxrbook.evaluation.intervals` near 0 and 1 on clustered images (issue 15, section 1).

The coverage test simulates test sets with a known truth (:mod:`interval_simulation`: 1-4
images per patient, patient random effect with latent correlation 0.5) and requires every
cell of the issue's grid to reach 0.93: sensitivity 0.70 ... 1.00 on 50 positive patients,
ROC AUC 0.80 ... 0.995 on 50 positive and 50 negative patients, and the Brier score of
those calibrated scores at AUC 0.80 and 0.995 (1000 test sets each). It prints the table
(coverage, mean width, share of zero-width intervals). ``tests/interval_study.py`` is the
longer simulation, with the methods that lost and harsher designs.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import roc_auc_score

import interval_simulation as S
from cxrbook.evaluation import intervals as I

REPS = 2000
SENSITIVITIES = (0.70, 0.90, 0.95, 0.98, 0.99, 1.00)
AUCS = (0.80, 0.95, 0.98, 0.995)
BRIER_AUCS, BRIER_REPS = (0.80, 0.995), 1000
FLOOR = 0.93


def _cell(lo: np.ndarray, hi: np.ndarray, truth: float) -> dict[str, float]:
    return {"coverage": float(np.mean((lo <= truth) & (truth <= hi))),
            "width": float(np.mean(hi - lo)), "zero_width": float(np.mean(hi - lo <= 0.0))}


def coverage_table(reps: int = REPS, seed: int = 2024) -> list[tuple[str, float, dict[str, float]]]:
    """(metric, truth, {coverage, width, zero_width}) for every cell of the grid."""
    rows = []
    for p in SENSITIVITIES:
        s, n = S.clustered_successes(p, 50, reps, np.random.default_rng([seed, round(p * 1000)]))
        lo, hi = np.array([I.proportion_ci(s[r], n[r]) for r in range(reps)]).T
        rows.append(("sensitivity", p, _cell(lo, hi, p)))
    for auc in AUCS:
        sets = S.clustered_scores(auc, 50, 50, reps, np.random.default_rng([seed, round(auc * 1000)]))
        lo, hi = np.array([I.auc_ci(*sets.replicate(r)) for r in range(reps)]).T
        rows.append(("roc_auc", auc, _cell(lo, hi, auc)))
    for auc in BRIER_AUCS:
        k = min(reps, BRIER_REPS)
        sets = S.clustered_scores(auc, 50, 50, k, np.random.default_rng([seed, round(auc * 1000), 1]))
        truth = S.true_metrics(auc, 50, 50)["brier"]
        bounds = []
        for r in range(k):
            y, s, pid = sets.replicate(r)
            bounds.append(I.mean_ci((s - y) ** 2, pid, n_boot=1000, seed=r))
        lo, hi = np.array(bounds).T
        rows.append((f"brier (at AUC {auc:g})", truth, _cell(lo, hi, truth)))
    return rows


def test_every_cell_reaches_093_coverage(capsys):
    start = time.perf_counter()
    rows = coverage_table()
    seconds = time.perf_counter() - start
    lines = [f"\ncoverage of the nominal 95% intervals, {REPS} simulated test sets per cell "
             f"({BRIER_REPS} for Brier; {seconds:.0f} s); sensitivity: {I.PROPORTION_METHOD}; "
             f"AUC: {I.AUC_METHOD}; Brier: {I.MEAN_METHOD}",
             "| metric | truth | coverage | mean width | zero-width |", "|---|---|---|---|---|"]
    lines += [f"| {m} | {t:.4g} | {c['coverage']:.3f} | {c['width']:.3f} | {c['zero_width']:.3f} |"
              for m, t, c in rows]
    with capsys.disabled():
        print("\n".join(lines))
    low = [(m, t, round(c["coverage"], 3)) for m, t, c in rows if c["coverage"] < FLOOR]
    assert not low, f"cells below {FLOOR} coverage: {low}"
    zero = [(m, t) for m, t, c in rows if m == "sensitivity" and c["zero_width"] > 0]
    assert not zero, f"zero-width proportion intervals in {zero}"
    # not a trivially wide interval either: mean widths stay below twice the percentile
    # bootstrap's at 0.70 / 0.80 (0.213 and 0.152 in the study) and well inside [0, 1]
    widths = {(m, t): c["width"] for m, t, c in rows}
    assert widths[("sensitivity", 0.70)] < 0.3 and widths[("roc_auc", 0.80)] < 0.25
    assert max(widths.values()) < 0.35


def test_the_coverage_simulation_is_reproducible():
    a, b = coverage_table(reps=40, seed=5), coverage_table(reps=40, seed=5)
    assert a == b
    assert a != coverage_table(reps=40, seed=6)


# --------------------------------------------------------------------------- proportions

def test_zero_of_500_images_has_an_upper_bound_above_zero():
    """The README's external specificity: 0 of 500 NIH images of 200 patients."""
    trials = np.r_[np.full(100, 3), np.full(100, 2)]
    lo, hi = I.proportion_ci(np.zeros(200), trials)
    assert lo == 0.0
    assert 0.01 < hi < 0.05                     # not zero width, and not uninformative
    # one image per patient is the least clustered case: the bound shrinks, stays > 0
    lo1, hi1 = I.proportion_ci(np.zeros(500), np.ones(500))
    assert lo1 == 0.0 and 0.0 < hi1 < hi


def test_all_of_n_reaches_one_and_its_lower_bound_stays_below_one():
    trials = np.r_[np.full(36, 2), np.ones(3)]   # 75 images of 39 patients, all right
    lo, hi = I.proportion_ci(trials, trials)
    assert hi == 1.0 and lo < 1.0
    # the observed 1 gets the worst-case clustering (Kish count), so its bound is lower
    # than the same data counted as 75 independent images
    lo_images, _ = I.proportion_ci(np.ones(75), np.ones(75))
    assert lo < lo_images < 1.0


def test_design_effect_and_effective_count():
    # every patient all right or all wrong: images of a patient are one observation
    s, n = np.r_[np.full(30, 2.0), np.zeros(20)], np.full(50, 2.0)
    assert I.design_effect(s, n) == pytest.approx(2.0 * 50 / 49)
    # independent-looking data: design effect near 1, floored at 1 for the count
    rng = np.random.default_rng(0)
    s1 = rng.binomial(1, 0.7, 400).astype(float)
    n_eff = I.effective_sample_size(s1, np.ones(400))
    t_scale = (stats.norm.isf(0.025) / stats.t.isf(0.025, 399)) ** 2
    assert n_eff <= 400 * t_scale + 1e-9
    assert np.isnan(I.design_effect(np.ones(5), np.ones(5)))          # p = 1: undefined
    # patients without an image in the denominator are no clusters of it
    assert I.proportion_ci(np.r_[s, 0, 0], np.r_[n, 0, 0]) == I.proportion_ci(s, n)


def test_a_design_effect_resting_on_few_patients_is_not_trusted():
    """Failures in 4 of 40 patients (2 images each): too few patients hold the rarer outcome
    for the design effect, so the worst case (Kish count) is used; in 5 patients it is trusted."""
    trials = np.full(40, 2.0)
    t_scale = (stats.norm.isf(0.025) / stats.t.isf(0.025, 39)) ** 2
    four = trials.copy()
    four[:4] = 1.0                                    # one failure in each of 4 patients
    assert I.effective_sample_size(four, trials) == pytest.approx(40 * t_scale)       # Kish: 80^2/160
    five = trials.copy()
    five[:5] = 1.0
    n_eff = 80 / max(I.design_effect(five, trials), 1.0) * t_scale
    assert I.effective_sample_size(five, trials) == pytest.approx(n_eff)
    assert n_eff > 40 * t_scale


def test_patient_counts_and_bad_input():
    s, n = I.patient_counts([True, False, True, True], ["b", "a", "b", "a"])
    assert s.tolist() == [1.0, 2.0] and n.tolist() == [2.0, 2.0]     # patients sorted: a, b
    assert all(np.isnan(I.proportion_ci([], [])))
    with pytest.raises(ValueError, match="successes <= trials"):
        I.proportion_ci([3], [2])
    with pytest.raises(ValueError, match="level"):
        I.proportion_ci([1], [2], level=95)
    with pytest.raises(ValueError, match="patient_ids"):
        I.patient_counts([True, False], ["a"])


# --------------------------------------------------------------------------- AUC

def test_auc_interval_contains_the_sklearn_auc_and_handles_the_edges():
    sets = S.clustered_scores(0.9, 30, 40, 3, np.random.default_rng(1))
    for r in range(3):
        y, s, pid = sets.replicate(r)
        lo, hi = I.auc_ci(y, s, pid)
        assert lo < roc_auc_score(y, s) < hi
        assert I.auc_ci(y, s, pid, level=0.99)[0] < lo                 # wider at 99 %
    # perfect separation: AUC 1, the interval reaches 1 and is not zero width
    y = np.r_[np.ones(20), np.zeros(20)].astype(int)
    s = np.r_[np.linspace(0.6, 1, 20), np.linspace(0, 0.4, 20)]
    pid = np.arange(40) // 2
    lo, hi = I.auc_ci(y, s, pid)
    assert hi == 1.0 and 0.8 < lo < 1.0
    assert I.auc_ci(1 - y, s, pid)[0] == 0.0                            # AUC 0 mirrors it
    # constant scores: AUC 0.5 in every sample -> the zero-width flag of a degenerate model
    assert I.auc_ci(y, np.full(40, 0.7), pid) == (0.5, 0.5)
    assert all(np.isnan(I.auc_ci(np.ones(5), np.arange(5.0), np.arange(5))))
    with pytest.raises(ValueError, match="binary"):
        I.auc_ci([0, 0.5, 1], [0.1, 0.2, 0.3], [0, 1, 2])


def test_clustering_widens_the_auc_interval():
    """The same images, once as 100 independent patients and once as 10 patients whose
    images share their score pattern: the clustered interval must be wider."""
    rng = np.random.default_rng(3)
    y = np.r_[np.ones(50), np.zeros(50)].astype(int)
    base = rng.normal(size=10)
    s = np.r_[1.0 + np.repeat(base[:5], 10), np.repeat(base[5:], 10)] + rng.normal(0, 0.05, 100)
    lo_c, hi_c = I.auc_ci(y, s, np.arange(100) // 10)
    lo_i, hi_i = I.auc_ci(y, s, np.arange(100))
    assert hi_c - lo_c > 1.5 * (hi_i - lo_i)


# --------------------------------------------------------------------------- Brier: bootstrap-t

def test_mean_interval_of_a_loss():
    sets = S.clustered_scores(0.95, 30, 30, 1, np.random.default_rng(6))
    y, s, pid = sets.replicate(0)
    loss = (s - y) ** 2
    lo, hi = I.mean_ci(loss, pid, n_boot=500, seed=1)
    assert lo < loss.mean() < hi
    assert (lo, hi) == I.mean_ci(loss, pid, n_boot=500, seed=1)
    assert (lo, hi) != I.mean_ci(loss, pid, n_boot=500, seed=2)
    # the same losses as one patient per image: narrower than with the patients' clustering
    lo_i, hi_i = I.mean_ci(loss, np.arange(len(loss)), n_boot=500, seed=1)
    assert hi_i - lo_i < hi - lo
    assert I.mean_ci(np.zeros(6), [0, 0, 1, 1, 2, 2]) == (0.0, 0.0)   # perfect scores: zero loss
    with pytest.raises(ValueError, match="non-negative"):
        I.mean_ci([0.1, -0.2], [0, 1])


# --------------------------------------------------------------------------- BCa bootstrap

def _brier_stat(y: np.ndarray, s: np.ndarray):
    return lambda W: (W * (s - y) ** 2).sum(1) / W.sum(1)


def test_bca_equals_scipy_bootstrap_on_the_patient_indices():
    sets = S.clustered_scores(0.95, 30, 30, 1, np.random.default_rng(4))
    y, s, pid = sets.replicate(0)
    stat = _brier_stat(y, s)
    codes = np.unique(pid.astype(str), return_inverse=True)[1]   # patients in the order of their ids as text
    m = codes.max() + 1

    def on_indices(idx, axis=-1):
        flat = np.asarray(idx).reshape(-1, np.shape(idx)[-1])
        counts = np.zeros((len(flat), m))
        np.add.at(counts, (np.arange(len(flat))[:, None], flat), 1.0)
        return stat(counts[:, codes]).reshape(np.shape(idx)[:-1])

    ref = stats.bootstrap((np.arange(m),), on_indices, vectorized=True, n_resamples=999,
                          method="BCa", rng=np.random.default_rng(8)).confidence_interval
    ours = I.patient_bootstrap_ci(stat, pid, n_boot=999, seed=8)
    assert ours == pytest.approx((ref.low, ref.high), abs=1e-12)


def test_bca_is_reproducible_and_skips_undefined_resamples():
    sets = S.clustered_scores(0.9, 4, 30, 1, np.random.default_rng(5))
    y, s, pid = sets.replicate(0)

    def stats_dict(W):
        pos = W @ (y == 1)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean_pos = np.where(pos > 0, (W @ (s * (y == 1))) / pos, np.nan)
        return {"brier": _brier_stat(y, s)(W), "mean_positive_score": mean_pos}

    a = I.patient_bootstrap_ci(stats_dict, pid, n_boot=500, seed=1)
    assert a == I.patient_bootstrap_ci(stats_dict, pid, n_boot=500, seed=1)
    assert a != I.patient_bootstrap_ci(stats_dict, pid, n_boot=500, seed=2)
    # 4 positive patients of 34: about 1 resample in 9 has none; still a finite interval
    lo, hi = a["mean_positive_score"]
    assert np.isfinite(lo) and lo < hi
    # a statistic equal in every resample gives its value, zero width
    assert I.patient_bootstrap_ci(lambda W: np.ones(len(W)), pid, n_boot=50) == (1.0, 1.0)


def test_mean_ci_stays_finite_and_bounded_when_one_patient_holds_the_loss():
    """One patient with 50 images all badly missed beside 30 well-scored patients: the resamples without
    that patient studentize to huge t values; the upper bound stays a number no larger than ``upper``."""
    loss = np.r_[np.full(50, 0.64), np.full(30, 0.01)]
    pid = np.r_[["big"] * 50, [f"s{i}" for i in range(30)]]
    lo, hi = I.mean_ci(loss, pid, n_boot=500, seed=0, upper=1.0)
    assert 0.0 < lo <= loss.mean() <= hi <= 1.0
