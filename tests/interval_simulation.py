"""Clustered test sets with a KNOWN truth, for the coverage of :mod:`cxrbook.evaluation.intervals`.

Shared by ``tests/test_interval_coverage.py`` (the coverage test) and ``tests/interval_study.py``
(the longer simulation that chose the methods). Every generator is vectorised over
replicates: one call draws ``reps`` independent test sets.

Patients have 1-4 images (probabilities 0.4, 0.3, 0.2, 0.1: 2.0 images per patient on
average; ``LARGE_SIZE_P``: 1-8, 4.5 on average), drawn anew for every replicate. Images of one patient are correlated through a
patient random effect on a latent normal scale:

    latent = mu + sqrt(rho) * u_patient + sqrt(1 - rho) * e_image,   u, e ~ N(0, 1)

so an image's marginal latent value is N(mu, 1) whatever ``rho`` is, which makes the truth
exact:

* proportions: an image is a success when ``latent > 0`` with ``mu = Phi^-1(p)``, so the
  image-level success probability is exactly ``p`` (``p = 1`` gives all successes);
* scores: positives have ``mu = sqrt(2) * Phi^-1(auc)``, negatives ``mu = 0``; patients
  carry one label, so every (positive, negative) image pair comes from two independent
  patients and P(score+ > score-) = Phi(mu / sqrt(2)) = ``auc`` exactly. The score is the
  calibrated probability ``expit(mu * latent - mu^2 / 2)`` (the posterior at prevalence
  1/2); :func:`true_metrics` integrates its population Brier score, F1, PR AUC and ECE.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import integrate
from scipy.special import expit
from scipy.stats import norm

SIZE_P = {1: 0.4, 2: 0.3, 3: 0.2, 4: 0.1}        # images per patient: mean 2.0
LARGE_SIZE_P = {k: 1 / 8 for k in range(1, 9)}   # a harsher design: 1-8 images, mean 4.5


def _sizes(rng: np.random.Generator, reps: int, m: int, size_p: dict[int, float]) -> np.ndarray:
    return rng.choice(list(size_p), size=(reps, m), p=list(size_p.values()))


def _latent(rng: np.random.Generator, mu: np.ndarray | float, reps: int, m: int, k: int, rho: float
            ) -> np.ndarray:
    """(reps, m, k) latent values: one patient effect shared by the patient's k image slots."""
    u = rng.standard_normal((reps, m, 1))
    e = rng.standard_normal((reps, m, k))
    return mu + np.sqrt(rho) * u + np.sqrt(1.0 - rho) * e


def clustered_successes(p: float, n_patients: int, reps: int, rng: np.random.Generator,
                        rho: float = 0.5, size_p: dict[int, float] = SIZE_P
                        ) -> tuple[np.ndarray, np.ndarray]:
    """(successes, trials), each (reps, n_patients): images per patient and how many succeed.

    The image-level success probability is exactly ``p`` (probit latent model, latent
    correlation ``rho`` within a patient).
    """
    sizes = _sizes(rng, reps, n_patients, size_p)
    mu = norm.ppf(p) if p < 1 else np.inf
    k = int(sizes.max())
    ok = _latent(rng, mu, reps, n_patients, k, rho) > 0
    slot = np.arange(k) < sizes[..., None]
    return (ok & slot).sum(axis=-1), sizes


def beta_binomial_successes(p: float, n_patients: int, reps: int, rng: np.random.Generator,
                            icc: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
    """(successes, trials) from a beta-binomial: patient p_i ~ Beta with mean ``p`` and
    intra-class correlation ``icc`` (a harsher clustering at the edges than the probit model)."""
    sizes = _sizes(rng, reps, n_patients, SIZE_P)
    if p >= 1:
        return sizes.copy(), sizes
    k = (1.0 - icc) / icc
    pi = rng.beta(p * k, (1.0 - p) * k, size=(reps, n_patients))
    return rng.binomial(sizes, pi), sizes


@dataclass(frozen=True)
class ScoreSets:
    """``reps`` test sets of one design; use :meth:`replicate` to get one as flat arrays."""

    scores: np.ndarray      # (reps, m, max images) probabilities (unused slots hold NaN)
    sizes: np.ndarray       # (reps, m) images per patient
    label: np.ndarray       # (m,) patient label, 1 = positive

    def replicate(self, r: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(y, scores, patient_ids) of replicate ``r``, one entry per image."""
        slot = np.arange(self.scores.shape[-1]) < self.sizes[r][:, None]
        patient = np.broadcast_to(np.arange(len(self.label))[:, None], slot.shape)[slot]
        return self.label[patient], self.scores[r][slot], patient


def auc_shift(auc: float, sd_pos: float = 1.0) -> float:
    """Latent mean of the positives that makes the true AUC ``auc`` (negatives N(0, 1),
    positives N(mu, sd_pos^2): AUC = Phi(mu / sqrt(1 + sd_pos^2)))."""
    return float(np.sqrt(1.0 + sd_pos ** 2) * norm.ppf(auc))


def clustered_scores(auc: float, n_pos: int, n_neg: int, reps: int, rng: np.random.Generator,
                     rho: float = 0.5, sd_pos: float = 1.0, size_p: dict[int, float] = SIZE_P
                     ) -> ScoreSets:
    """Binormal scores with a patient random effect; the true AUC is exactly ``auc``.

    ``sd_pos`` != 1 gives an unequal-variance binormal ROC curve (the score, still a
    monotone function of the latent value, is then no longer calibrated)."""
    mu = auc_shift(auc, sd_pos)
    m = n_pos + n_neg
    label = (np.arange(m) < n_pos).astype(int)
    sizes = _sizes(rng, reps, m, size_p)
    k = int(sizes.max())
    latent = _latent(rng, 0.0, reps, m, k, rho) * np.where(label == 1, sd_pos, 1.0)[None, :, None]
    latent += (mu * label)[None, :, None]
    scores = expit(mu * latent - mu * mu / 2.0)
    scores[np.arange(k) >= sizes[..., None]] = np.nan
    return ScoreSets(scores, sizes, label)


def true_metrics(auc: float, n_pos: int, n_neg: int, sharpness: float = 1.0, n_bins: int = 10
                 ) -> dict[str, float]:
    """Population values, for the equal-variance scores of :func:`clustered_scores` raised to
    ``score = expit(sharpness * logit(score))`` (1: calibrated; 0.5: under-confident), of
    ``brier``, ``f1`` at threshold 0.5, ``pr_auc`` (area under the precision-recall curve) and
    ``ece`` (``n_bins`` equal-width bins, image-weighted |mean score - positive fraction|).
    Images per patient do not depend on the label, so each class weighs in by its share of
    patients, ``n_pos / (n_pos + n_neg)``."""
    mu = auc_shift(auc)
    pi = n_pos / (n_pos + n_neg)

    def score(x):
        return expit(sharpness * (mu * x - mu * mu / 2.0))

    def latent_of(p: float) -> float:       # the latent value where the score equals p
        if p <= 0.0:
            return -np.inf
        if p >= 1.0:
            return np.inf
        return (np.log(p / (1.0 - p)) / sharpness + mu * mu / 2.0) / mu

    def expect(f, mean: float, a: float = -np.inf, b: float = np.inf) -> float:
        a, b = max(a, mean - 12.0), min(b, mean + 12.0)
        if a >= b:
            return 0.0
        return integrate.quad(lambda x: f(x) * norm.pdf(x, mean), a, b, limit=200)[0]

    brier = (pi * expect(lambda x: (1.0 - score(x)) ** 2, mu)
             + (1 - pi) * expect(lambda x: score(x) ** 2, 0.0))
    sens, fpr = norm.sf(mu / 2.0 - mu), norm.sf(mu / 2.0)      # score >= 0.5 <=> latent >= mu / 2
    f1 = 2 * pi * sens / (2 * pi * sens + (1 - pi) * fpr + pi * (1 - sens))

    def precision(x):
        tp, fp = pi * norm.sf(x - mu), (1 - pi) * norm.sf(x)
        return tp / (tp + fp) if tp + fp > 0 else 1.0
    pr_auc = expect(precision, mu)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        a, b = latent_of(lo), latent_of(hi)
        gap = (pi * expect(lambda x: score(x) - 1.0, mu, a, b)
               + (1 - pi) * expect(score, 0.0, a, b))
        ece += abs(gap)
    return {"brier": float(brier), "f1": float(f1), "pr_auc": float(pr_auc), "ece": float(ece)}
