"""Figures of an evaluation: confusion matrix, ROC / PR curves, reliability diagram, ROC overlay.

Every figure has a title, labelled axes and units; notebooks save them with
``plots.savefig``. The numbers behind them come from :mod:`cxrbook.evaluation.metrics`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike
from sklearn.calibration import calibration_curve
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve

from .metrics import bin_index, expected_calibration_error, prepare_scores


# --------------------------------------------------------------------------- calibration

def reliability_curve(y_true: ArrayLike, scores: ArrayLike, n_bins: int = 10) -> pd.DataFrame:
    """scikit-learn's ``calibration_curve`` (equal-width bins) as a table that keeps every bin and its count.

    Columns: ``bin_mid, mean_predicted, observed_fraction, count`` (one row per bin,
    NaN means for empty bins; the count is what the audit's diagram writes beside each
    point). The bins are :func:`cxrbook.evaluation.metrics.bin_index`, so
    ECE = sum(count * |mean_predicted - observed_fraction|) / n.
    """
    y, s, _ = prepare_scores(y_true, scores, ("negative", "positive"))
    count = np.bincount(bin_index(s, n_bins), minlength=n_bins)
    observed, predicted = calibration_curve(y, s, n_bins=n_bins, strategy="uniform")
    table = pd.DataFrame({"bin_mid": (np.arange(n_bins) + 0.5) / n_bins, "mean_predicted": np.nan,
                          "observed_fraction": np.nan, "count": count})
    table.loc[count > 0, "mean_predicted"] = predicted
    table.loc[count > 0, "observed_fraction"] = observed
    return table


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
    y, s, k = prepare_scores(y_true, scores, classes)
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
    y, s, _ = prepare_scores(y_true, scores, ("negative", "positive"))
    observed, predicted = calibration_curve(y, s, n_bins=n_bins, strategy="uniform")  # non-empty bins
    fig, (ax, ax_h) = _plt().subplots(2, 1, figsize=(5.5, 6.5), sharex=True,
                                      gridspec_kw={"height_ratios": [3, 1]})
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=1, label="Perfect calibration")
    ax.plot(predicted, observed, "o-",
            label=f"Model (ECE {expected_calibration_error(y, s, n_bins):.3f})")
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
        y, s, _ = prepare_scores(yt, sc, ("negative", "positive"))
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
