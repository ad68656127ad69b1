"""Evaluation: thresholds, metrics and their patient-level 95 % intervals.

Why this module exists: the published work reported 92.9 % "accuracy" from an
argmax over a *single* sigmoid column (every image predicted as one class),
split images rather than patients and gave no intervals. Here:

* binary models output ONE sigmoid score per image = P(class index 1); labels
  come from ``score >= threshold`` with the threshold chosen on the
  **validation** split (:func:`choose_threshold`) and then held fixed on test.
  A single column is never argmax-ed (:func:`predict_labels`).
* every metric carries a 95 % interval that treats the images of one patient
  as one cluster, by the method a coverage simulation chose for it
  (:func:`metric_intervals`, :mod:`cxrbook.evaluation.intervals`): a Wilson
  interval on the design-effect-adjusted count for proportions, a Hanley-McNeil
  score interval for AUCs, a bootstrap-t for Brier, BCa over patients for the
  rest; each holds its coverage near 0 and 1, where the percentile bootstrap
  did not, and names its method (``ci_method``).
* accuracy is always ``trace(confusion) / n_test``.

Metrics
-------
Binary (classes ``(negative, positive)``): ``accuracy, sensitivity, specificity,
ppv, npv, f1, roc_auc, pr_auc`` (average precision), ``brier`` (mean squared
error of the positive-class probability) and ``ece`` (expected calibration
error, 10 equal-width bins on the positive-class score, the bins of scikit-learn's
``calibration_curve``).
Multi-class (softmax ``(n, k)``): ``accuracy, macro_auc`` (one-vs-rest, unweighted
mean), ``macro_f1``, ``sensitivity_<class>``, ``specificity_<class>`` (one-vs-rest:
the share of the other classes' images not predicted ``<class>``; notebook 08 reads
``covid`` against the rest from them), ``auc_<class>`` (one-vs-rest) and
``brier`` (multi-class Brier: mean over images of the sum over classes of the
squared difference to the one-hot label; range [0, 2]).
Undefined metrics (PPV with no positive prediction, AUC with one class present,
...) are NaN in :func:`compute_metrics` and ``null`` in a report / record.

The record these reports become (schema, validation, JSON files, tables) lives in
:mod:`cxrbook.evaluation.records`; the figures (ROC/PR, reliability, confusion) in
:mod:`cxrbook.evaluation.metric_plots`.

Why one module of ~600 lines: every point metric (sklearn, unit weights) has a
vectorised, patient-weighted twin that the bootstrap evaluates on thousands of
resamples at once; keeping the two side by side is what stops their
definitions from drifting apart.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    brier_score_loss,
    classification_report,
    confusion_matrix,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
    roc_curve,
)

from ..atomic import nan_to_none
from . import intervals as I
from .records import metric_entry

__all__ = [
    "BINARY_METRICS", "THRESHOLD_RULES", "YOUDEN_ON_VALIDATION", "ECE_BINS",
    "choose_threshold", "predict_labels", "compute_metrics", "degenerate_reason", "auc_name",
    "metric_intervals", "ScoredSet", "joint_bootstrap_draws", "bootstrap_draws", "metric_differences",
    "evaluate", "paired_auc_test", "classification_report_df",
    "prepare_scores", "bin_index", "expected_calibration_error", "cluster_weights", "patient_codes",
]

BINARY_METRICS = ("accuracy", "sensitivity", "specificity", "ppv", "npv", "f1",
                  "roc_auc", "pr_auc", "brier", "ece")
THRESHOLD_RULES = ("youden", "fixed")
# The ``threshold_rule`` of every record whose threshold ``choose_threshold(..., "youden")`` chose on validation.
YOUDEN_ON_VALIDATION = "youden on validation (midpoint between adjacent validation scores)"
ECE_BINS = 10


# --------------------------------------------------------------------------- inputs

def _encode_labels(y_true: ArrayLike, classes: Sequence[str]) -> np.ndarray:
    """Class indices (int) from indices or class names."""
    y = np.asarray(y_true)
    if y.ndim != 1:
        raise ValueError(f"y_true must be 1-D, got shape {y.shape}")
    k = len(classes)
    if y.dtype.kind in "USO":
        lookup = {c: i for i, c in enumerate(classes)}
        unknown = sorted({str(v) for v in y if v not in lookup})
        if unknown:
            raise ValueError(f"labels {unknown} not in classes {list(classes)}")
        return np.array([lookup[v] for v in y], dtype=int)
    if y.dtype.kind == "b":
        y = y.astype(int)
    if y.dtype.kind == "f":
        if not np.all(np.equal(np.mod(y, 1), 0)):
            raise ValueError("y_true must hold class indices or class names")
    y = y.astype(int)
    if y.size and (y.min() < 0 or y.max() >= k):
        raise ValueError(f"class indices must lie in [0, {k - 1}] for classes {list(classes)}")
    return y


def _binary_scores(scores: ArrayLike) -> np.ndarray:
    """Positive-class score vector from (n,), (n, 1) or (n, 2) (column 1)."""
    s = np.asarray(scores, dtype=float)
    if s.ndim == 2 and s.shape[1] in (1, 2):
        s = s[:, -1]
    if s.ndim != 1:
        raise ValueError(f"binary scores must have shape (n,), (n, 1) or (n, 2), got {s.shape}")
    return s


def prepare_scores(y_true: ArrayLike, scores: ArrayLike, classes: Sequence[str]
                   ) -> tuple[np.ndarray, np.ndarray, int]:
    """(labels, scores, k): binary scores as a 1-D positive-class vector, else (n, k)."""
    k = len(classes)
    if k < 2:
        raise ValueError("need at least two classes")
    y = _encode_labels(y_true, classes)
    if k == 2:
        s = _binary_scores(scores)
    else:
        s = np.asarray(scores, dtype=float)
        if s.ndim != 2 or s.shape[1] != k:
            raise ValueError(f"{k}-class scores must have shape (n, {k}), got {s.shape}")
    if len(s) != len(y):
        raise ValueError(f"{len(y)} labels but {len(s)} score rows")
    if len(y) == 0:
        raise ValueError("no images to evaluate")
    return y, s, k


def _check_threshold(threshold: float | None) -> float:
    if threshold is None:
        raise ValueError("a binary (single sigmoid) output needs a threshold; choose it on the "
                         "validation split with choose_threshold() - argmax over one column is "
                         "meaningless")
    t = float(threshold)
    if not math.isfinite(t):
        raise ValueError(f"threshold must be finite, got {threshold!r}")
    return t


# --------------------------------------------------------------------------- threshold

def choose_threshold(y_true: ArrayLike, scores: ArrayLike, rule: str = "youden") -> float:
    """Decision threshold for a binary sigmoid output; call it on the VALIDATION split only.

    Rules:

    * ``"youden"``: among the cut points between adjacent distinct validation
      scores take the one maximizing Youden's J = sensitivity + specificity - 1
      (images are positive when ``score >= t``); ties go to the cut closest to
      0.5. The threshold is the **midpoint** of the gap: halfway between the
      lowest score called positive and the highest score called negative (below
      the lowest score, halfway to 0). It is never an observed validation score,
      so an engine (Keras, ONNX Runtime) whose scores differ in the last bits
      cannot flip a ``>=`` decision on a validation image, and the decisions on
      validation are those of the ROC point chosen. The "everything negative"
      cut above the highest score is never returned. Result in [0, 1].
    * ``"fixed"``: 0.5.
    """
    if rule == "fixed":
        return 0.5
    if rule != "youden":
        raise ValueError(f"unknown threshold rule {rule!r}; choose one of {THRESHOLD_RULES}")
    y = _encode_labels(y_true, ("negative", "positive"))
    s = _binary_scores(scores)
    if len(np.unique(y)) < 2:
        raise ValueError("Youden's threshold needs both classes in the validation labels")
    if not np.all(np.isfinite(s)):
        raise ValueError("validation scores must be finite")
    fpr, tpr, thr = roc_curve(y, s, drop_intermediate=False)
    finite = np.isfinite(thr)                     # sklearn's leading "inf": everything negative
    fpr, tpr, thr = fpr[finite], tpr[finite], thr[finite]
    below = np.r_[thr[1:], min(0.0, float(thr[-1]))]  # next lower distinct score (thr descends)
    cuts = (thr + below) / 2.0
    j = tpr - fpr
    best = np.flatnonzero(np.isclose(j, j.max(), rtol=0.0, atol=1e-12))
    t = cuts[best[np.argmin(np.abs(cuts[best] - 0.5))]]
    return float(np.clip(t, 0.0, 1.0))


def predict_labels(scores: ArrayLike, threshold: float | None = None) -> np.ndarray:
    """Predicted class indices.

    1-D or (n, 1) scores (one sigmoid = P(class 1)): ``(scores >= threshold)``;
    ``threshold`` is required. (n, k) with k >= 2: argmax over columns.
    A single column is never argmax-ed (that predicts class 0 for every image).
    """
    s = np.asarray(scores, dtype=float)
    if s.ndim == 2 and s.shape[1] == 1:
        s = s[:, 0]
    if s.ndim == 1:
        return (s >= _check_threshold(threshold)).astype(int)
    if s.ndim == 2 and s.shape[1] >= 2:
        return np.argmax(s, axis=1).astype(int)
    raise ValueError(f"scores must have shape (n,), (n, 1) or (n, k>=2), got {s.shape}")


def _predict(s: np.ndarray, k: int, threshold: float | None) -> np.ndarray:
    return predict_labels(s, threshold) if k == 2 else np.argmax(s, axis=1).astype(int)


# --------------------------------------------------------------------------- point estimates

def _safe(fn, *args, **kwargs) -> float:
    """sklearn metric, NaN instead of an exception/warning when it is undefined."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return float(fn(*args, **kwargs))
        except ValueError:
            return float("nan")


def expected_calibration_error(y: np.ndarray, s: np.ndarray, n_bins: int = ECE_BINS) -> float:
    """ECE: image-weighted mean |mean score - observed positive fraction| over equal-width score bins."""
    bins = bin_index(s, n_bins)
    total = 0.0
    for b in range(n_bins):
        m = bins == b
        if m.any():
            total += abs(s[m].sum() - y[m].sum())
    return float(total / len(y))


def bin_index(s: np.ndarray, n_bins: int) -> np.ndarray:
    """Equal-width bins on [0, 1], the bins of ``sklearn.calibration.calibration_curve``
    (strategy "uniform"): bin 0 is [0, e1], bin i is (e_i, e_i+1] for the edges
    ``np.linspace(0, 1, n_bins + 1)``, so a score on an edge falls in the lower bin."""
    return np.searchsorted(np.linspace(0.0, 1.0, n_bins + 1)[1:-1], np.asarray(s, dtype=float))


def compute_metrics(y_true: ArrayLike, scores: ArrayLike, classes: Sequence[str],
                    threshold: float | None = None) -> dict[str, Any]:
    """Point estimates (see module docstring for the list) plus ``confusion_matrix``.

    Binary: ``scores`` is the positive-class sigmoid, ``threshold`` required.
    Multi-class: ``scores`` is (n, k) softmax, labels by argmax, ``threshold`` ignored.
    Undefined metrics are NaN. Accuracy is ``trace(confusion) / n``.
    """
    y, s, k = prepare_scores(y_true, scores, classes)
    pred = _predict(s, k, threshold)
    labels = list(range(k))
    cm = confusion_matrix(y, pred, labels=labels)
    out: dict[str, Any] = {"accuracy": float(accuracy_score(y, pred))}
    nan = float("nan")
    if k == 2:
        has_pos, has_neg = bool((y == 1).any()), bool((y == 0).any())
        out.update(
            sensitivity=_safe(recall_score, y, pred, pos_label=1, zero_division=np.nan),
            specificity=_safe(recall_score, y, pred, pos_label=0, zero_division=np.nan),
            ppv=_safe(precision_score, y, pred, pos_label=1, zero_division=np.nan),
            npv=_safe(precision_score, y, pred, pos_label=0, zero_division=np.nan),
            f1=_safe(f1_score, y, pred, pos_label=1, zero_division=np.nan),
            roc_auc=_safe(roc_auc_score, y, s) if has_pos and has_neg else nan,
            pr_auc=_safe(average_precision_score, y, s) if has_pos else nan,
            brier=_safe(brier_score_loss, y, s, pos_label=1),
            ece=expected_calibration_error(y, s),
        )
    else:
        aucs = {c: (_safe(roc_auc_score, (y == i).astype(int), s[:, i])
                    if 0 < (y == i).sum() < len(y) else nan) for i, c in enumerate(classes)}
        sens = recall_score(y, pred, labels=labels, average=None, zero_division=np.nan)
        out["macro_auc"] = float(np.mean(list(aucs.values())))  # NaN if any class AUC undefined
        out["macro_f1"] = _safe(f1_score, y, pred, labels=labels, average="macro",
                                zero_division=np.nan)
        for i, c in enumerate(classes):
            out[f"sensitivity_{c}"] = float(sens[i])
        for i, c in enumerate(classes):   # one-vs-rest: images of other classes not predicted c
            neg = cm.sum() - cm[i].sum()
            out[f"specificity_{c}"] = float((neg - (cm[:, i].sum() - cm[i, i])) / neg) if neg else nan
        for c in classes:
            out[f"auc_{c}"] = aucs[c]
        out["brier"] = _safe(brier_score_loss, y, s, labels=labels)
    out["confusion_matrix"] = cm.astype(int).tolist()
    return out


# --------------------------------------------------------------------------- vectorized (weighted) metrics

def _div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def _weighted_auc_ap(W: np.ndarray, y: np.ndarray, s: np.ndarray, with_ap: bool = True
                     ) -> tuple[np.ndarray, np.ndarray | None]:
    """ROC AUC and average precision for each row of integer weights ``W`` (B, n).

    Identical to sklearn's roc_auc_score / average_precision_score with
    ``sample_weight=W[b]`` (ties count 1/2 for AUC; AP steps at distinct scores).
    """
    order = np.argsort(s, kind="stable")
    ss, ys = s[order], y[order].astype(float)
    starts = np.flatnonzero(np.r_[True, ss[1:] != ss[:-1]])
    Ws = W[:, order]
    pos = np.add.reduceat(Ws * ys, starts, axis=1)        # (B, groups), ascending score
    neg = np.add.reduceat(Ws * (1.0 - ys), starts, axis=1)
    P, N = pos.sum(axis=1), neg.sum(axis=1)
    neg_below = np.cumsum(neg, axis=1) - neg
    auc = _div((pos * (neg_below + 0.5 * neg)).sum(axis=1), P * N)
    if not with_ap:
        return auc, None
    pos_d, neg_d = pos[:, ::-1], neg[:, ::-1]             # descending score
    tp, fp = np.cumsum(pos_d, axis=1), np.cumsum(neg_d, axis=1)
    precision = np.nan_to_num(_div(tp, tp + fp), nan=0.0)
    ap = _div((pos_d * precision).sum(axis=1), P)
    return auc, ap


def _weighted_metrics(W: np.ndarray, y: np.ndarray, s: np.ndarray, pred: np.ndarray,
                      classes: Sequence[str]) -> dict[str, np.ndarray]:
    """Every metric of :func:`compute_metrics` for each row of weights ``W`` (B, n)."""
    k = len(classes)
    total = W.sum(axis=1)
    out: dict[str, np.ndarray] = {}
    if k == 2:
        yb, pb = y == 1, pred == 1
        tp, fn = W @ (yb & pb), W @ (yb & ~pb)
        fp, tn = W @ (~yb & pb), W @ (~yb & ~pb)
        auc, ap = _weighted_auc_ap(W, yb, s)
        bins = bin_index(s, ECE_BINS)
        onehot = np.eye(ECE_BINS)[bins]                    # (n, bins)
        gap = W @ (onehot * s[:, None]) - W @ (onehot * yb[:, None])
        out.update(
            accuracy=_div(tp + tn, total),
            sensitivity=_div(tp, tp + fn),
            specificity=_div(tn, tn + fp),
            ppv=_div(tp, tp + fp),
            npv=_div(tn, tn + fn),
            f1=_div(2 * tp, 2 * tp + fp + fn),
            roc_auc=auc,
            pr_auc=ap,
            brier=_div(W @ (s - yb) ** 2, total),
            ece=_div(np.abs(gap).sum(axis=1), total),
        )
        return out
    onehot_y = np.eye(k)[y]
    f1s, aucs = [], []
    correct = np.zeros(len(W))
    for i, c in enumerate(classes):
        yi, pi = y == i, pred == i
        tp, fn, fp = W @ (yi & pi), W @ (yi & ~pi), W @ (~yi & pi)
        correct += tp
        f1s.append(_div(2 * tp, 2 * tp + fp + fn))
        out[f"sensitivity_{c}"] = _div(tp, tp + fn)
        out[f"specificity_{c}"] = _div(W @ (~yi & ~pi), W @ ~yi)
        aucs.append(_weighted_auc_ap(W, yi, s[:, i], with_ap=False)[0])
    out["accuracy"] = _div(correct, total)
    out["macro_auc"] = np.mean(np.stack(aucs), axis=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        out["macro_f1"] = np.nanmean(np.stack(f1s), axis=0)
    for i, c in enumerate(classes):
        out[f"auc_{c}"] = aucs[i]
    out["brier"] = _div(W @ ((s - onehot_y) ** 2).sum(axis=1), total)
    return out


def cluster_weights(codes: np.ndarray, m: int, n_boot: int, rng: np.random.Generator):
    """Yield (B, n) image weights in chunks, ``n_boot`` rows in all: each row = how often each image's
    patient was drawn. The draws are those of the package's one patient bootstrap
    (``intervals.draw_counts``); the box metrics of notebook 09 use them too."""
    counts = I.draw_counts(rng, n_boot, m)
    chunk = max(1, min(n_boot, I.CHUNK_ELEMENTS // max(len(codes), m, 1)))
    for a in range(0, n_boot, chunk):
        yield counts[a:a + chunk][:, codes]


def patient_codes(patient_ids: ArrayLike, n: int) -> tuple[np.ndarray, int]:
    """(integer code of each image's patient, number of patients); ValueError unless one id per image."""
    ids = np.asarray(patient_ids)
    if ids.ndim != 1 or len(ids) != n:
        raise ValueError(f"patient_ids must be 1-D with one entry per image ({n}), got {ids.shape}")
    codes, uniques = pd.factorize(pd.Series(ids).astype(str), sort=True)
    return codes.astype(int), len(uniques)


def degenerate_reason(scores: ArrayLike, tol: float = 1e-6) -> str | None:
    """Why a model's scores cannot rank images (None when they can).

    Constant scores (max - min below ``tol`` in every column) predict one class
    for every image: its accuracy is the majority share and its AUC 0.5, so it
    must never be named a "best" model, and its intervals are flagged ``degenerate``.
    """
    s = np.asarray(scores, dtype=float)
    if s.size == 0:
        return "no scores"
    spread = float(np.max(np.ptp(s.reshape(len(s), -1), axis=0)))
    if spread < tol:
        return f"constant scores (spread {spread:.1e}): predicts one class for every image"
    return None


def auc_name(classes: Sequence[str]) -> str:
    """The AUC a task is ranked by: ``roc_auc`` (binary) or ``macro_auc`` (one-vs-rest mean)."""
    return "roc_auc" if len(classes) == 2 else "macro_auc"


# --------------------------------------------------------------------------- intervals

def _proportions(y: np.ndarray, pred: np.ndarray, classes: Sequence[str]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Every proportion metric as (images in its denominator, which of them count): its interval is
    ``intervals.proportion_ci`` over the patients of those images."""
    out = {"accuracy": (np.ones(len(y), bool), pred == y)}
    if len(classes) == 2:
        yb, pb = y == 1, pred == 1
        out.update(sensitivity=(yb, pb), specificity=(~yb, ~pb), ppv=(pb, yb), npv=(~pb, ~yb))
        return out
    for i, c in enumerate(classes):
        out[f"sensitivity_{c}"] = (y == i, pred == i)
        out[f"specificity_{c}"] = (y != i, pred != i)
    return out


def _bootstrapped(classes: Sequence[str]) -> tuple[str, ...]:
    """Metrics whose interval is the BCa bootstrap over patients (the study found nothing better)."""
    return ("f1", "pr_auc") if len(classes) == 2 else ("macro_f1", "macro_auc")


def metric_intervals(y: np.ndarray, s: np.ndarray, pred: np.ndarray, patient_ids: ArrayLike,
                     classes: Sequence[str], n_boot: int = 1000, seed: int = 0
                     ) -> dict[str, tuple[list[float], str]]:
    """``{metric: ([lo, hi], ci_method)}``, each by the method the coverage study chose for it
    (``tests/interval_study.py``; codes and descriptions in ``records.CI_METHODS``):

    * proportions (accuracy, sensitivity, specificity, PPV, NPV, per-class sensitivity and
      specificity): ``intervals.proportion_ci``, Wilson on the design-effect-adjusted count;
    * ROC AUC and each one-vs-rest AUC: ``intervals.auc_ci``, Hanley-McNeil score interval;
    * Brier: ``intervals.mean_ci``, bootstrap-t over patients on the log scale (``n_boot``, ``seed``);
    * F1, PR AUC, macro F1, macro AUC: ``intervals.patient_bootstrap_ci``, BCa over patients;
    * ECE: none (``[nan, nan]``): the binned ECE is biased upwards and no interval tried covered it.

    Arrays as :func:`prepare_scores` returns them; ``pred`` the decisions. Undefined: ``[nan, nan]``.
    """
    nan2 = [float("nan"), float("nan")]
    pid = np.asarray(patient_ids).astype(str)
    out: dict[str, tuple[list[float], str]] = {}
    for name, (mask, hits) in _proportions(y, pred, classes).items():
        ci = list(I.proportion_ci(*I.patient_counts(hits[mask], pid[mask]))) if mask.any() else nan2
        out[name] = (ci, "wilson_deff")
    pairs = {"roc_auc": (y == 1, s)} if len(classes) == 2 else \
        {f"auc_{c}": (y == i, s[:, i]) for i, c in enumerate(classes)}
    for name, (pos, score) in pairs.items():
        out[name] = (list(I.auc_ci(pos, score, pid)) if 0 < pos.sum() < len(pos) else nan2, "hanley_mcneil_deff")
    onehot = (y == 1).astype(float) if len(classes) == 2 else np.eye(len(classes))[y]
    loss = (s - onehot) ** 2 if len(classes) == 2 else ((s - onehot) ** 2).sum(axis=1)
    several = len(set(pid)) >= 2
    out["brier"] = (list(I.mean_ci(loss, pid, n_boot=max(n_boot, 2), seed=seed, upper=1.0 if len(classes) == 2
                                   else 2.0)) if several else nan2, "bootstrap_t_log")
    names = _bootstrapped(classes)
    if several:
        cis = I.patient_bootstrap_ci(lambda W: {n: v for n, v in _weighted_metrics(W, y, s, pred, classes).items()
                                                if n in names}, pid, n_boot=max(n_boot, 2), seed=seed)
    for n in names:
        out[n] = (list(cis[n]) if several else nan2, "bca_patients")
    if len(classes) == 2:
        out["ece"] = (nan2, "none")
    return out


@dataclass(frozen=True)
class ScoredSet:
    """One model's scores on one test set: labels, scores, each image's patient, the threshold (binary)."""

    y: ArrayLike
    scores: ArrayLike
    patient_ids: ArrayLike
    threshold: float | None = None


def _joint_resamples(sets: Sequence[ScoredSet], classes: Sequence[str], n_boot: int, seed: int,
                     names: Sequence[str] | None = None) -> tuple[I.Resamples, list[str]]:
    """Every metric (or ``names``) of each set on the SAME patient resamples (``intervals.patient_resamples``
    over the sets' images together: an id in two sets is one patient, drawn once); keys ``"<set>:<metric>"``."""
    prepared, ids = [], []
    for t in sets:
        y, s, k = prepare_scores(t.y, t.scores, classes)
        prepared.append((y, s, _predict(s, k, t.threshold)))
        patient_codes(t.patient_ids, len(y))                      # checks the shape
        ids.append(np.asarray(t.patient_ids).astype(str))
    bounds = np.cumsum([0] + [len(y) for y, _, _ in prepared])

    def statistic(W: np.ndarray) -> dict[str, np.ndarray]:
        out = {}
        for i, (y, s, pred) in enumerate(prepared):
            for n, v in _weighted_metrics(W[:, bounds[i]:bounds[i + 1]], y, s, pred, classes).items():
                if names is None or n in names:
                    out[f"{i}:{n}"] = v
        return out
    return I.patient_resamples(statistic, np.concatenate(ids), n_boot=max(n_boot, 2), seed=seed), \
        [str(i) for i in range(len(sets))]


def joint_bootstrap_draws(sets: Sequence[ScoredSet], classes: Sequence[str], n_boot: int = 1000,
                          seed: int = 0) -> list[dict[str, np.ndarray]]:
    """Every metric of each test set on the SAME ``n_boot`` patient resamples: one ``{name: (n_boot,)}`` per set.

    Each resample draws patients with replacement ONCE from the union of the sets' patients (matched
    by id); every image of every set takes the count of its patient in that draw, thresholds held
    fixed. Sets that share patients (one test set scored by two models, or a test set inside another)
    therefore move together, and a set compared with itself differs by exactly 0 in every resample. A
    metric undefined in a resample is NaN there.
    """
    r, keys = _joint_resamples(sets, classes, n_boot, seed)
    return [{k.split(":", 1)[1]: v for k, v in r.star.items() if k.split(":", 1)[0] == key} for key in keys]


def bootstrap_draws(y_true: ArrayLike, scores: ArrayLike, patient_ids: ArrayLike, classes: Sequence[str],
                    threshold: float | None = None, n_boot: int = 1000, seed: int = 0) -> dict[str, np.ndarray]:
    """Every metric on ``n_boot`` patient resamples of one test set (:func:`joint_bootstrap_draws` of one set)."""
    return joint_bootstrap_draws([ScoredSet(y_true, scores, patient_ids, threshold)], classes, n_boot, seed)[0]


def metric_differences(a: ScoredSet, b: ScoredSet, classes: Sequence[str], metrics: Sequence[str] | None = None,
                       n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> dict[str, dict[str, Any]]:
    """``metric(a) - metric(b)`` with a paired patient-bootstrap interval, for each metric.

    Point estimates from :func:`compute_metrics`. Patients are drawn once per resample from both
    sets together (:func:`joint_bootstrap_draws`), so shared patients move both metrics; the
    interval is the BCa interval of the differences (``intervals.bca_interval``, jackknife over the
    union's patients; method ``bca_paired``) and ``p_value`` the two-sided bootstrap p = min(1, 2 *
    min(share of differences <= 0, share >= 0)). Returns ``{metric: {"value", "ci95"[, "ci_flag"],
    "ci_method", "p_value"}}``; value and bounds None where undefined. ``metrics``: default every metric.
    """
    pa = compute_metrics(a.y, a.scores, classes, a.threshold)
    pb = compute_metrics(b.y, b.scores, classes, b.threshold)
    names = list(metrics or [n for n in pa if n != "confusion_matrix"])
    out = {}
    try:
        r, _ = _joint_resamples([a, b], classes, n_boot, seed, names)
    except ValueError:                            # fewer than two patients
        r = None
    for name in names:
        diff = pa[name] - pb[name]
        entry = {"value": nan_to_none(diff), "ci95": [None, None], "ci_method": "bca_paired", "p_value": None}
        if r is not None and math.isfinite(diff):
            d = r.star[f"0:{name}"] - r.star[f"1:{name}"]
            jack = r.jack[f"0:{name}"] - r.jack[f"1:{name}"]
            d = d[np.isfinite(d)]
            if len(d) >= 2:
                p = min(1.0, 2.0 * min(float(np.mean(d <= 0)), float(np.mean(d >= 0))))
                ci = I.bca_interval(r.theta[f"0:{name}"] - r.theta[f"1:{name}"], d, jack, level)
                entry = {**metric_entry(diff, ci, method="bca_paired"), "p_value": p}
        out[name] = entry
    return out


def evaluate(y_true: ArrayLike, scores: ArrayLike, patient_ids: ArrayLike, classes: Sequence[str],
             threshold: float | None = None, n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Test-set report: point estimates with 95 % intervals that hold near 0 and 1 (:func:`metric_intervals`).

    Returns ``{"n_test", "n_patients", "classes", "threshold", "confusion_matrix",
    "metrics": {name: {"value", "ci95": [lo, hi], "ci_method"[, "ci_flag"]}}, "degenerate",
    "n_bootstrap", "bootstrap_seed"}``; undefined values / bounds are ``None``. ``threshold`` is
    None for multi-class. ``degenerate``: :func:`degenerate_reason` of the scores (None for a model
    that ranks images); only a degenerate model's zero-width intervals are flagged ``zero_width``.
    """
    y, s, k = prepare_scores(y_true, scores, classes)
    if k == 2:
        threshold = _check_threshold(threshold)
    else:
        threshold = None
    degenerate = degenerate_reason(s)
    if degenerate and len(s):
        # Differences below degenerate_reason's tolerance are float noise, not a ranking: score every image
        # as the first, so the AUC is 0.5 with its zero-width flag rather than an interval around noise
        # (exactly constant scores are left as they were).
        s = np.broadcast_to(s[:1], s.shape).copy()
    point = compute_metrics(y, s, classes, threshold)
    _, m = patient_codes(patient_ids, len(y))
    cis = metric_intervals(y, s, _predict(s, k, threshold), patient_ids, classes, n_boot=n_boot, seed=seed)
    metrics = {name: metric_entry(point[name], cis[name][0], method=cis[name][1], degenerate=bool(degenerate))
               for name in point if name != "confusion_matrix"}
    return {"n_test": int(len(y)), "n_patients": int(m), "classes": list(classes),
            "threshold": threshold, "confusion_matrix": point["confusion_matrix"],
            "metrics": metrics, "degenerate": degenerate, "n_bootstrap": int(n_boot), "bootstrap_seed": int(seed)}


def paired_auc_test(y_true: ArrayLike, scores_a: ArrayLike, scores_b: ArrayLike,
                    patient_ids: ArrayLike, n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Paired patient cluster bootstrap of AUC(a) - AUC(b) on the same test images.

    Both models are scored on the same resampled patients (:func:`metric_differences`). Binary: ROC
    AUC of the positive-class score; (n, k>=3) scores: one-vs-rest macro AUC. Returns
    ``{"auc_a", "auc_b", "diff", "ci95": [lo, hi], "ci_method", "p_value"}`` (and ``ci_flag`` when
    flagged) with the two-sided bootstrap p = min(1, 2 * min(frac(diff* <= 0), frac(diff* >= 0))).
    """
    a, b = np.asarray(scores_a, dtype=float), np.asarray(scores_b, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"score shapes differ: {a.shape} vs {b.shape}")
    multi = a.ndim == 2 and a.shape[1] >= 3
    classes = tuple(f"c{i}" for i in range(a.shape[1])) if multi else ("negative", "positive")
    metric = auc_name(classes)
    t = None if multi else 0.5                    # decisions do not enter an AUC
    d = metric_differences(ScoredSet(y_true, a, patient_ids, t), ScoredSet(y_true, b, patient_ids, t),
                           classes, [metric], n_boot=n_boot, seed=seed)[metric]
    auc_a = compute_metrics(y_true, a, classes, t)[metric]
    auc_b = compute_metrics(y_true, b, classes, t)[metric]
    out = {"auc_a": nan_to_none(auc_a), "auc_b": nan_to_none(auc_b), "diff": d["value"], "ci95": d["ci95"],
           "ci_method": d["ci_method"], "p_value": d["p_value"]}
    if d.get("ci_flag"):
        out["ci_flag"] = d["ci_flag"]
    return out


# --------------------------------------------------------------------------- reports

def classification_report_df(y_true: ArrayLike, y_pred: ArrayLike,
                             classes: Sequence[str]) -> pd.DataFrame:
    """sklearn's classification report (precision, recall, f1, support) as a DataFrame."""
    y = _encode_labels(y_true, classes)
    p = _encode_labels(y_pred, classes)
    rep = classification_report(y, p, labels=list(range(len(classes))),
                                target_names=list(classes), output_dict=True, zero_division=np.nan)
    return pd.DataFrame(rep).T
