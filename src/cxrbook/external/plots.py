"""Notebook 08's figures: internal vs external forest plot and score distributions by group.

Figures only; they read an ``external.json`` record (:mod:`cxrbook.external.scores`) and
the scores of :func:`cxrbook.external.scores.score_models`; ``plots.savefig`` saves them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from .scores import Scored, covid_scores


# --------------------------------------------------------------------------- figures

def _plt():
    from ..plots import plt
    return plt


def _point(ax, m: dict, y: float, color: str, label: str | None, marker: str = "o") -> None:
    if not m or m.get("value") is None:
        return
    v = m["value"]
    lo, hi = m.get("ci95") or [None, None]
    lo, hi = (v, v) if lo is None or hi is None else (lo, hi)
    ax.errorbar(v, y, xerr=[[max(v - lo, 0)], [max(hi - v, 0)]], fmt=marker, color=color, capsize=3, label=label)


def plot_internal_vs_external(record: dict, title: str):
    """Forest plot: one row per model, sensitivity and specificity, internal vs external with 95% intervals."""
    plt = _plt()
    entries = record["models"]
    names = [f"{e['display_name']}, {e['image_size']} px" for e in entries]
    fig, axes = plt.subplots(1, 2, figsize=(13, 0.55 * len(entries) + 2.6), sharey=True)
    c = record["collections"]
    where = {"sensitivity": f"Hannover COVID-19, {c['hannover']['n_images']} images",
             "specificity": f"NIH adult normals, {c['nih']['n_images']} images ({c['nih']['image_side_px']} px)"}
    for ax, metric in zip(axes, ("sensitivity", "specificity")):
        for i, e in enumerate(entries):
            _point(ax, e["internal"][metric], i - 0.15, "C0", "internal test split" if i == 0 else None)
            _point(ax, e["external"][metric], i + 0.15, "C3", "external hospital" if i == 0 else None, "s")
        ax.set_yticks(range(len(entries)))
        ax.set_yticklabels(names)
        ax.set_ylim(len(entries) - 0.5, -0.5)
        ax.set_xlim(-0.02, 1.02)
        ax.set_xlabel(f"{metric} (fraction)")
        ax.set_title(f"{metric.capitalize()}\nexternal: {where[metric]}", fontsize="medium")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=2, fontsize="small")
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    return fig


def internal_groups(paths, name: str, classes: Sequence[str]) -> dict[str, np.ndarray]:
    """Internal test P(COVID-19) of ``name`` by group: COVID-19, adult normals, pediatric normals
    (``splits.pediatric_normal``)."""
    from ..data.splits import pediatric_normal
    from ..evaluation.experiment import load_scores
    rows, s = load_scores(paths, name, classes)
    s = covid_scores(s, classes)
    splits = pd.read_csv(paths.splits_csv) if Path(paths.splits_csv).is_file() else pd.DataFrame()
    age = splits.drop_duplicates("image_path").set_index("image_path")["age_group"] \
        if "age_group" in splits.columns else pd.Series(dtype=str)
    normal = (rows["label"] == "normal").to_numpy()
    ped = pediatric_normal(rows["label"], rows["source"], rows["image_path"].map(age))
    return {"internal COVID-19": s[(rows["label"] == "covid").to_numpy()],
            "internal adult normals": s[normal & ~ped],
            "internal pediatric normals": s[ped]}


def score_groups(paths, scored: Scored, name: str, classes: Sequence[str]) -> dict[str, np.ndarray]:
    """Internal test groups of ``name`` plus NIH adult normals and Hannover COVID-19 (external)."""
    rows, s = scored.scores[name]
    s = covid_scores(s, classes)
    hann = (rows["collection"] == "hannover").to_numpy()
    return {**internal_groups(paths, name, classes), "external adult normals (NIH)": s[~hann],
            "external COVID-19 (Hannover)": s[hann]}


def plot_score_distributions(groups_by_model: dict[str, dict[str, np.ndarray]], thresholds: dict[str, float | None],
                             title: str, ncols: int = 2):
    """Score of each group on one axis (one panel per model), with the model's stored threshold."""
    plt = _plt()
    names = list(groups_by_model)
    ncols = min(ncols, len(names)) or 1
    nrows = -(-len(names) // ncols) or 1
    # no sharex: every panel keeps its own x-axis numbers (shared axes label only the bottom row)
    fig, axes = plt.subplots(nrows, ncols, figsize=(7 * ncols, 3.4 * nrows), squeeze=False)
    rng = np.random.default_rng(0)
    for ax, name in zip(axes.ravel(), names):
        groups = groups_by_model[name]
        labels = list(groups)
        for i, g in enumerate(labels):
            v = np.asarray(groups[g], dtype=float)
            color = "C3" if "COVID" in g else ("C1" if "pediatric" in g else "C0")
            if len(v):
                ax.scatter(v, i + rng.uniform(-0.25, 0.25, len(v)), s=6, alpha=0.35, color=color)
                ax.plot([np.median(v)] * 2, [i - 0.35, i + 0.35], color="k", lw=2)
        t = thresholds.get(name)   # None: a multi-class model (argmax), no line on P(COVID-19)
        if t is not None:
            ax.axvline(t, ls="--", c="grey", lw=1)
        ax.set_yticks(range(len(labels)))
        ax.set_yticklabels([f"{g} (n={len(groups[g])})" for g in labels], fontsize="small")
        ax.set_ylim(len(labels) - 0.5, -0.5)
        ax.set_xlim(-0.02, 1.02)
        ax.set_xlabel("score P(COVID-19) (probability, 0-1; black bar: median)")
        ax.set_title(f"{name} (dashed: threshold {t:.2f}, from validation)" if t is not None else
                     f"{name} (argmax over its classes: no threshold on P(COVID-19))", fontsize="medium")
    for ax in axes.ravel()[len(names):]:
        ax.set_visible(False)
    fig.suptitle(title)
    fig.tight_layout()
    return fig
