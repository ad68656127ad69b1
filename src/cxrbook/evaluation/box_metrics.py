"""Box metrics for the lung detector: IoU per lung, COCO-style AP, the mean-box baseline, patient bootstraps.

Every box here is ``rel_xyxy`` (fractions of the image's width and height; names as in
``keras.utils.bounding_boxes``). Each image has exactly one true box per lung and the
detector reports at most one box per lung (its most confident), so the detection
metrics reduce to simple, vectorised forms:

* ``iou``: intersection over union of two boxes (0 when they do not overlap).
* ``average_precision``: COCO's AP for one class at one IoU threshold: the
  predictions ranked by confidence, a prediction is a true positive when its IoU with
  the image's true box reaches the threshold, precision made non-increasing from the
  right, then averaged over COCO's 101 recall points 0, 0.01, ..., 1 (0 where a recall
  is never reached). Images without a prediction count as missed true boxes. Tied
  confidences form ONE operating point (as scikit-learn's ranking metrics), so the
  result never depends on the order of the images; pycocotools walks ties one by one
  in input order instead, and the two agree when no scores tie.
* ``mAP@0.5`` = mean over the two lungs of AP at IoU 0.5; ``mAP@0.5:0.95`` = mean over
  lungs and the ten thresholds 0.50, 0.55, ..., 0.95 (COCO's primary metric).
* the **mean box**: each lung's average ``rel_xyxy`` box over the TRAINING images,
  predicted for every image with one constant confidence; the baseline a detector
  must beat.

Intervals: ``hit50_<k>`` (a proportion of images) gets the Wilson interval on the
design-effect-adjusted count the coverage study chose for proportions
(``intervals.proportion_ci``); IoU and AP, which that study did not cover, the patient cluster
bootstrap of :mod:`cxrbook.evaluation.metrics` (``cluster_weights``: all images of a drawn
patient come along), percentiles as they are, flagged by ``records.flag_of``. Paired
differences (detector minus mean box) are computed on the same resamples. Each entry names
its ``ci_method``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .intervals import patient_counts, proportion_ci
from .metrics import cluster_weights, patient_codes
from .records import metric_entry

COCO_RECALLS = np.linspace(0.0, 1.0, 101)
COCO_IOUS = np.round(np.arange(0.5, 0.951, 0.05), 2)


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of ``rel_xyxy`` (or any xyxy) boxes, elementwise over the leading axes (broadcast)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    iw = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0.0, None)
    ih = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0.0, None)
    inter = iw * ih
    area = (lambda z: np.clip(z[..., 2] - z[..., 0], 0.0, None) * np.clip(z[..., 3] - z[..., 1], 0.0, None))
    union = area(a) + area(b) - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def mean_box(train_boxes: np.ndarray) -> np.ndarray:
    """The baseline: each lung's average box over the training images, ``(n, lungs, 4)`` -> ``(lungs, 4)``."""
    b = np.asarray(train_boxes, dtype=np.float64)
    if b.ndim != 3 or b.shape[-1] != 4 or len(b) == 0:
        raise ValueError(f"training boxes must have shape (n>0, lungs, 4), got {b.shape}")
    return b.mean(axis=0)


def average_precision(ious: np.ndarray, scores: np.ndarray, threshold: float,
                      weights: np.ndarray | None = None) -> np.ndarray:
    """COCO 101-point AP of one class at one IoU ``threshold`` (see module docstring).

    ``ious``/``scores``: ``(n,)`` per image, the prediction's IoU with the true box and its
    confidence; a NaN score means "no prediction" (a missed true box). ``weights``:
    ``(B, n)`` image weights (bootstrap counts) or None (all 1). Returns ``(B,)`` or a scalar.
    """
    ious, scores = np.asarray(ious, dtype=np.float64), np.asarray(scores, dtype=np.float64)
    single = weights is None
    W = np.ones((1, len(ious))) if single else np.atleast_2d(np.asarray(weights, dtype=np.float64))
    if ious.shape != scores.shape or W.shape[1] != len(ious):
        raise ValueError(f"ious {ious.shape}, scores {scores.shape} and weights {W.shape} do not match")
    n_gt = W.sum(axis=1)
    has = np.isfinite(scores)
    order = np.flatnonzero(has)[np.argsort(-scores[has], kind="stable")]
    if len(order) == 0:
        ap = np.where(n_gt > 0, 0.0, np.nan)
        return float(ap[0]) if single else ap
    s = scores[order]
    tp = (ious[order] >= threshold).astype(np.float64)
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])      # tied scores: one operating point
    Wo = W[:, order]
    cum_tp = np.cumsum(np.add.reduceat(Wo * tp, starts, axis=1), axis=1)
    cum_pred = np.cumsum(np.add.reduceat(Wo, starts, axis=1), axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(cum_pred > 0, cum_tp / np.where(cum_pred > 0, cum_pred, 1.0), 0.0)
        recall = cum_tp / np.where(n_gt > 0, n_gt, 1.0)[:, None]
    envelope = np.maximum.accumulate(precision[:, ::-1], axis=1)[:, ::-1]
    ap = np.zeros(len(W))
    for r in COCO_RECALLS:
        reached = recall >= r - 1e-12
        first = np.argmax(reached, axis=1)
        ap += np.where(reached.any(axis=1), envelope[np.arange(len(W)), first], 0.0)
    ap = np.where(n_gt > 0, ap / len(COCO_RECALLS), np.nan)
    return float(ap[0]) if single else ap


def detection_summary(true: np.ndarray, pred: np.ndarray, scores: np.ndarray,
                      weights: np.ndarray | None = None) -> dict[str, np.ndarray | float]:
    """Every headline number for boxes ``(n, lungs, 4)`` and confidences ``(n, lungs)`` (NaN = no box).

    ``iou_<k>``: mean IoU of lung k (a missing prediction counts IoU 0); ``iou_mean``: over
    both lungs; ``hit50_<k>``: share of lung k's boxes found with IoU >= 0.5; ``map50``,
    ``map50_95``. With ``weights`` ``(B, n)`` every value is a ``(B,)`` array.
    """
    true, pred, scores = (np.asarray(a, dtype=np.float64) for a in (true, pred, scores))
    if true.shape != pred.shape or true.shape[:2] != scores.shape:
        raise ValueError(f"true {true.shape}, pred {pred.shape} and scores {scores.shape} do not match")
    ious = np.where(np.isfinite(scores), iou(true, np.nan_to_num(pred)), 0.0)  # (n, lungs)
    single = weights is None
    W = np.ones((1, len(true))) if single else np.atleast_2d(np.asarray(weights, dtype=np.float64))
    total = W.sum(axis=1)
    out: dict[str, Any] = {}
    k = true.shape[1]
    for j in range(k):
        out[f"iou_{j}"] = (W @ ious[:, j]) / total
        out[f"hit50_{j}"] = (W @ (ious[:, j] >= 0.5)) / total
    out["iou_mean"] = np.mean([out[f"iou_{j}"] for j in range(k)], axis=0)
    aps = {t: np.mean([average_precision(ious[:, j], scores[:, j], t, W) for j in range(k)], axis=0)
           for t in COCO_IOUS}
    out["map50"] = aps[0.5]
    out["map50_95"] = np.mean(list(aps.values()), axis=0)
    if single:
        return {name: float(v[0]) for name, v in out.items()}
    return out


def _interval(draws: np.ndarray) -> list[float | None]:
    """The 2.5-97.5 percentiles of the finite resampled values, as they are ([None, None] below two)."""
    v = draws[np.isfinite(draws)]
    return [float(q) for q in np.percentile(v, [2.5, 97.5])] if len(v) > 1 else [None, None]


def _entry(value: float, draws: np.ndarray, hits: np.ndarray, key: str, patient_ids: Sequence[str]) -> dict:
    """A box metric's entry: ``hit50_<k>`` is a proportion of images, so its interval is the one the
    coverage study chose for proportions (``intervals.proportion_ci``); the others keep the percentile
    patient bootstrap (not covered by that study)."""
    if key.startswith("hit50_"):
        h = hits[:, int(key.split("_")[1])]
        return metric_entry(value, list(proportion_ci(*patient_counts(h, np.asarray(patient_ids).astype(str)))),
                            method="wilson_deff")
    return metric_entry(value, _interval(draws), method="percentile_patients")


def compare_to_mean_box(true: np.ndarray, pred: np.ndarray, scores: np.ndarray, baseline: np.ndarray,
                        patient_ids: Sequence[str], lungs: Sequence[str], n_boot: int = 1000,
                        seed: int = 0) -> dict[str, Any]:
    """Detector vs the mean box on the same held-out images, with patient-bootstrap 95 % intervals.

    ``true``/``pred`` ``(n, lungs, 4)`` rel_xyxy, ``scores`` ``(n, lungs)`` (NaN = no box),
    ``baseline`` ``(lungs, 4)`` from :func:`mean_box` on the training split. Returns
    ``{"n_images", "n_patients", "n_bootstrap", "bootstrap_seed", "detector": {metric: entry},
    "mean_box": {...}, "difference": {...}}``; each entry is ``{"value", "ci95"[, "ci_flag"]}``
    (difference = detector minus mean box, paired on the resamples). Metric names
    use the lung names (``iou_right``, ``hit50_left``, ...).
    """
    true = np.asarray(true, dtype=np.float64)
    base_pred = np.broadcast_to(np.asarray(baseline, dtype=np.float64), true.shape)
    base_scores = np.ones(true.shape[:2])
    point = {"detector": detection_summary(true, pred, scores),
             "mean_box": detection_summary(true, base_pred, base_scores)}
    draws: dict[str, dict[str, list]] = {"detector": {}, "mean_box": {}}
    if n_boot < 1:
        raise ValueError("n_boot must be >= 1")
    codes, n_patients = patient_codes(patient_ids, len(true))
    for W in cluster_weights(codes, n_patients, n_boot, np.random.default_rng(seed)):
        for name, (p, s) in {"detector": (pred, scores), "mean_box": (base_pred, base_scores)}.items():
            for metric, vals in detection_summary(true, p, s, W).items():
                draws[name].setdefault(metric, []).append(vals)
    rename = {f"{m}_{j}": f"{m}_{lung}" for j, lung in enumerate(lungs) for m in ("iou", "hit50")}
    out: dict[str, Any] = {"n_images": int(len(true)), "n_patients": int(n_patients),
                           "n_bootstrap": int(n_boot), "bootstrap_seed": int(seed), "lungs": list(lungs)}
    hits = {"detector": np.where(np.isfinite(np.asarray(scores, dtype=np.float64)),
                                 iou(true, np.nan_to_num(np.asarray(pred, dtype=np.float64))), 0.0) >= 0.5,
            "mean_box": iou(true, base_pred) >= 0.5}
    for name in ("detector", "mean_box"):
        out[name] = {rename.get(k, k): _entry(point[name][k], np.concatenate(v), hits[name], k, patient_ids)
                     for k, v in draws[name].items()}
    diff = {}
    for k in draws["detector"]:
        d = np.concatenate(draws["detector"][k]) - np.concatenate(draws["mean_box"][k])
        diff[rename.get(k, k)] = metric_entry(point["detector"][k] - point["mean_box"][k], _interval(d),
                                              method="percentile_paired")
    out["difference"] = diff
    return out
