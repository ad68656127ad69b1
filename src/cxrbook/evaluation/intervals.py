"""Confidence intervals that keep their coverage near 0 and 1 when images cluster in patients.

Why this module exists: the percentile patient bootstrap covered a true sensitivity of 0.99
in about 57 % of simulated test sets (50 positive patients, 2 images each) and returned the
zero-width "1.000 [1.000, 1.000]" whenever every image was right; it covered a true AUC of
0.995 in about 82 %. The methods here were chosen by simulation (``tests/interval_study.py``;
the study note gives the table): clustered images, patient random effect, true values up to
1.00 (proportions) and 0.995 (AUC). The proportion, AUC and Brier intervals held >= 0.93
coverage in every cell tried; the BCa bootstrap for the rest did not everywhere (below).

* Proportions (accuracy, sensitivity, specificity, PPV, NPV, per-class sensitivity):
  :func:`proportion_ci`, a Wilson score interval (statsmodels) on the design-effect-adjusted
  number of images. The design effect compares the patient-cluster (ratio-estimator)
  variance with the binomial one. When every image agrees (0 or 1 observed) it cannot be
  estimated, and when fewer than 5 patients hold the rarer outcome it is too noisy to trust
  (with 1-8 images per patient, coverage had fallen to 0.90 at a true 0.95); there the interval
  takes the worst case, an intra-patient correlation of 1: the Kish effective count
  N^2 / sum(n_i^2), i.e. about one observation per patient. Never zero
  width: 0 of 500 images of 200 patients (100 with 3 images, 100 with 2) gives [0, 0.020].
* ROC AUC (binary, or one class against the rest): :func:`auc_ci`, the Hanley-McNeil score
  interval (Newcombe 2006) on design-effect-adjusted image counts of each class.
* Brier score (binary or multi-class): :func:`mean_ci`, a bootstrap-t interval over
  patients on the log scale (BCa and the percentile bootstrap fell to 0.93 and 0.89-0.91
  at an AUC of 0.995).
* Every other metric (F1, PR AUC, macro AUC, ...): :func:`patient_bootstrap_ci`, BCa over
  patients, for any statistic written on image weights. In the study it held F1 (>= 0.957)
  but not PR AUC at an AUC of 0.995 (0.915), and no bootstrap covers ECE, whose estimate is
  biased upwards (0 % coverage of a calibrated model's 0; 0.74-0.82 for an under-confident one).

A degenerate model is still visible to the caller: constant scores give an AUC of exactly
0.5 in every sample, and :func:`auc_ci` returns the zero-width ``(0.5, 0.5)`` for them (the
only zero-width interval this module produces apart from a constant bootstrap statistic).
The proportions of such a model (sensitivity 1, specificity 0) get ordinary, non-zero-width
intervals; flag the model by its scores, not by its proportion intervals.

Depends only on numpy, scipy and statsmodels.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike
from scipy import optimize, special, stats
from statsmodels.stats.proportion import proportion_confint

__all__ = [
    "PROPORTION_METHOD", "AUC_METHOD", "MEAN_METHOD", "BOOTSTRAP_METHOD", "MIN_MINORITY_PATIENTS",
    "patient_counts", "design_effect", "effective_sample_size", "proportion_ci",
    "auc_ci", "mean_ci", "Resamples", "patient_resamples", "bca_interval", "patient_bootstrap_ci",
    "draw_counts", "CHUNK_ELEMENTS",
]

PROPORTION_METHOD = "Wilson interval on the design-effect-adjusted number of images (patients as clusters)"
AUC_METHOD = "Hanley-McNeil score interval on design-effect-adjusted image counts (patients as clusters)"
MEAN_METHOD = "bootstrap-t interval over patients on the log scale"
BOOTSTRAP_METHOD = "BCa bootstrap over patients"

MIN_MINORITY_PATIENTS = 5   # fewer patients with the rarer outcome: worst-case design effect
CHUNK_ELEMENTS = 2_000_000  # weight-matrix elements per bootstrap chunk (memory bound)


def _z(level: float) -> float:
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie in (0, 1), got {level!r}")
    return float(special.ndtri((1.0 + level) / 2.0))


def _codes(patient_ids: ArrayLike, n: int) -> tuple[np.ndarray, int]:
    ids = np.asarray(patient_ids)
    if ids.ndim != 1 or len(ids) != n:
        raise ValueError(f"patient_ids must be 1-D with one entry per image ({n}), got shape {ids.shape}")
    uniques, codes = np.unique(ids.astype(str), return_inverse=True)
    return codes.astype(int), len(uniques)


# --------------------------------------------------------------------------- proportions

def patient_counts(hits: ArrayLike, patient_ids: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """(successes, trials) per patient from one boolean per image (the images in the
    proportion's denominator only, e.g. the positive images for sensitivity)."""
    h = np.asarray(hits)
    if h.ndim != 1:
        raise ValueError(f"hits must be 1-D, got shape {h.shape}")
    codes, m = _codes(patient_ids, len(h))
    return (np.bincount(codes, weights=h.astype(float), minlength=m),
            np.bincount(codes, minlength=m).astype(float))


def _check_counts(successes: ArrayLike, trials: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    s, n = np.asarray(successes, dtype=float), np.asarray(trials, dtype=float)
    if s.ndim != 1 or s.shape != n.shape:
        raise ValueError(f"successes and trials must be 1-D of equal length, got {s.shape} and {n.shape}")
    if not (np.all(np.isfinite(s)) and np.all(np.isfinite(n))):
        raise ValueError("successes and trials must be finite")
    if np.any(s < 0) or np.any(s > n):
        raise ValueError("each patient needs 0 <= successes <= trials")
    keep = n > 0                              # a patient with no image here is no cluster of it
    return s[keep], n[keep]


def design_effect(successes: ArrayLike, trials: ArrayLike) -> float:
    """Design effect of the pooled proportion sum(successes) / sum(trials) over patients.

    The cluster-robust (linearisation) variance of the ratio estimator,
    ``m / (m - 1) * sum((s_i - p n_i)^2) / N^2``, divided by the binomial variance
    ``p (1 - p) / N``. NaN when it cannot be estimated: an observed proportion of 0 or 1
    (both variances are 0), fewer than two patients, or no trials.
    """
    s, n = _check_counts(successes, trials)
    m, N = len(n), n.sum()
    if m < 2 or N == 0:
        return float("nan")
    p = s.sum() / N
    if p <= 0.0 or p >= 1.0:
        return float("nan")
    cluster_var = m / (m - 1) * float(((s - p * n) ** 2).sum()) / N ** 2
    return cluster_var / (p * (1.0 - p) / N)


def effective_sample_size(successes: ArrayLike, trials: ArrayLike, level: float = 0.95) -> float:
    """The image count :func:`proportion_ci` feeds to the Wilson interval.

    ``N / max(deff, 1)`` (a design effect below 1 is taken as noise), or the Kish count
    ``N^2 / sum(n_i^2)`` of an intra-patient correlation of 1 where the design effect is
    undefined (0 or 1 observed, one patient) or rests on fewer than
    ``MIN_MINORITY_PATIENTS`` patients with the rarer outcome. Then scaled by
    ``(z / t_{m-1})^2`` (Korn & Graubard 1998) for the m patients the variance comes from.
    """
    s, n = _check_counts(successes, trials)
    if len(n) == 0:
        return float("nan")
    deff = design_effect(s, n)
    minority = min(int((s < n).sum()), int((s > 0).sum()))
    if math.isfinite(deff) and minority >= MIN_MINORITY_PATIENTS:
        n_eff = n.sum() / max(deff, 1.0)
    else:
        n_eff = n.sum() ** 2 / float((n ** 2).sum())
    df = max(len(n) - 1, 1)
    return float(n_eff * (_z(level) / special.stdtrit(df, (1.0 + level) / 2.0)) ** 2)


def proportion_ci(successes: ArrayLike, trials: ArrayLike, level: float = 0.95) -> tuple[float, float]:
    """Interval for a proportion of images when the images cluster in patients.

    ``successes[i]`` of the ``trials[i]`` images of patient ``i`` count as a success
    (:func:`patient_counts` builds both from one boolean per image). Wilson score interval
    (``statsmodels.stats.proportion.proportion_confint``) at the observed proportion with
    :func:`effective_sample_size` as the count. Never zero width when there is an image:
    0 observed gives ``(0.0, hi > 0)``, 1 observed ``(lo < 1, 1.0)``. ``(nan, nan)`` without
    trials.
    """
    s, n = _check_counts(successes, trials)
    if n.sum() == 0:
        return float("nan"), float("nan")
    p = float(s.sum() / n.sum())
    n_eff = effective_sample_size(s, n, level)
    lo, hi = proportion_confint(p * n_eff, n_eff, alpha=1.0 - level, method="wilson")
    lo = 0.0 if p == 0.0 else float(lo)
    hi = 1.0 if p == 1.0 else float(hi)
    return lo, hi


# --------------------------------------------------------------------------- AUC

def _placements(y: np.ndarray, s: np.ndarray) -> np.ndarray:
    """Per image, the share of the other class it beats (ties 1/2): for a positive the share of
    negatives scored lower, for a negative the share of positives scored higher."""
    pos, neg = np.sort(s[y]), np.sort(s[~y])
    beats_neg = (np.searchsorted(neg, s, "left") + np.searchsorted(neg, s, "right")) / (2.0 * len(neg))
    below_pos = (np.searchsorted(pos, s, "left") + np.searchsorted(pos, s, "right")) / (2.0 * len(pos))
    return np.where(y, beats_neg, 1.0 - below_pos)


def _effective_count(v: np.ndarray, codes: np.ndarray) -> float:
    """Images of one class divided by the design effect of their mean placement (the
    patient-cluster variance of the mean over its independent-images variance, floored at 1);
    the Kish count N^2 / sum(n_i^2) where that is undefined (all placements equal, one patient)."""
    _, c = np.unique(codes, return_inverse=True)
    sizes = np.bincount(c).astype(float)
    k, n = len(sizes), float(len(v))
    kish = n * n / float((sizes ** 2).sum())
    dev = v - v.mean()
    iid = float((dev ** 2).sum()) / (n - 1) / n if n > 1 else 0.0
    if k < 2 or iid <= 0.0:
        return kish
    clustered = k / (k - 1) * float((np.bincount(c, weights=dev) ** 2).sum()) / n ** 2
    return n / max(clustered / iid, 1.0)


def _hanley_mcneil_var(theta: float, n1: float, n0: float) -> float:
    """Hanley & McNeil (1982) variance of the AUC at ``theta`` for n1 positives, n0 negatives."""
    q1, q2 = theta / (2.0 - theta), 2.0 * theta * theta / (1.0 + theta)
    return (theta * (1.0 - theta) + (n1 - 1.0) * (q1 - theta * theta)
            + (n0 - 1.0) * (q2 - theta * theta)) / (n1 * n0)


def auc_ci(y: ArrayLike, scores: ArrayLike, patient_ids: ArrayLike, level: float = 0.95
           ) -> tuple[float, float]:
    """Interval for the ROC AUC of ``scores`` against binary ``y`` with images clustered in patients.

    Score interval: the AUCs t with ``(auc - t)^2 <= z^2 V_HM(t; n1, n0)``, V_HM the
    Hanley-McNeil variance and n1, n0 the positive and negative image counts divided by the
    design effect of their mean placement value (the patient clustering; Kish count where it
    is undefined, e.g. an AUC of exactly 1). Patients with images of both classes are allowed,
    but the covariance between their positive and negative images is ignored.

    Constant scores give ``(0.5, 0.5)``: their AUC is 0.5 in every sample (the caller's
    degenerate-model flag). ``(nan, nan)`` when a class is missing.
    """
    yy = np.asarray(y)
    if yy.dtype.kind == "f" and not np.all(np.isin(yy, (0.0, 1.0))):
        raise ValueError("y must be binary (0/1 or bool)")
    yy = yy.astype(bool)
    s = np.asarray(scores, dtype=float)
    if yy.ndim != 1 or s.shape != yy.shape:
        raise ValueError(f"y and scores must be 1-D of equal length, got {yy.shape} and {s.shape}")
    if not np.all(np.isfinite(s)):
        raise ValueError("scores must be finite")
    codes, _ = _codes(patient_ids, len(yy))
    n1, n0 = int(yy.sum()), int((~yy).sum())
    if n1 == 0 or n0 == 0:
        return float("nan"), float("nan")
    if np.all(s == s[0]):
        return 0.5, 0.5
    v = _placements(yy, s)
    auc = float(v[yy].mean())
    e1 = max(_effective_count(v[yy], codes[yy]), 1.0)
    e0 = max(_effective_count(v[~yy], codes[~yy]), 1.0)
    z2 = _z(level) ** 2

    def excess(t: float) -> float:  # > 0 outside the interval
        return (auc - t) ** 2 - z2 * _hanley_mcneil_var(t, e1, e0)

    lo = 0.0 if auc <= 0.0 else optimize.brentq(excess, 0.0, min(auc, 1.0 - 1e-12), xtol=1e-12)
    hi = 1.0 if auc >= 1.0 else optimize.brentq(excess, max(auc, 1e-12), 1.0, xtol=1e-12)
    return float(lo), float(hi)


# --------------------------------------------------------------------------- bootstrap

def draw_counts(rng: np.random.Generator, n_boot: int, m: int) -> np.ndarray:
    """(n_boot, m): how often each patient is drawn, from the draws scipy.stats.bootstrap makes."""
    draws = rng.integers(0, m, (n_boot, m))
    counts = np.zeros((n_boot, m))
    np.add.at(counts, (np.arange(n_boot)[:, None], draws), 1.0)
    return counts


def mean_ci(values: ArrayLike, patient_ids: ArrayLike, n_boot: int = 2000, seed: int = 0,
            level: float = 0.95, upper: float = math.inf) -> tuple[float, float]:
    """Interval for the image mean of a non-negative per-image loss (the Brier score:
    ``(score - label)^2``, or its sum over classes) when images cluster in patients.

    Studentized bootstrap (bootstrap-t; Hall 1992) on the log scale: patients are resampled,
    and each resample's log mean is studentized by its own cluster-robust (ratio-estimator)
    standard error. Resamples whose statistic is undefined (mean 0) are left out. A mean of
    exactly 0 (every loss 0) gives ``(0.0, 0.0)``. ``upper``: the largest mean the loss can have
    (1 for a binary Brier score, 2 for a multi-class one); the upper bound never exceeds it. (When
    one patient holds most of the loss, the resamples without that patient studentize to huge
    t values and the log-scale bound can run past any value the loss can take.)
    """
    v = np.asarray(values, dtype=float)
    if v.ndim != 1 or len(v) == 0:
        raise ValueError(f"values must be 1-D and non-empty, got shape {v.shape}")
    if not np.all(np.isfinite(v)) or np.any(v < 0):
        raise ValueError("values must be finite and non-negative")
    if n_boot < 2:
        raise ValueError("n_boot must be >= 2")
    codes, m = _codes(patient_ids, len(v))
    total, size = np.bincount(codes, weights=v, minlength=m), np.bincount(codes, minlength=m).astype(float)
    if total.sum() == 0.0:
        return 0.0, 0.0
    if m < 2:
        raise ValueError("a bootstrap over patients needs at least two patients")

    def log_mean_and_se(C: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        n = C @ size
        mean = (C @ total) / n
        var = m / (m - 1) * (C * (total[None, :] - mean[:, None] * size[None, :]) ** 2).sum(1) / n ** 2
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.log(mean), np.sqrt(var) / mean

    est, se = (x[0] for x in log_mean_and_se(np.ones((1, m))))
    star, se_star = log_mean_and_se(draw_counts(np.random.default_rng(seed), n_boot, m))
    with np.errstate(divide="ignore", invalid="ignore"):
        t = (star - est) / se_star
    t = t[np.isfinite(t)]
    if se == 0.0 or len(t) < 2:                 # every patient has the same mean loss
        return float(math.exp(est)), float(math.exp(est))
    t_hi, t_lo = np.quantile(t, [(1.0 + level) / 2.0, (1.0 - level) / 2.0])
    with np.errstate(over="ignore"):
        lo, hi = np.exp(est - t_hi * se), np.exp(est - t_lo * se)
    return float(min(lo, upper)), float(min(hi, upper))


Statistic = Callable[[np.ndarray], "np.ndarray | Mapping[str, np.ndarray]"]


def _evaluate(statistic: Statistic, W: np.ndarray) -> dict[str, np.ndarray]:
    out = statistic(W)
    if isinstance(out, Mapping):
        return {k: np.asarray(v, dtype=float).reshape(len(W)) for k, v in out.items()}
    return {"": np.asarray(out, dtype=float).reshape(len(W))}


def bca_interval(theta: float, star: np.ndarray, jack: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """BCa bounds (Efron & Tibshirani 1993, eq. 14.10 and 14.15) from the bootstrap values
    ``star`` and the leave-one-patient-out values ``jack``; undefined (NaN) values are left
    out; ties with ``theta`` count one half, as in ``scipy.stats.bootstrap``. When every
    resample lies on one side of ``theta`` (seen for ECE, whose resamples all exceed a small
    estimate) the bias correction would be infinite: the share below ``theta`` is then kept
    half a resample away from 0 and 1 (scipy returns NaN there)."""
    star, jack = star[np.isfinite(star)], jack[np.isfinite(jack)]
    if not math.isfinite(theta) or len(star) < 2:
        return float("nan"), float("nan")
    if np.all(star == theta):
        return float(theta), float(theta)
    below = ((star < theta).mean() + (star <= theta).mean()) / 2.0
    half = 0.5 / len(star)
    z0 = stats.norm.ppf(min(max(below, half), 1.0 - half))
    d = jack.mean() - jack
    ss = float((d ** 2).sum())
    a = float((d ** 3).sum()) / (6.0 * ss ** 1.5) if ss > 0 else 0.0
    zl, zh = stats.norm.ppf([(1.0 - level) / 2.0, (1.0 + level) / 2.0])
    q = [stats.norm.cdf(z0 + (z0 + zz) / (1.0 - a * (z0 + zz))) for zz in (zl, zh)]
    lo, hi = np.quantile(star, np.clip(np.nan_to_num(q, nan=0.5), 0.0, 1.0))
    return float(lo), float(hi)


@dataclass(frozen=True)
class Resamples:
    """A statistic (or several, by name) at the estimate, on each patient resample and on each
    leave-one-patient-out set: what a BCa interval (or a bootstrap p-value) is made from."""

    theta: dict[str, float]
    star: dict[str, np.ndarray]
    jack: dict[str, np.ndarray]


def patient_resamples(statistic: Statistic, patient_ids: ArrayLike, n_boot: int = 2000, seed: int = 0
                      ) -> Resamples:
    """The statistic on all-ones weights, on ``n_boot`` patient resamples and on the jackknife.

    ``statistic(W)`` takes a ``(B, n_images)`` array of image weights (how often each image's
    patient was drawn) and returns ``(B,)`` values, or a dict of them to get every metric from
    one set of resamples. Images of the same id share their patient's weight, so statistics of
    several image sets whose ids overlap (one test set scored by two models, concatenated) are
    resampled together. The resamples are those ``scipy.stats.bootstrap`` draws on the patient
    indices (patients numbered in the order of their ids as text) with
    ``rng=np.random.default_rng(seed)``. The one bootstrap loop of the package.
    """
    if n_boot < 2:
        raise ValueError("n_boot must be >= 2")
    ids = np.asarray(patient_ids)
    codes, m = _codes(ids, len(ids))
    if m < 2:
        raise ValueError("a bootstrap over patients needs at least two patients")
    n = len(codes)
    theta = {k: float(v[0]) for k, v in _evaluate(statistic, np.ones((1, n))).items()}
    counts = draw_counts(np.random.default_rng(seed), n_boot, m)
    chunk = max(1, CHUNK_ELEMENTS // max(n, m))
    star: dict[str, list[np.ndarray]] = {k: [] for k in theta}
    for a in range(0, n_boot, chunk):
        for k, v in _evaluate(statistic, counts[a:a + chunk][:, codes]).items():
            star[k].append(v)
    jack: dict[str, list[np.ndarray]] = {k: [] for k in theta}
    for a in range(0, m, chunk):
        left_out = np.arange(a, min(a + chunk, m))
        W = (codes[None, :] != left_out[:, None]).astype(float)
        for k, v in _evaluate(statistic, W).items():
            jack[k].append(v)
    return Resamples(theta, {k: np.concatenate(v) for k, v in star.items()},
                     {k: np.concatenate(v) for k, v in jack.items()})


def patient_bootstrap_ci(statistic: Statistic, patient_ids: ArrayLike, n_boot: int = 2000,
                         seed: int = 0, level: float = 0.95
                         ) -> tuple[float, float] | dict[str, tuple[float, float]]:
    """BCa interval(s) from a bootstrap over patients (:func:`patient_resamples`), for statistics
    written on image weights. Resamples where a value is NaN (undefined) are left out for that value.

    Returns ``(lo, hi)``, or ``{name: (lo, hi)}`` when ``statistic`` returns a dict;
    ``(theta, theta)`` when every resample equals the estimate. Without undefined values the
    bounds are those of ``scipy.stats.bootstrap(..., method="BCa")`` on the patient indices with
    ``rng=np.random.default_rng(seed)``.
    """
    r = patient_resamples(statistic, patient_ids, n_boot, seed)
    out = {k: bca_interval(r.theta[k], r.star[k], r.jack[k], level) for k in r.theta}
    return out[""] if list(out) == [""] else out
