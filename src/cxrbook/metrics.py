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
error, 10 equal-width bins on the positive-class score).
Three-class (softmax ``(n, 3)``): ``accuracy, macro_auc`` (one-vs-rest, unweighted
mean), ``macro_f1``, ``sensitivity_<class>``, ``auc_<class>`` (one-vs-rest) and
``brier`` (multi-class Brier: mean over images of the sum over classes of the
squared difference to the one-hot label; range [0, 2]).
Undefined metrics (PPV with no positive prediction, AUC with one class present,
...) are NaN in :func:`compute_metrics` and ``null`` in a report / record.

Schema of ``outputs/metrics/<model>.json`` (written by :func:`save_metrics`)
---------------------------------------------------------------------------
JSON object, keys sorted, indent 2, NaN/inf written as ``null``::

    {
      "model":            str,   # model name, also the file stem
      "task":             str,   # "covid_vs_normal" | "three_class" | ...
      "weights":          str,   # e.g. "imagenet", "random", "torchxrayvision"
      "classes":          [str, ...],          # model-output order; binary: [negative, positive]
      "n_test":           int,   # test images
      "n_patients":       int,   # distinct test patients (bootstrap clusters)
      "threshold":        float | null,        # binary: in [0, 1]; multi-class: null (argmax)
      "threshold_rule":   str,   # "youden" | "fixed" | "argmax" | free text
      "confusion_matrix": [[int, ...], ...],   # rows = true, cols = predicted, class order
      "metrics": {           # every metric, same shape:
        "<name>": {"value": float | null, "ci95": [lo, hi],  # lo/hi float or null
                   "ci_flag": str}    # only when flagged: "excludes_point" | "zero_width"
      },
      "extra": {...}         # optional free dict: image_size, profile, normals, seed,
                             # n_bootstrap, bootstrap_seed, split sizes, ...
    }

Invariants checked by :func:`validate_record`: all keys above except ``extra``
present; ``confusion_matrix`` is len(classes) x len(classes) and sums to
``n_test``; accuracy equals trace/n_test; a binary record has a finite threshold
in [0, 1]; every metric has ``value`` and a two-element ``ci95`` with
``lo <= hi``; a ``ci_flag`` matches what :func:`interval_flag` says of the interval.

Intervals are the bootstrap percentiles as they are: never widened to include
the point estimate. An interval that excludes its point estimate (a skewed,
discrete bootstrap distribution) or has zero width (a degenerate one, e.g. a
model whose scores are constant) is flagged with ``ci_flag``, not hidden.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
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
    precision_recall_curve,
    precision_score,
    recall_score,
    roc_auc_score,
    roc_curve,
)

__all__ = [
    "BINARY_METRICS", "THRESHOLD_RULES", "REQUIRED_KEYS",
    "choose_threshold", "predict_labels", "compute_metrics", "bootstrap_ci", "evaluate",
    "metrics_record", "save_metrics", "load_metrics", "validate_record", "paired_auc_test",
    "reliability_curve", "plot_confusion", "plot_roc_pr", "plot_reliability", "plot_roc_overlay",
    "classification_report_df", "metrics_table", "table_markdown",
]

BINARY_METRICS = ("accuracy", "sensitivity", "specificity", "ppv", "npv", "f1",
                  "roc_auc", "pr_auc", "brier", "ece")
THRESHOLD_RULES = ("youden", "fixed")
REQUIRED_KEYS = ("model", "task", "weights", "n_test", "n_patients", "threshold",
                 "threshold_rule", "confusion_matrix", "classes", "metrics")
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


def _prepare(y_true: ArrayLike, scores: ArrayLike, classes: Sequence[str]
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


def _nan_to_none(x: Any) -> float | None:
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


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


def _ece(y: np.ndarray, s: np.ndarray, n_bins: int = ECE_BINS) -> float:
    bins = _bin_index(s, n_bins)
    total = 0.0
    for b in range(n_bins):
        m = bins == b
        if m.any():
            total += abs(s[m].sum() - y[m].sum())
    return float(total / len(y))


def _bin_index(s: np.ndarray, n_bins: int) -> np.ndarray:
    """Equal-width bins on [0, 1]; 1.0 falls in the last bin."""
    return np.clip(np.floor(np.asarray(s) * n_bins).astype(int), 0, n_bins - 1)


def compute_metrics(y_true: ArrayLike, scores: ArrayLike, classes: Sequence[str],
                    threshold: float | None = None) -> dict[str, Any]:
    """Point estimates (see module docstring for the list) plus ``confusion_matrix``.

    Binary: ``scores`` is the positive-class sigmoid, ``threshold`` required.
    Multi-class: ``scores`` is (n, k) softmax, labels by argmax, ``threshold`` ignored.
    Undefined metrics are NaN. Accuracy is ``trace(confusion) / n``.
    """
    y, s, k = _prepare(y_true, scores, classes)
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
            ece=_ece(y, s),
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
        bins = _bin_index(s, ECE_BINS)
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


def _cluster_weights(codes: np.ndarray, m: int, n_boot: int, rng: np.random.Generator):
    """Yield (B, n) image weights: each row = how often each image's patient was drawn."""
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


def _patient_codes(patient_ids: ArrayLike, n: int) -> tuple[np.ndarray, int]:
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


CI_FLAGS = {"excludes_point": "the bootstrap interval excludes its point estimate (skewed, discrete resamples): "
                              "read the point estimate with caution",
            "zero_width": "zero-width interval: every resample gave the same value (constant scores, "
                          "or too few cases of a class)"}
CI_MARKS = {"excludes_point": "†", "zero_width": "‡"}


def interval_flag(value: float | None, ci: Sequence[float | None]) -> str | None:
    """``"zero_width"`` / ``"excludes_point"`` when a bootstrap interval is suspect, else None.

    A zero-width interval says every resample gave the same number (a degenerate
    model or metric); one that excludes its point estimate comes from a skewed,
    discrete bootstrap distribution. Both are reported, never repaired.
    """
    if value is None or ci is None or len(ci) != 2 or any(b is None for b in ci):
        return None
    v, lo, hi = float(value), float(ci[0]), float(ci[1])
    if not all(math.isfinite(x) for x in (v, lo, hi)):
        return None
    if hi - lo <= 1e-12:
        return "zero_width"
    if not lo - 1e-9 <= v <= hi + 1e-9:
        return "excludes_point"
    return None


def metric_entry(value: Any, ci: Sequence[Any]) -> dict[str, Any]:
    """``{"value", "ci95"}`` with None for NaN, plus ``ci_flag`` when :func:`interval_flag` flags it."""
    entry = {"value": _nan_to_none(value), "ci95": [_nan_to_none(b) for b in ci]}
    flag = interval_flag(entry["value"], entry["ci95"])
    if flag:
        entry["ci_flag"] = flag
    return entry


# --------------------------------------------------------------------------- bootstrap

def bootstrap_ci(y_true: ArrayLike, scores: ArrayLike, patient_ids: ArrayLike,
                 classes: Sequence[str], threshold: float | None = None, n_boot: int = 1000,
                 seed: int = 0, alpha: float = 0.05) -> dict[str, list[float]]:
    """Percentile ``1 - alpha`` intervals of every metric from a patient cluster bootstrap.

    Each resample draws the test PATIENTS with replacement (all images of a
    drawn patient come along, a patient drawn twice counts twice); the
    threshold is held fixed. Resamples where a metric is undefined are skipped
    for that metric ([nan, nan] if fewer than two remain). Vectorized: each
    resample is a row of integer image weights. The percentiles are returned as
    they are; :func:`interval_flag` tells when one misses its point estimate.
    """
    if n_boot < 1:
        raise ValueError("n_boot must be >= 1")
    y, s, k = _prepare(y_true, scores, classes)
    pred = _predict(s, k, threshold)
    codes, m = _patient_codes(patient_ids, len(y))
    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {}
    for W in _cluster_weights(codes, m, n_boot, rng):
        for name, vals in _weighted_metrics(W, y, s, pred, classes).items():
            parts.setdefault(name, []).append(vals)
    return {name: _percentile(np.concatenate(v), alpha) for name, v in parts.items()}


def evaluate(y_true: ArrayLike, scores: ArrayLike, patient_ids: ArrayLike, classes: Sequence[str],
             threshold: float | None = None, n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Test-set report: point estimates with patient-bootstrap 95 % intervals.

    Returns ``{"n_test", "n_patients", "classes", "threshold", "confusion_matrix",
    "metrics": {name: {"value", "ci95": [lo, hi]}}, "n_bootstrap", "bootstrap_seed"}``;
    undefined values / bounds are ``None``. ``threshold`` is None for multi-class.
    """
    y, s, k = _prepare(y_true, scores, classes)
    if k == 2:
        threshold = _check_threshold(threshold)
    else:
        threshold = None
    point = compute_metrics(y, s, classes, threshold)
    cis = bootstrap_ci(y, s, patient_ids, classes, threshold, n_boot=n_boot, seed=seed)
    _, m = _patient_codes(patient_ids, len(y))
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
    y, sa, k = _prepare(y_true, a, classes)
    _, sb, _ = _prepare(y, b, classes)
    metric = "macro_auc" if multi else "roc_auc"

    def aucs(W: np.ndarray, s: np.ndarray) -> np.ndarray:
        if not multi:
            return _weighted_auc_ap(W, y == 1, s, with_ap=False)[0]
        return np.mean([_weighted_auc_ap(W, y == i, s[:, i], with_ap=False)[0]
                        for i in range(k)], axis=0)

    # point estimates from sklearn (the weighted AUC equals them at unit weights)
    auc_a = compute_metrics(y, sa, classes, 0.5)[metric]
    auc_b = compute_metrics(y, sb, classes, 0.5)[metric]
    codes, m = _patient_codes(patient_ids, len(y))
    rng = np.random.default_rng(seed)
    diffs = np.concatenate([aucs(W, sa) - aucs(W, sb)
                            for W in _cluster_weights(codes, m, n_boot, rng)])
    diffs = diffs[np.isfinite(diffs)]
    diff = auc_a - auc_b
    if len(diffs) == 0 or not math.isfinite(diff):
        return {"auc_a": _nan_to_none(auc_a), "auc_b": _nan_to_none(auc_b),
                "diff": _nan_to_none(diff), "ci95": [None, None], "p_value": None}
    p = min(1.0, 2.0 * min(np.mean(diffs <= 0), np.mean(diffs >= 0)))
    ci = _percentile(diffs, 0.05)
    return {"auc_a": auc_a, "auc_b": auc_b, "diff": float(diff), "ci95": ci, "p_value": float(p),
            "ci_flag": interval_flag(diff, ci)}


# --------------------------------------------------------------------------- records

def metrics_record(report: Mapping[str, Any], model: str, task: str, weights: str,
                   extra: dict | None = None, *, threshold_rule: str | None = None) -> dict[str, Any]:
    """The ``outputs/metrics/<model>.json`` record (schema in the module docstring).

    ``threshold_rule``: explicit argument, else ``report["threshold_rule"]``, else
    ``extra["threshold_rule"]``, else "argmax" (multi-class) / "unspecified" (binary).
    ``n_bootstrap`` / ``bootstrap_seed`` of the report are copied into ``extra``.
    """
    extra = dict(extra or {})
    rule = threshold_rule or report.get("threshold_rule") or extra.pop("threshold_rule", None)
    extra.pop("threshold_rule", None)
    if rule is None:
        rule = "argmax" if len(report["classes"]) > 2 else "unspecified"
    for key in ("n_bootstrap", "bootstrap_seed"):
        if key in report:
            extra.setdefault(key, report[key])
    record = {"model": str(model), "task": str(task), "weights": str(weights),
              "n_test": int(report["n_test"]), "n_patients": int(report["n_patients"]),
              "threshold": _nan_to_none(report["threshold"]), "threshold_rule": str(rule),
              "confusion_matrix": [[int(v) for v in row] for row in report["confusion_matrix"]],
              "classes": [str(c) for c in report["classes"]],
              "metrics": {name: metric_entry(m.get("value"), m.get("ci95", [None, None]))
                          for name, m in report["metrics"].items()},
              "extra": extra}
    validate_record(record)
    return record


def _is_num(x: Any) -> bool:
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, bool)


def validate_record(record: Mapping[str, Any]) -> None:
    """Raise ValueError naming the first missing key or malformed metric of a record."""
    if not isinstance(record, Mapping):
        raise ValueError("record must be a dict")
    for key in REQUIRED_KEYS:
        if key not in record:
            raise ValueError(f"metrics record lacks required key {key!r}")
    classes = record["classes"]
    if not isinstance(classes, Sequence) or len(classes) < 2:
        raise ValueError("'classes' must list at least two class names")
    k, n = len(classes), record["n_test"]
    if not _is_num(n) or n <= 0 or not _is_num(record["n_patients"]) or record["n_patients"] <= 0:
        raise ValueError("'n_test' and 'n_patients' must be positive integers")
    cm = np.asarray(record["confusion_matrix"])
    if cm.shape != (k, k):
        raise ValueError(f"'confusion_matrix' must be {k}x{k}, got shape {cm.shape}")
    if int(cm.sum()) != int(n):
        raise ValueError(f"'confusion_matrix' sums to {int(cm.sum())}, not n_test={n}")
    t = record["threshold"]
    if k == 2 and not (_is_num(t) and 0.0 <= float(t) <= 1.0):
        raise ValueError(f"binary record needs a finite 'threshold' in [0, 1], got {t!r}")
    if not isinstance(record["threshold_rule"], str) or not record["threshold_rule"]:
        raise ValueError("'threshold_rule' must be a non-empty string")
    metrics = record["metrics"]
    if not isinstance(metrics, Mapping) or not metrics:
        raise ValueError("'metrics' must be a non-empty dict")
    for name, m in metrics.items():
        if not isinstance(m, Mapping) or "value" not in m or "ci95" not in m:
            raise ValueError(f"metric {name!r} must be {{'value': x, 'ci95': [lo, hi]}}")
        v, ci = m["value"], m["ci95"]
        if v is not None and not _is_num(v):
            raise ValueError(f"metric {name!r} has a non-numeric value {v!r}")
        if not isinstance(ci, Sequence) or isinstance(ci, str) or len(ci) != 2 or \
                any(b is not None and not _is_num(b) for b in ci):
            raise ValueError(f"metric {name!r} has a malformed ci95 {ci!r}")
        if all(b is not None for b in ci) and float(ci[0]) > float(ci[1]) + 1e-12:
            raise ValueError(f"metric {name!r} has ci95 {ci!r} with lo > hi")
        if m.get("ci_flag") != interval_flag(v, ci):
            raise ValueError(f"metric {name!r}: ci_flag {m.get('ci_flag')!r} but its interval says "
                             f"{interval_flag(v, ci)!r} (value {v}, ci95 {ci})")
    if "accuracy" not in metrics:
        raise ValueError("'metrics' lacks 'accuracy'")
    acc = metrics["accuracy"]["value"]
    if acc is not None and abs(float(acc) - np.trace(cm) / n) > 1e-9:
        raise ValueError(f"metric 'accuracy' = {acc} but trace(confusion)/n_test = {np.trace(cm) / n}")
    if "extra" in record and not isinstance(record["extra"], Mapping):
        raise ValueError("'extra' must be a dict")


def to_jsonable(x: Any) -> Any:
    """Plain JSON types: numpy scalars/arrays converted, NaN/inf -> None, DataFrames -> records."""
    if isinstance(x, pd.DataFrame):
        return to_jsonable(x.to_dict(orient="records"))
    if isinstance(x, Mapping):
        return {str(k): to_jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple, np.ndarray)):
        return [to_jsonable(v) for v in (x.tolist() if isinstance(x, np.ndarray) else x)]
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, (int, np.integer)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return _nan_to_none(x)
    if isinstance(x, Path):
        return str(x)
    if x is pd.NA or x is pd.NaT:
        return None
    return x


def save_metrics(record: Mapping[str, Any], path: str | Path) -> Path:
    """Validate and write ``record`` as JSON (sorted keys, indent 2, NaN -> null)."""
    clean = to_jsonable(record)
    validate_record(clean)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(clean, sort_keys=True, indent=2, allow_nan=False) + "\n",
                    encoding="utf-8")
    return path


def load_metrics(path: str | Path) -> dict[str, Any]:
    """Read and validate a metrics record."""
    record = json.loads(Path(path).read_text(encoding="utf-8"))
    validate_record(record)
    return record


# --------------------------------------------------------------------------- tables

def classification_report_df(y_true: ArrayLike, y_pred: ArrayLike,
                             classes: Sequence[str]) -> pd.DataFrame:
    """sklearn's classification report (precision, recall, f1, support) as a DataFrame."""
    y = _encode_labels(y_true, classes)
    p = _encode_labels(y_pred, classes)
    rep = classification_report(y, p, labels=list(range(len(classes))),
                                target_names=list(classes), output_dict=True, zero_division=np.nan)
    return pd.DataFrame(rep).T


def fmt(m: Mapping[str, Any] | None, digits: int = 3, flags: set | None = None) -> str:
    """``0.912 [0.871, 0.947]`` from ``{"value", "ci95"}``; ``n/a`` when undefined.

    A flagged interval (``ci_flag``, or what :func:`interval_flag` says) gets its
    ``CI_MARKS`` symbol; ``flags`` collects the flags used, for footnotes.
    """
    if not m or m.get("value") is None or not math.isfinite(float(m["value"])):
        return "n/a"
    v = f"{float(m['value']):.{digits}f}"
    ci = list(m.get("ci95") or [None, None])
    if any(b is None or not math.isfinite(float(b)) for b in ci):
        return v
    flag = m.get("ci_flag") or interval_flag(m["value"], ci)
    if flag and flags is not None:
        flags.add(flag)
    mark = CI_MARKS.get(flag, "*") if flag else ""
    return f"{v} [{float(ci[0]):.{digits}f}, {float(ci[1]):.{digits}f}]{mark}"


def ci_footnotes(flags: set) -> list[str]:
    """One footnote line per interval flag used (symbol, then what it means)."""
    return [f"{CI_MARKS.get(f, '*')} {CI_FLAGS.get(f, f'interval flagged {f!r}')}." for f in sorted(flags)]


def metrics_table(records: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """One row per record: model, task, weights, n_test, threshold and every metric
    formatted ``0.912 [0.871, 0.947]`` (``n/a`` where undefined or absent)."""
    names: list[str] = []
    for r in records:
        names += [m for m in r["metrics"] if m not in names]
    rows = []
    for r in records:
        row = {"model": r["model"], "task": r["task"], "weights": r["weights"],
               "n_test": r["n_test"],
               "threshold": None if r.get("threshold") is None else round(float(r["threshold"]), 3)}
        row.update({m: fmt(r["metrics"].get(m)) for m in names})
        rows.append(row)
    return pd.DataFrame(rows, columns=["model", "task", "weights", "n_test", "threshold", *names])


def table_markdown(df: pd.DataFrame) -> str:
    """GitHub-flavoured markdown table of ``df`` (no index, no ``tabulate`` needed)."""
    def cell(x: Any) -> str:
        if x is None or (isinstance(x, float) and math.isnan(x)):
            return ""
        return str(x).replace("|", "\\|").replace("\n", " ")
    header = "| " + " | ".join(cell(c) for c in df.columns) + " |"
    sep = "|" + "|".join("---" for _ in df.columns) + "|"
    body = ["| " + " | ".join(cell(v) for v in row) + " |"
            for row in df.itertuples(index=False, name=None)]
    return "\n".join([header, sep, *body]) + "\n"


# --------------------------------------------------------------------------- calibration

def reliability_curve(y_true: ArrayLike, scores: ArrayLike, n_bins: int = 10) -> pd.DataFrame:
    """Binary reliability table over ``n_bins`` equal-width bins of the positive score.

    Columns: ``bin_mid, mean_predicted, observed_fraction, count`` (one row per bin,
    NaN means for empty bins). ECE = sum(count * |mean_predicted - observed|) / n.
    """
    y = _encode_labels(y_true, ("negative", "positive"))
    s = _binary_scores(scores)
    bins = _bin_index(s, n_bins)
    df = pd.DataFrame({"bin": bins, "s": s, "y": y})
    g = df.groupby("bin").agg(mean_predicted=("s", "mean"), observed_fraction=("y", "mean"),
                              count=("y", "size"))
    g = g.reindex(range(n_bins))
    g["count"] = g["count"].fillna(0).astype(int)
    g.insert(0, "bin_mid", (np.arange(n_bins) + 0.5) / n_bins)
    return g.reset_index(drop=True)


# --------------------------------------------------------------------------- plots

def _plt():
    import matplotlib.pyplot as plt
    return plt


def plot_confusion(cm: ArrayLike, classes: Sequence[str], title: str):
    """Confusion-matrix heatmap (counts and row percentages); rows true, columns predicted."""
    import seaborn as sns
    cm = np.asarray(cm, dtype=int)
    rows = cm.sum(axis=1, keepdims=True)
    pct = np.divide(cm, rows, out=np.zeros(cm.shape), where=rows > 0) * 100
    annot = np.array([[f"{c}\n{p:.0f}%" for c, p in zip(r, q)] for r, q in zip(cm, pct)])
    fig, ax = _plt().subplots(figsize=(1.6 * len(classes) + 2.5, 1.4 * len(classes) + 2))
    sns.heatmap(cm, annot=annot, fmt="", cmap="Blues", cbar=True, ax=ax,
                xticklabels=list(classes), yticklabels=list(classes), square=True,
                cbar_kws={"label": "Images"})
    ax.set_xlabel("Predicted class")
    ax.set_ylabel("True class")
    ax.set_title(title)
    fig.tight_layout()
    return fig


def _label_roc_pr(ax_roc, ax_pr) -> None:
    ax_roc.plot([0, 1], [0, 1], ls="--", c="grey", lw=1, label="Chance")
    ax_roc.set_xlabel("False positive rate (1 - specificity)")
    ax_roc.set_ylabel("True positive rate (sensitivity)")
    ax_roc.set_title("ROC curve")
    ax_pr.set_xlabel("Recall (sensitivity)")
    ax_pr.set_ylabel("Precision (PPV)")
    ax_pr.set_title("Precision-recall curve")
    for ax in (ax_roc, ax_pr):
        ax.set_xlim(-0.01, 1.01)
        ax.set_ylim(-0.01, 1.01)
        ax.legend(loc="lower right" if ax is ax_roc else "lower left", fontsize="small")


def plot_roc_pr(y_true: ArrayLike, scores: ArrayLike, classes: Sequence[str], title: str):
    """ROC (left) and precision-recall (right) curves; multi-class: one-vs-rest per class."""
    y, s, k = _prepare(y_true, scores, classes)
    fig, (ax_roc, ax_pr) = _plt().subplots(1, 2, figsize=(11, 4.8))
    curves = [(classes[1], y == 1, s)] if k == 2 else \
        [(c, y == i, s[:, i]) for i, c in enumerate(classes)]
    for name, yi, si in curves:
        if yi.all() or not yi.any():
            continue
        fpr, tpr, _ = roc_curve(yi, si)
        prec, rec, _ = precision_recall_curve(yi, si)
        ax_roc.plot(fpr, tpr, label=f"{name} (AUC {roc_auc_score(yi, si):.3f})")
        line, = ax_pr.step(rec, prec, where="post",
                           label=f"{name} (AP {average_precision_score(yi, si):.3f})")
        ax_pr.axhline(yi.mean(), ls=":", lw=1, c=line.get_color())
    _label_roc_pr(ax_roc, ax_pr)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_reliability(y_true: ArrayLike, scores: ArrayLike, title: str, n_bins: int = 10):
    """Reliability diagram (top) and score histogram by true class (bottom); binary only."""
    y = _encode_labels(y_true, ("negative", "positive"))
    s = _binary_scores(scores)
    rc = reliability_curve(y, s, n_bins)
    fig, (ax, ax_h) = _plt().subplots(2, 1, figsize=(5.5, 6.5), sharex=True,
                                      gridspec_kw={"height_ratios": [3, 1]})
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=1, label="Perfect calibration")
    ok = rc["count"] > 0
    ax.plot(rc.loc[ok, "mean_predicted"], rc.loc[ok, "observed_fraction"], "o-",
            label=f"Model (ECE {_ece(y, s, n_bins):.3f})")
    ax.set_ylabel("Observed fraction positive")
    ax.set_xlabel("Mean predicted probability")
    ax.set_ylim(-0.02, 1.02)
    ax.legend(loc="upper left", fontsize="small")
    ax.set_title(title)
    edges = np.linspace(0, 1, n_bins + 1)
    ax_h.hist([s[y == 0], s[y == 1]], bins=edges, stacked=True, label=["negative", "positive"])
    ax_h.set_xlabel("Predicted probability of the positive class")
    ax_h.set_ylabel("Images")
    ax_h.legend(fontsize="small")
    fig.tight_layout()
    return fig


def plot_roc_overlay(curves: Mapping[str, tuple[ArrayLike, ArrayLike]], title: str):
    """ROC curves of several binary models on one axes: ``{name: (y_true, scores)}``."""
    fig, ax = _plt().subplots(figsize=(5.8, 5.4))
    for name, (yt, sc) in curves.items():
        y = _encode_labels(yt, ("negative", "positive"))
        s = _binary_scores(sc)
        if y.all() or not y.any():
            continue
        fpr, tpr, _ = roc_curve(y, s)
        ax.plot(fpr, tpr, label=f"{name} (AUC {roc_auc_score(y, s):.3f})")
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=1, label="Chance")
    ax.set_xlabel("False positive rate (1 - specificity)")
    ax.set_ylabel("True positive rate (sensitivity)")
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize="small")
    fig.tight_layout()
    return fig
