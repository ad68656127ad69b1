"""Evaluation: thresholds, metrics, patient-level bootstrap intervals, the metrics record.

Why this module exists: the published work reported 92.9 % "accuracy" from an
argmax over a *single* sigmoid column (every image predicted as one class),
split images rather than patients and gave no intervals. Here:

* binary models output ONE sigmoid score per image = P(class index 1); labels
  come from ``score >= threshold`` with the threshold chosen on the
  **validation** split (:func:`choose_threshold`) and then held fixed on test.
  A single column is never argmax-ed (:func:`predict_labels`).
* every metric carries a 95 % percentile interval from a **cluster bootstrap
  over patients** (all images of a drawn patient come along), so several
  images of one patient do not count as independent evidence.
* accuracy is always ``trace(confusion) / n_test``.

Metrics
-------
Binary (classes ``(negative, positive)``): ``accuracy, sensitivity, specificity,
ppv, npv, f1, roc_auc, pr_auc`` (average precision), ``brier`` (mean squared
error of the positive-class probability) and ``ece`` (expected calibration
error, 10 equal-width bins on the positive-class score, the bins of scikit-learn's
``calibration_curve``).
Three-class (softmax ``(n, 3)``): ``accuracy, macro_auc`` (one-vs-rest, unweighted
mean), ``macro_f1``, ``sensitivity_<class>``, ``auc_<class>`` (one-vs-rest) and
``brier`` (multi-class Brier: mean over images of the sum over classes of the
squared difference to the one-hot label; range [0, 2]).
Undefined metrics (PPV with no positive prediction, AUC with one class present,
...) are NaN in :func:`compute_metrics` and ``null`` in a report / record.

The record these reports become (schema, validation, JSON files, tables) lives in
:mod:`cxrbook.evaluation.records`; the figures (ROC/PR, reliability, confusion) in
:mod:`cxrbook.evaluation.metric_plots`.

Why one module of ~500 lines: every point metric (sklearn, unit weights) has a
vectorised, patient-weighted twin that the bootstrap evaluates on thousands of
resamples at once; keeping the two side by side is what stops their
definitions from drifting apart.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
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
from .records import interval_flag, metric_entry

__all__ = [
    "BINARY_METRICS", "THRESHOLD_RULES", "ECE_BINS",
    "choose_threshold", "predict_labels", "compute_metrics", "bootstrap_draws", "bootstrap_ci",
    "bootstrap_mean", "evaluate", "paired_auc_test", "classification_report_df",
    "prepare_scores", "bin_index", "expected_calibration_error", "cluster_weights", "patient_codes",
]

BINARY_METRICS = ("accuracy", "sensitivity", "specificity", "ppv", "npv", "f1",
                  "roc_auc", "pr_auc", "brier", "ece")
THRESHOLD_RULES = ("youden", "fixed")
ECE_BINS = 10
_CHUNK_ELEMENTS = 2_000_000  # bootstrap weight-matrix elements per chunk (memory bound)


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

    * ``"youden"``: among the ROC thresholds (the distinct validation scores,
      ``roc_curve(..., drop_intermediate=False)``) take the one maximizing
      Youden's J = sensitivity + specificity - 1; ties go to the threshold
      closest to 0.5. sklearn's leading ``inf`` threshold is never returned; the
      result is clipped to [0, 1]. Images are positive when ``score >= t``.
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
    fpr, tpr, thr = roc_curve(y, s, drop_intermediate=False)
    finite = np.isfinite(thr)
    fpr, tpr, thr = fpr[finite], tpr[finite], thr[finite]
    j = tpr - fpr
    best = np.flatnonzero(np.isclose(j, j.max(), rtol=0.0, atol=1e-12))
    t = thr[best[np.argmin(np.abs(thr[best] - 0.5))]]
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
    patient was drawn (the patient cluster bootstrap of this module; the box metrics of notebook 09 use it too)."""
    n = len(codes)
    chunk = max(1, min(n_boot, _CHUNK_ELEMENTS // max(n, m, 1)))
    done = 0
    while done < n_boot:
        b = min(chunk, n_boot - done)
        draws = rng.integers(0, m, size=(b, m))
        flat = (np.arange(b)[:, None] * m + draws).ravel()
        counts = np.bincount(flat, minlength=b * m).reshape(b, m).astype(float)
        yield counts[:, codes]
        done += b


def patient_codes(patient_ids: ArrayLike, n: int) -> tuple[np.ndarray, int]:
    """(integer code of each image's patient, number of patients); ValueError unless one id per image."""
    ids = np.asarray(patient_ids)
    if ids.ndim != 1 or len(ids) != n:
        raise ValueError(f"patient_ids must be 1-D with one entry per image ({n}), got {ids.shape}")
    codes, uniques = pd.factorize(pd.Series(ids).astype(str), sort=True)
    return codes.astype(int), len(uniques)


def _percentile(values: np.ndarray, alpha: float) -> list[float]:
    v = values[np.isfinite(values)]                       # skip resamples where undefined
    if len(v) < 2:
        return [float("nan"), float("nan")]
    lo, hi = np.percentile(v, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return [float(lo), float(hi)]


# --------------------------------------------------------------------------- bootstrap

def bootstrap_draws(y_true: ArrayLike, scores: ArrayLike, patient_ids: ArrayLike, classes: Sequence[str],
                    threshold: float | None = None, n_boot: int = 1000, seed: int = 0) -> dict[str, np.ndarray]:
    """Every metric on ``n_boot`` patient-cluster resamples of one test set: ``{name: (n_boot,) values}``.

    Each resample draws the test PATIENTS with replacement (all images of a
    drawn patient come along, a patient drawn twice counts twice); the
    threshold is held fixed. A metric undefined in a resample is NaN there.
    Vectorized: each resample is a row of integer image weights. The one
    bootstrap loop of the package: :func:`bootstrap_ci` and the audit's
    differences both use it.
    """
    if n_boot < 1:
        raise ValueError("n_boot must be >= 1")
    y, s, k = prepare_scores(y_true, scores, classes)
    pred = _predict(s, k, threshold)
    codes, m = patient_codes(patient_ids, len(y))
    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {}
    for W in cluster_weights(codes, m, n_boot, rng):
        for name, vals in _weighted_metrics(W, y, s, pred, classes).items():
            parts.setdefault(name, []).append(vals)
    return {name: np.concatenate(v) for name, v in parts.items()}


def bootstrap_ci(y_true: ArrayLike, scores: ArrayLike, patient_ids: ArrayLike,
                 classes: Sequence[str], threshold: float | None = None, n_boot: int = 1000,
                 seed: int = 0, alpha: float = 0.05) -> dict[str, list[float]]:
    """Percentile ``1 - alpha`` intervals of every metric from a patient cluster bootstrap.

    Resamples from :func:`bootstrap_draws`; resamples where a metric is
    undefined are skipped for that metric ([nan, nan] if fewer than two
    remain). The percentiles are returned as they are; :func:`interval_flag`
    tells when one misses its point estimate.
    """
    draws = bootstrap_draws(y_true, scores, patient_ids, classes, threshold, n_boot=n_boot, seed=seed)
    return {name: _percentile(v, alpha) for name, v in draws.items()}


def bootstrap_mean(values: ArrayLike, patient_ids: ArrayLike, n_boot: int = 1000, seed: int = 0,
                   alpha: float = 0.05) -> list[float]:
    """Percentile interval of the image-weighted mean of ``values`` (e.g. 0/1 correct) over patient resamples."""
    values = np.asarray(values, dtype=float)
    codes, m = patient_codes(patient_ids, len(values))
    rng = np.random.default_rng(seed)
    draws = np.concatenate([(W @ values) / W.sum(axis=1) for W in cluster_weights(codes, m, n_boot, rng)])
    return _percentile(draws, alpha)


def evaluate(y_true: ArrayLike, scores: ArrayLike, patient_ids: ArrayLike, classes: Sequence[str],
             threshold: float | None = None, n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Test-set report: point estimates with patient-bootstrap 95 % intervals.

    Returns ``{"n_test", "n_patients", "classes", "threshold", "confusion_matrix",
    "metrics": {name: {"value", "ci95": [lo, hi]}}, "n_bootstrap", "bootstrap_seed"}``;
    undefined values / bounds are ``None``. ``threshold`` is None for multi-class.
    """
    y, s, k = prepare_scores(y_true, scores, classes)
    if k == 2:
        threshold = _check_threshold(threshold)
    else:
        threshold = None
    point = compute_metrics(y, s, classes, threshold)
    cis = bootstrap_ci(y, s, patient_ids, classes, threshold, n_boot=n_boot, seed=seed)
    _, m = patient_codes(patient_ids, len(y))
    metrics = {name: metric_entry(point[name], cis[name]) for name in point if name != "confusion_matrix"}
    return {"n_test": int(len(y)), "n_patients": int(m), "classes": list(classes),
            "threshold": threshold, "confusion_matrix": point["confusion_matrix"],
            "metrics": metrics, "n_bootstrap": int(n_boot), "bootstrap_seed": int(seed)}


def paired_auc_test(y_true: ArrayLike, scores_a: ArrayLike, scores_b: ArrayLike,
                    patient_ids: ArrayLike, n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Paired patient cluster bootstrap of AUC(a) - AUC(b) on the same test images.

    Both models are scored on the same resampled patients. Binary: ROC AUC of the
    positive-class score; (n, k>=3) scores: one-vs-rest macro AUC. Returns
    ``{"auc_a", "auc_b", "diff", "ci95": [lo, hi], "p_value"}`` with the two-sided
    bootstrap p = min(1, 2 * min(frac(diff* <= 0), frac(diff* >= 0))).
    """
    a, b = np.asarray(scores_a, dtype=float), np.asarray(scores_b, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"score shapes differ: {a.shape} vs {b.shape}")
    multi = a.ndim == 2 and a.shape[1] >= 3
    classes = tuple(f"c{i}" for i in range(a.shape[1])) if multi else ("negative", "positive")
    y, sa, k = prepare_scores(y_true, a, classes)
    _, sb, _ = prepare_scores(y, b, classes)
    metric = "macro_auc" if multi else "roc_auc"

    def aucs(W: np.ndarray, s: np.ndarray) -> np.ndarray:
        if not multi:
            return _weighted_auc_ap(W, y == 1, s, with_ap=False)[0]
        return np.mean([_weighted_auc_ap(W, y == i, s[:, i], with_ap=False)[0]
                        for i in range(k)], axis=0)

    # point estimates from sklearn (the weighted AUC equals them at unit weights)
    auc_a = compute_metrics(y, sa, classes, 0.5)[metric]
    auc_b = compute_metrics(y, sb, classes, 0.5)[metric]
    codes, m = patient_codes(patient_ids, len(y))
    rng = np.random.default_rng(seed)
    diffs = np.concatenate([aucs(W, sa) - aucs(W, sb)
                            for W in cluster_weights(codes, m, n_boot, rng)])
    diffs = diffs[np.isfinite(diffs)]
    diff = auc_a - auc_b
    if len(diffs) == 0 or not math.isfinite(diff):
        return {"auc_a": nan_to_none(auc_a), "auc_b": nan_to_none(auc_b),
                "diff": nan_to_none(diff), "ci95": [None, None], "p_value": None}
    p = min(1.0, 2.0 * min(np.mean(diffs <= 0), np.mean(diffs >= 0)))
    ci = _percentile(diffs, 0.05)
    return {"auc_a": auc_a, "auc_b": auc_b, "diff": float(diff), "ci95": ci, "p_value": float(p),
            "ci_flag": interval_flag(diff, ci)}


# --------------------------------------------------------------------------- reports

def classification_report_df(y_true: ArrayLike, y_pred: ArrayLike,
                             classes: Sequence[str]) -> pd.DataFrame:
    """sklearn's classification report (precision, recall, f1, support) as a DataFrame."""
    y = _encode_labels(y_true, classes)
    p = _encode_labels(y_pred, classes)
    rep = classification_report(y, p, labels=list(range(len(classes))),
                                target_names=list(classes), output_dict=True, zero_division=np.nan)
    return pd.DataFrame(rep).T
