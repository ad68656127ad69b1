"""The simulation that chose the interval methods of :mod:`cxrbook.evaluation.intervals` (issue 15, section 1).

Run by hand (minutes on 2 cores), it prints one Markdown table of coverage and mean width
per method and cell; the table in the study note came from it::

    PYTHONPATH=src python tests/interval_study.py [--reps 2000] [--boot 1000] [--only prop,auc,other,boot]

Candidates that lost are written out here, not in the package: the percentile patient bootstrap
(today's method), BCa over patients, Wilson / Jeffreys / Clopper-Pearson on the image count or
on a design-effect-adjusted count (with several rules for an observed 0 or 1), and for AUC a
Wald and a logit-scale Wald interval on the clustered (Obuchowski 1997) variance and a
Hanley-McNeil score interval. Data: :mod:`interval_simulation`.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable

import numpy as np
from scipy.special import expit, logit
from scipy.stats import norm
from scipy.stats import t as student_t
from statsmodels.stats.proportion import proportion_confint

import interval_simulation as S
from cxrbook.evaluation import intervals as I

Z = float(norm.isf(0.025))


# --------------------------------------------------------------------------- proportions

def deff_hat(s: np.ndarray, n: np.ndarray) -> np.ndarray:
    """Design effect of the ratio estimator sum(s) / sum(n) over patients (rows = replicates):
    cluster-robust (linearisation) variance over the binomial variance; NaN at p = 0 or 1."""
    m = s.shape[-1]
    N = n.sum(-1)
    p = s.sum(-1) / N
    v = m / (m - 1) * ((s - p[..., None] * n) ** 2).sum(-1) / N ** 2
    with np.errstate(divide="ignore", invalid="ignore"):
        return v / (p * (1 - p) / N)


def kish_n(n: np.ndarray) -> np.ndarray:
    """Effective sample size when every image repeats its patient (ICC 1): N^2 / sum(n_i^2)."""
    return n.sum(-1) ** 2 / (n ** 2).sum(-1)


def minority_patients(s: np.ndarray, n: np.ndarray) -> np.ndarray:
    """Patients with at least one image of the rarer outcome (a failure when most succeed)."""
    return np.minimum(((s < n) & (n > 0)).sum(-1), (s > 0).sum(-1))


def adjusted_n(s: np.ndarray, n: np.ndarray, edge: str, floor1: bool = True, tdf: bool = False,
               min_minority: int = 0, df_minority: bool = False) -> np.ndarray:
    """n_eff = N / deff; ``edge`` says what an observed 0 or 1 (deff undefined) gets:
    'kish' (ICC 1, N^2/sum n_i^2), 'patients' (number of patients), 'images' (deff 1).
    ``min_minority``: the edge rule also when fewer patients than this hold the rarer outcome;
    ``df_minority``: t quantile on (patients with the rarer outcome - 1) degrees of freedom."""
    N = n.sum(-1).astype(float)
    d = deff_hat(s, n)
    if floor1:
        d = np.maximum(d, 1.0)
    ne = N / d
    edge_n = {"kish": kish_n(n), "patients": np.full_like(N, n.shape[-1]), "images": N}[edge]
    k = minority_patients(s, n)
    ne = np.where(np.isfinite(d) & (k >= min_minority), ne, edge_n)
    if tdf:
        df = np.maximum(k - 1, 1) if df_minority else n.shape[-1] - 1
        ne = ne * (Z / student_t.isf(0.025, df)) ** 2
    return ne


def prop_analytic(method: str, edge: str = "kish", floor1: bool = True, tdf: bool = False,
                  n_eff: str = "deff", min_minority: int = 0, df_minority: bool = False) -> Callable:
    def ci(s: np.ndarray, n: np.ndarray, rng: np.random.Generator, boot: int):
        N = n.sum(-1)
        p = s.sum(-1) / N
        ne = {"deff": lambda: adjusted_n(s, n, edge, floor1, tdf, min_minority, df_minority),
              "images": lambda: N.astype(float),
              "kish": lambda: kish_n(n)}[n_eff]()
        lo, hi = proportion_confint(p * ne, ne, alpha=0.05, method=method)
        lo, hi = np.asarray(lo, float), np.asarray(hi, float)
        if method == "jeffreys":   # Brown, Cai & DasGupta: the end an observed 0 or 1 reaches
            lo, hi = np.where(p == 0, 0.0, lo), np.where(p == 1, 1.0, hi)
        return lo, hi
    return ci


def _boot_counts(rng: np.random.Generator, reps: int, boot: int, m: int) -> np.ndarray:
    """(reps, boot, m) how often each patient is drawn."""
    draws = rng.integers(0, m, size=(reps, boot, m))
    flat = (np.arange(reps * boot)[:, None] * m + draws.reshape(reps * boot, m)).ravel()
    return np.bincount(flat, minlength=reps * boot * m).reshape(reps, boot, m).astype(float)


def bca_bounds(theta: np.ndarray, star: np.ndarray, jack: np.ndarray, level: float = 0.95
               ) -> tuple[np.ndarray, np.ndarray]:
    """BCa bounds (Efron & Tibshirani eq. 14.10/14.15) per row: ``star`` (rows, B) bootstrap values,
    ``jack`` (rows, m) leave-one-patient-out values; ties count half, as in scipy.stats.bootstrap."""
    frac = ((star < theta[:, None]).mean(1) + (star <= theta[:, None]).mean(1)) / 2
    z0 = norm.ppf(frac)
    d = jack.mean(1, keepdims=True) - jack
    with np.errstate(divide="ignore", invalid="ignore"):
        a = (d ** 3).sum(1) / (6 * ((d ** 2).sum(1)) ** 1.5)
    a = np.nan_to_num(a)
    za = norm.ppf([(1 - level) / 2, (1 + level) / 2])
    q = [norm.cdf(z0 + (z0 + zz) / (1 - a * (z0 + zz))) for zz in za]
    q = [np.nan_to_num(x, nan=0.5) for x in q]
    lo = np.array([np.quantile(r, x) for r, x in zip(star, q[0])])
    hi = np.array([np.quantile(r, x) for r, x in zip(star, q[1])])
    return lo, hi


def prop_boot(kind: str) -> Callable:
    def ci(s: np.ndarray, n: np.ndarray, rng: np.random.Generator, boot: int):
        reps, m = s.shape
        los, his = [], []
        for a in range(0, reps, 50):
            ss, nn = s[a:a + 50], n[a:a + 50]
            W = _boot_counts(rng, len(ss), boot, m)
            with np.errstate(invalid="ignore"):
                star = np.einsum("rbm,rm->rb", W, ss) / np.einsum("rbm,rm->rb", W, nn)
            if kind == "percentile":
                lo, hi = np.quantile(star, [0.025, 0.975], axis=1)
            else:
                theta = ss.sum(1) / nn.sum(1)
                jack = (ss.sum(1, keepdims=True) - ss) / (nn.sum(1, keepdims=True) - nn)
                lo, hi = bca_bounds(theta, star, jack)
            los.append(lo)
            his.append(hi)
        return np.concatenate(los), np.concatenate(his)
    return ci


PROPORTION_METHODS: dict[str, Callable] = {
    "percentile bootstrap (today)": prop_boot("percentile"),
    "BCa bootstrap over patients": prop_boot("bca"),
    "Wilson, n = images": prop_analytic("wilson", n_eff="images"),
    "Wilson, n = Kish n (ICC 1) always": prop_analytic("wilson", n_eff="kish"),
    "Wilson, n_eff; at 0/1 n = images": prop_analytic("wilson", edge="images"),
    "Wilson, n_eff; at 0/1 n = patients": prop_analytic("wilson", edge="patients"),
    "Wilson, n_eff; at 0/1 n = Kish": prop_analytic("wilson", edge="kish"),
    "Wilson, n_eff (deff not floored at 1); at 0/1 Kish": prop_analytic("wilson", floor1=False),
    "Wilson, n_eff x (z/t_m-1)^2; at 0/1 Kish": prop_analytic("wilson", tdf=True),
    "Jeffreys, n_eff; at 0/1 n = Kish": prop_analytic("jeffreys", edge="kish"),
    "Jeffreys, n_eff x (z/t)^2; at 0/1 Kish": prop_analytic("jeffreys", tdf=True),
    "Clopper-Pearson, n_eff; at 0/1 Kish": prop_analytic("beta", edge="kish"),
    "Wilson, n_eff x (z/t)^2; Kish at 0/1 or < 3 minority patients": prop_analytic("wilson", tdf=True,
                                                                                   min_minority=3),
    "Wilson, n_eff x (z/t)^2; Kish at 0/1 or < 5 minority patients": prop_analytic("wilson", tdf=True,
                                                                                   min_minority=5),
    "Wilson, n_eff x (z/t)^2; Kish at 0/1 or < 10 minority patients": prop_analytic("wilson", tdf=True,
                                                                                    min_minority=10),
    "Wilson, n_eff x (z/t_k-1)^2, k minority patients; Kish at 0/1": prop_analytic("wilson", tdf=True,
                                                                                   df_minority=True),
    "CHOSEN: cxrbook.evaluation.intervals.proportion_ci": lambda s, n, rng, boot: np.array(
        [I.proportion_ci(a, b) for a, b in zip(s, n)]).T,
}


def proportion_study(reps: int, boot: int, seed: int, only: set[str]) -> list[tuple]:
    designs = [("probit rho 0.5, 50 patients", lambda p, rng: S.clustered_successes(p, 50, reps, rng)),
               ("probit rho 0.8, 50 patients",
                lambda p, rng: S.clustered_successes(p, 50, reps, rng, rho=0.8)),
               ("beta-binomial ICC 0.3, 50 patients",
                lambda p, rng: S.beta_binomial_successes(p, 50, reps, rng, icc=0.3)),
               ("probit rho 0.5, 20 patients", lambda p, rng: S.clustered_successes(p, 20, reps, rng)),
               ("probit rho 0.5, 200 patients", lambda p, rng: S.clustered_successes(p, 200, reps, rng)),
               ("probit rho 0.8, 50 patients of 1-8 images",
                lambda p, rng: S.clustered_successes(p, 50, reps, rng, rho=0.8, size_p=S.LARGE_SIZE_P))]
    rows = []
    for dname, gen in designs:
        for p in (0.70, 0.90, 0.95, 0.98, 0.99, 1.00):
            rng = np.random.default_rng([seed, int(p * 1000)])
            s, n = gen(p, rng)
            for mname, fn in PROPORTION_METHODS.items():
                if "bootstrap" in mname and "boot" not in only:
                    continue
                lo, hi = fn(s, n, np.random.default_rng([seed, 7]), boot)
                rows.append(("proportion", dname, p, mname, *summary(lo, hi, p)))
    return rows


# --------------------------------------------------------------------------- AUC

def placements(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per image: fraction of the other class it beats (ties 1/2): V10 for positives, V01 for negatives."""
    pos, neg = np.sort(s[y == 1]), np.sort(s[y == 0])
    v10 = (np.searchsorted(neg, s, "left") + np.searchsorted(neg, s, "right")) / (2 * len(neg))
    v01 = 1 - (np.searchsorted(pos, s, "left") + np.searchsorted(pos, s, "right")) / (2 * len(pos))
    return np.where(y == 1, v10, np.nan), np.where(y == 0, v01, np.nan)


def obuchowski(y: np.ndarray, s: np.ndarray, pid: np.ndarray) -> tuple[float, float]:
    """(AUC, its clustered variance): Obuchowski (1997), each patient one cluster."""
    v10, v01 = placements(y, s)
    n1, n0 = (y == 1).sum(), (y == 0).sum()
    auc = np.nansum(v10) / n1
    m = pid.max() + 1
    m1 = np.bincount(pid, weights=(y == 1), minlength=m)
    m0 = np.bincount(pid, weights=(y == 0), minlength=m)
    c10 = np.bincount(pid, weights=np.nan_to_num(v10), minlength=m) - m1 * auc
    c01 = np.bincount(pid, weights=np.nan_to_num(v01), minlength=m) - m0 * auc
    i10, i01, i = (m1 > 0).sum(), (m0 > 0).sum(), ((m1 + m0) > 0).sum()
    s10 = i10 / ((i10 - 1) * n1) * (c10 ** 2).sum()
    s01 = i01 / ((i01 - 1) * n0) * (c01 ** 2).sum()
    s11 = i / (i - 1) * (c10 * c01).sum()
    return float(auc), float(s10 / n1 + s01 / n0 + 2 * s11 / (n1 * n0))


def hanley_mcneil(theta: np.ndarray, n1: float, n0: float) -> np.ndarray:
    q1, q2 = theta / (2 - theta), 2 * theta ** 2 / (1 + theta)
    return (theta * (1 - theta) + (n1 - 1) * (q1 - theta ** 2) + (n0 - 1) * (q2 - theta ** 2)) / (n1 * n0)


def binormal_var(theta, n1: float, n0: float):
    """The Hanley-McNeil form with Q1 = Q2 = P(X > Y1, X > Y2) of the equal-variance binormal
    model: Phi2(d, d; 1/2) = Phi(d) - 2 T(d, 1/sqrt 3), d = Phi^-1(theta) (Owen's T)."""
    from scipy.special import owens_t
    d = norm.ppf(np.clip(theta, 1e-15, 1 - 1e-15))
    q = norm.cdf(d) - 2 * owens_t(d, 1 / np.sqrt(3))
    return (theta * (1 - theta) + (n1 + n0 - 2) * (q - theta ** 2)) / (n1 * n0)


def hm_score_interval(auc: float, deff: float, n1: float, n0: float, var=None) -> tuple[float, float]:
    """Roots of (auc - t)^2 = z^2 deff V_HM(t; n1, n0) below and above ``auc`` (bisection)."""
    var = var or hanley_mcneil

    def f(t):
        return (auc - t) ** 2 - Z * Z * deff * var(t, n1, n0)

    def root(a, b):   # f(a) > 0 >= f(b) or the reverse: bisect
        fa = f(a)
        for _ in range(60):
            c = (a + b) / 2
            if (f(c) > 0) == (fa > 0):
                a, fa = c, f(c)
            else:
                b = c
        return (a + b) / 2
    lo = 0.0 if auc <= 0 else root(0.0, auc)
    hi = 1.0 if auc >= 1 else root(1.0, auc)
    return lo, hi


def auc_wald(y, s, pid, scale: str, edge: str = "hm") -> tuple[float, float]:
    auc, var = obuchowski(y, s, pid)
    if scale == "raw":
        se = np.sqrt(var)
        return max(0.0, auc - Z * se), min(1.0, auc + Z * se)
    if 0 < auc < 1 and var > 0:
        half = Z * np.sqrt(var) / (auc * (1 - auc))
        return float(expit(logit(auc) - half)), float(expit(logit(auc) + half))
    return auc_hm(y, s, pid)          # AUC 0 or 1: the score interval at patient counts


def _patient_counts(y, pid) -> tuple[float, float]:
    n1 = np.bincount(pid, weights=(y == 1))
    n0 = np.bincount(pid, weights=(y == 0))
    return (n1.sum() ** 2 / (n1 ** 2).sum()), (n0.sum() ** 2 / (n0 ** 2).sum())


def auc_hm(y, s, pid, floor1: bool = True) -> tuple[float, float]:
    """Hanley-McNeil score interval, image counts deflated by deff = V_Obuchowski / V_HM(auc);
    at an observed AUC of 0 or 1 (deff undefined) the Kish patient counts (ICC 1)."""
    auc, var = obuchowski(y, s, pid)
    n1, n0 = (y == 1).sum(), (y == 0).sum()
    if 0 < auc < 1:
        deff = var / hanley_mcneil(auc, n1, n0)
        if floor1:
            deff = max(deff, 1.0)
        return hm_score_interval(auc, deff, n1, n0)
    k1, k0 = _patient_counts(y, pid)
    return hm_score_interval(auc, 1.0, k1, k0)


def placement_deffs(y, s, pid) -> tuple[float, float]:
    """Design effects of the mean placement of the positives (V10) and of the negatives (V01):
    the cluster-robust variance of each mean over its iid variance (NaN when the placements of a
    class are all equal, e.g. an AUC of 0 or 1)."""
    v10, v01 = placements(y, s)
    out = []
    for v, cls in ((v10, 1), (v01, 0)):
        keep = y == cls
        vals, ids = v[keep], pid[keep]
        _, codes = np.unique(ids, return_inverse=True)
        n = len(vals)
        mean = vals.mean()
        k = codes.max() + 1
        tot = np.bincount(codes, weights=vals - mean, minlength=k)
        clustered = k / (k - 1) * (tot ** 2).sum() / n ** 2
        iid = ((vals - mean) ** 2).sum() / (n - 1) / n
        out.append(clustered / iid if iid > 0 else float("nan"))
    return out[0], out[1]


def auc_hm_placement(y, s, pid, tdf: bool = False, floor1: bool = True, scale: str = "score",
                     var=None) -> tuple[float, float]:
    """Hanley-McNeil score interval on effective counts N+/deff10, N-/deff01 (placement design
    effects floored at 1); where a class's placements are all equal, its Kish patient count.
    ``scale="logit"``: a logit-scale Wald interval with the HM variance at those counts instead."""
    auc, _ = obuchowski(y, s, pid)
    n1, n0 = float((y == 1).sum()), float((y == 0).sum())
    d10, d01 = placement_deffs(y, s, pid)
    k1, k0 = _patient_counts(y, pid)
    lo1 = 1.0 if floor1 else 0.0
    e1 = n1 / max(d10, lo1) if np.isfinite(d10) else k1
    e0 = n0 / max(d01, lo1) if np.isfinite(d01) else k0
    if scale == "logit" and 0 < auc < 1:
        half = Z * np.sqrt(hanley_mcneil(auc, e1, e0)) / (auc * (1 - auc))
        return float(expit(logit(auc) - half)), float(expit(logit(auc) + half))
    deff = 1.0
    if tdf:
        deff = (student_t.isf(0.025, min(len(np.unique(pid[y == 1])), len(np.unique(pid[y == 0]))) - 1) / Z) ** 2
    return hm_score_interval(auc, deff, e1, e0, var)


def weighted_auc(W: np.ndarray, y: np.ndarray, s: np.ndarray) -> np.ndarray:
    """AUC for each row of image weights W (B, n): sum over positives of w * (weight of negatives
    below + half the tied) / (W+ W-)."""
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    order = neg[np.argsort(s[neg], kind="stable")]
    cum = np.concatenate([np.zeros((len(W), 1)), np.cumsum(W[:, order], axis=1)], axis=1)
    sn = s[order]
    left, right = np.searchsorted(sn, s[pos], "left"), np.searchsorted(sn, s[pos], "right")
    below = (cum[:, left] + cum[:, right]) / 2
    wp = W[:, pos]
    with np.errstate(invalid="ignore", divide="ignore"):
        return (wp * below).sum(1) / (wp.sum(1) * cum[:, -1])


def auc_boot(kind: str) -> Callable:
    def ci(y, s, pid, rng, boot):
        m = pid.max() + 1
        counts = _boot_counts(rng, 1, boot, m)[0]
        star = weighted_auc(counts[:, pid], y, s)
        if kind == "percentile":
            lo, hi = np.nanquantile(star, [0.025, 0.975])
            return lo, hi
        theta = weighted_auc(np.ones((1, len(y))), y, s)
        jack = weighted_auc(1.0 - (pid[None, :] == np.arange(m)[:, None]), y, s)
        lo, hi = bca_bounds(theta, star[None, np.isfinite(star)], jack[None])
        return lo[0], hi[0]
    return ci


AUC_METHODS: dict[str, Callable] = {
    "percentile bootstrap (today)": auc_boot("percentile"),
    "BCa bootstrap over patients": auc_boot("bca"),
    "Wald, Obuchowski variance": lambda y, s, pid, rng, boot: auc_wald(y, s, pid, "raw"),
    "logit Wald, Obuchowski variance": lambda y, s, pid, rng, boot: auc_wald(y, s, pid, "logit"),
    "HM score, n / deff (floored 1)": lambda y, s, pid, rng, boot: auc_hm(y, s, pid),
    "HM score, n / deff (not floored)": lambda y, s, pid, rng, boot: auc_hm(y, s, pid, floor1=False),
    "HM score, n+/deff10, n-/deff01": lambda y, s, pid, rng, boot: auc_hm_placement(y, s, pid),
    "HM score, placement deffs, t quantile": lambda y, s, pid, rng, boot: auc_hm_placement(y, s, pid, True),
    "HM score, placement deffs not floored": lambda y, s, pid, rng, boot: auc_hm_placement(y, s, pid,
                                                                                         floor1=False),
    "binormal-variance score, placement deffs": lambda y, s, pid, rng, boot: auc_hm_placement(
        y, s, pid, var=binormal_var),
    "logit Wald, HM variance at placement n_eff": lambda y, s, pid, rng, boot: auc_hm_placement(
        y, s, pid, scale="logit"),
    "CHOSEN: cxrbook.evaluation.intervals.auc_ci": lambda y, s, pid, rng, boot: I.auc_ci(y, s, pid),
}


def auc_study(reps: int, boot: int, seed: int, only: set[str]) -> list[tuple]:
    designs = [("rho 0.5, 50+50 patients", 50, 50, 0.5, 1.0), ("rho 0.8, 50+50 patients", 50, 50, 0.8, 1.0),
               ("rho 0.5, 20+40 patients", 20, 40, 0.5, 1.0),
               ("rho 0.5, 50+50 patients, sd+ 1.5", 50, 50, 0.5, 1.5),
               ("rho 0.5, 50+50 patients, sd+ 0.67", 50, 50, 0.5, 0.67),
               ("rho 0 (independent images), 50+50 patients", 50, 50, 0.0, 1.0),
               ("rho 0.8, 50+50 patients of 1-8 images", 50, 50, 0.8, 1.0)]
    designs_boot = {d[0] for d in designs[:3]}
    rows = []
    for dname, n_pos, n_neg, rho, sd_pos in designs:
        size_p = S.LARGE_SIZE_P if "1-8" in dname else S.SIZE_P
        for auc in (0.80, 0.95, 0.98, 0.995):
            sets = S.clustered_scores(auc, n_pos, n_neg, reps, np.random.default_rng([seed, int(auc * 1000)]),
                                      rho=rho, sd_pos=sd_pos, size_p=size_p)
            data = [sets.replicate(r) for r in range(reps)]
            for mname, fn in AUC_METHODS.items():
                if "bootstrap" in mname and ("boot" not in only or dname not in designs_boot):
                    continue  # the bootstraps already fail the first designs: not run on the rest
                rng = np.random.default_rng([seed, 11])
                lo, hi = np.array([fn(y, s, pid, rng, boot) for y, s, pid in data]).T
                rows.append(("AUC", dname, auc, mname, *summary(lo, hi, auc)))
    return rows


# --------------------------------------------------------------------------- other metrics

OTHER = ("brier", "f1", "pr_auc", "ece")


def _metrics_module():
    """cxrbook's metrics, before or after its move into the evaluation folder."""
    try:
        from cxrbook.evaluation import metrics as M  # type: ignore[import-not-found]
    except ImportError:
        from cxrbook import metrics as M
    return M


def cluster_wald(y, s, pid, log: bool) -> tuple[float, float]:
    """Brier score +- z * cluster-robust (ratio-estimator) SE; on the log scale if ``log``."""
    e = (s - y) ** 2
    codes = np.unique(pid, return_inverse=True)[1]
    tot, cnt = np.bincount(codes, weights=e), np.bincount(codes).astype(float)
    m, N = len(tot), cnt.sum()
    b = tot.sum() / N
    se = np.sqrt(m / (m - 1) * ((tot - b * cnt) ** 2).sum()) / N
    if log:
        return b * np.exp(-Z * se / b), b * np.exp(Z * se / b)
    return max(b - Z * se, 0.0), b + Z * se


def brier_study(reps: int, boot: int, seed: int, only: set[str]) -> list[tuple]:
    """Brier: the chosen bootstrap-t on the log scale (cxrbook.evaluation.intervals.mean_ci), which is
    cheap enough for one more design with 1-8 images per patient."""
    rows = []
    for dname, sharp, rho, size_p in (
            ("calibrated scores, rho 0.5, 50+50 patients", 1.0, 0.5, S.SIZE_P),
            ("under-confident scores (logit x 0.5), rho 0.5, 50+50 patients", 0.5, 0.5, S.SIZE_P),
            ("calibrated scores, rho 0.8, 50+50 patients of 1-8 images", 1.0, 0.8, S.LARGE_SIZE_P)):
        for auc in (0.80, 0.95, 0.98, 0.995):
            truth = S.true_metrics(auc, 50, 50, sharp)["brier"]
            sets = S.clustered_scores(auc, 50, 50, reps, np.random.default_rng([seed, int(auc * 1000), 3]),
                                      rho=rho, size_p=size_p)
            got: dict[str, list] = {}
            for r in range(reps):
                y, s, pid = sets.replicate(r)
                s = expit(sharp * logit(s))
                got.setdefault("CHOSEN: cxrbook.evaluation.intervals.mean_ci (bootstrap-t, log scale)", []).append(
                    I.mean_ci((s - y) ** 2, pid, n_boot=boot, seed=r))
            for mname, bounds in got.items():
                lo, hi = np.array(bounds, dtype=float).T
                rows.append(("brier", dname, auc, mname, *summary(lo, hi, truth)))
    return rows


def other_study(reps: int, boot: int, seed: int, only: set[str]) -> list[tuple]:
    """Brier, F1 (threshold 0.5), PR AUC and ECE: today's percentile bootstrap (cxrbook.metrics,
    the production code) against BCa over patients (cxrbook.evaluation.intervals) on the same metric code,
    and for Brier a cluster-robust Wald interval (raw and log scale)."""
    M = _metrics_module()
    classes = ("negative", "positive")
    rows = []
    for dname, sharp in (("calibrated scores, rho 0.5, 50+50 patients", 1.0),
                         ("under-confident scores (logit x 0.5), rho 0.5, 50+50 patients", 0.5)):
        for auc in (0.80, 0.95, 0.98, 0.995):
            truth = S.true_metrics(auc, 50, 50, sharp)
            sets = S.clustered_scores(auc, 50, 50, reps, np.random.default_rng([seed, int(auc * 1000), 3]))
            got: dict[tuple[str, str], list] = {}
            for r in range(reps):
                y, s, pid = sets.replicate(r)
                s = expit(sharp * logit(s))
                pred = (s >= 0.5).astype(int)
                draws = M.bootstrap_draws(y, s, pid, classes, threshold=0.5, n_boot=boot, seed=r)
                perc = {n: tuple(np.nanpercentile(v, [2.5, 97.5])) for n, v in draws.items()}   # the old method
                bca = I.patient_bootstrap_ci(lambda W: M._weighted_metrics(W, y, s, pred, classes), pid,
                                           n_boot=boot, seed=r)
                for name in OTHER:
                    got.setdefault((name, "percentile bootstrap (today)"), []).append(perc[name])
                    got.setdefault((name, "BCa bootstrap over patients"), []).append(bca[name])
                got.setdefault(("brier", "Wald, cluster-robust SE"), []).append(cluster_wald(y, s, pid, False))
                got.setdefault(("brier", "log-scale Wald, cluster-robust SE"), []).append(
                    cluster_wald(y, s, pid, True))
            for (name, mname), bounds in got.items():
                lo, hi = np.array(bounds, dtype=float).T
                rows.append((name, dname, auc, mname, *summary(lo, hi, truth[name])))
    return rows


# --------------------------------------------------------------------------- output

def summary(lo: np.ndarray, hi: np.ndarray, truth: float) -> tuple[float, float, float]:
    """(coverage, mean width, share of zero-width intervals); an interval with a NaN end misses."""
    lo, hi = np.asarray(lo, float), np.asarray(hi, float)
    cover = (lo <= truth + 1e-12) & (truth - 1e-12 <= hi)
    return float(cover.mean()), float(np.nanmean(hi - lo)), float((hi - lo <= 1e-12).mean())


def print_tables(rows: list[tuple]) -> None:
    """One Markdown table per (metric, design): a row per method, a column per true value,
    cells "coverage / mean width" (a trailing "z.zz" gives the share of zero-width intervals)."""
    groups: dict[tuple, dict] = {}
    for kind, d, truth, mname, cov, width, zero in rows:
        groups.setdefault((kind, d), {}).setdefault(mname, {})[truth] = (cov, width, zero)
    for (kind, d), methods in groups.items():
        truths = sorted({t for cells in methods.values() for t in cells})
        print(f"\n**{kind}, {d}** (coverage / mean width)\n")
        print("| method | " + " | ".join(f"{t:g}" for t in truths) + " | min coverage |")
        print("|---" * (len(truths) + 2) + "|")
        for mname, cells in methods.items():
            txt = []
            for t in truths:
                cov, width, zero = cells[t]
                txt.append(f"{cov:.3f} / {width:.3f}" + (f" z{zero:.2f}" if zero > 0 else ""))
            low = min(c[0] for c in cells.values())
            print(f"| {mname} | " + " | ".join(txt) + f" | {low:.3f} |")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=2000)
    ap.add_argument("--boot", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=15)
    ap.add_argument("--only", default="prop,auc,boot")
    args = ap.parse_args(argv)
    only = set(args.only.split(","))
    start = time.perf_counter()
    rows = []
    if "prop" in only:
        rows += proportion_study(args.reps, args.boot, args.seed, only)
    if "auc" in only:
        rows += auc_study(args.reps, args.boot, args.seed, only)
    if "brier" in only:
        rows += brier_study(args.reps, args.boot, args.seed, only)
    if "other" in only:
        rows += other_study(args.reps, args.boot, args.seed, only)
    print(f"reps {args.reps}, bootstrap resamples {args.boot}, seed {args.seed}, "
          f"{time.perf_counter() - start:.0f} s")
    print_tables(rows)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
