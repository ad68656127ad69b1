"""Notebook 07's figures: forest plots of each check, the masks, groups and reliability.

Every figure has a title, labelled axes and units; notebooks save them with
``plots.savefig``.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import pandas as pd

from .checks import CLAHE_LABELS
from .runs import MASK_LABELS, MASKS, apply_mask, auc_name, headline_metrics
from ..evaluation.records import fmt


def _plt():
    from ..plots import plt
    return plt


def _forest(ax, labels: Sequence[str], stats: Sequence[dict | None], color=None, offset: float = 0.0,
            label: str | None = None):
    ys = np.arange(len(labels)) + offset
    for y, st in zip(ys, stats):
        if not st or st.get("value") is None or not np.isfinite(st["value"]):
            continue
        v = st["value"]
        ci = st.get("ci95") or [None, None]
        lo, hi = ci if all(b is not None and np.isfinite(b) for b in ci) else (v, v)
        ax.errorbar(v, y, xerr=[[v - lo], [hi - v]], fmt="o", color=color, capsize=3, label=label)
        label = None  # one legend entry per series
    ax.set_yticks(np.arange(len(labels)))
    ax.set_yticklabels(labels)
    ax.set_ylim(len(labels) - 0.5, -0.5)  # first label on top


def plot_normals(result: dict, title: str):
    """Headline metrics with 95 % intervals for each normals protocol (forest plot)."""
    plt = _plt()
    classes = result["classes"]
    names = list(headline_metrics(classes))
    fig, (ax, ax_d) = plt.subplots(1, 2, figsize=(12, 4.2), gridspec_kw={"width_ratios": [3, 2]})
    runs = list(result["runs"].items())
    for j, (key, run) in enumerate(runs):
        off = (j - (len(runs) - 1) / 2) * 0.22
        _forest(ax, names, [run.metric(m) for m in names], color=f"C{j}", offset=off,
                label=f"{key} (test n={run.report['n_test']})")
    ax.set_xlim(-0.02, 1.02)
    ax.set_xlabel("metric value on test (fraction, 95% interval, patients as clusters)")
    ax.set_title("Same model, normals=adult vs normals=all")
    handles, labels = ax.get_legend_handles_labels()  # below the panels: inside, it hid points near 0
    fig.legend(handles, labels, fontsize="small", loc="lower center", ncol=len(labels))
    _forest(ax_d, names, [result["difference"][m] for m in names], color="k")
    ax_d.axvline(0, ls="--", c="grey", lw=1)
    ax_d.set_xlabel("difference adult - all (metric units, 95% interval)")
    ax_d.set_title("Difference (paired patient bootstrap)")
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    return fig


def plot_probe(probe: dict, title: str):
    """Confusion matrix of the source probe (rows: true source, columns: predicted)."""
    plt = _plt()
    cm = np.asarray(probe["confusion_matrix"])
    src = probe["sources"]
    fig, ax = plt.subplots(figsize=(1.5 * len(src) + 3, 1.3 * len(src) + 2))
    im = ax.imshow(cm, cmap="Blues")
    for i in range(len(src)):
        for j in range(len(src)):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center",
                    color="white" if cm[i, j] > cm.max() / 2 else "black")
    ax.set_xticks(range(len(src)))
    ax.set_xticklabels(src)
    ax.set_yticks(range(len(src)))
    ax.set_yticklabels(src)
    ax.set_xlabel("predicted source collection")
    ax.set_ylabel("true source collection")
    fig.colorbar(im, ax=ax, label="test images")
    ax.set_title(f"{title}\naccuracy {fmt(probe['accuracy'])} vs chance {probe['chance_majority_share']:.3f}",
                 fontsize=10)
    fig.tight_layout()
    return fig


def plot_masking(result: dict, example: np.ndarray, title: str, fill: float | None = None):
    """Example image under each mask, and AUC with 95 % intervals per variant."""
    plt = _plt()
    auc = result["auc_metric"]
    fig, axes = plt.subplots(1, 4, figsize=(13, 3.6), gridspec_kw={"width_ratios": [1, 1, 1, 1.5]})
    ex = np.asarray(example)[None]
    for ax, mask in zip(axes[:3], MASKS):
        ax.imshow(apply_mask(ex, mask, result["fraction"], fill)[0, ..., 0], cmap="gray", vmin=0, vmax=255)
        ax.grid(False)
        ax.set_title(MASK_LABELS[mask], fontsize=9)
        ax.set_xlabel("x (pixels)")
        ax.set_ylabel("y (pixels)")
    labels = [MASK_LABELS[m] for m in MASKS]
    _forest(axes[3], labels, [result["runs"][m].metric(auc) for m in MASKS], color="C0")
    axes[3].axvline(0.5, ls="--", c="grey", lw=1, label="chance")
    axes[3].set_xlim(0, 1.02)
    axes[3].set_xlabel("test AUC (95% interval, patients as clusters)")
    axes[3].set_title("Test AUC per variant")
    axes[3].legend(fontsize="small", loc="lower left")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_groups(table: pd.DataFrame, title: str, left_out: dict[str, str] | None = None):
    """One figure across models: test AUC (95% interval) inside each view and sex group, one row per model.

    Columns are the groups with their counts; a group without both classes (or too small) is a grey
    column saying why. Colour: blue above 0.5, red below (chance is white). Models in ``left_out``
    (e.g. constant scores) are not drawn; the subtitle names them.
    """
    plt = _plt()
    left_out = dict(left_out or {})
    t = table[~table["model"].isin(left_out)]
    auc = "macro_auc" if "macro_auc" in t.columns else "roc_auc"
    models = list(dict.fromkeys(t["model"]))
    keys = list(dict.fromkeys(zip(t["attribute"], t["group"])))
    first = t.drop_duplicates(["attribute", "group"]).set_index(["attribute", "group"])
    classes = [c for c in t.columns if c.startswith("n_") and c not in ("n_images", "n_patients", "n_pediatric")]
    grid = np.full((len(models), len(keys)), np.nan)
    fig, ax = plt.subplots(figsize=(1.55 * len(keys) + 2.4, 0.5 * len(models) + 2.4))
    for j, key in enumerate(keys):
        for i, m in enumerate(models):
            r = t[(t["model"] == m) & (t["attribute"] == key[0]) & (t["group"] == key[1])]
            if len(r) and r.iloc[0]["status"] == "ok":
                r = r.iloc[0]
                grid[i, j] = r[auc]
                lo, hi = r[f"{auc}_lo"], r[f"{auc}_hi"]
                ci = "" if pd.isna(lo) or pd.isna(hi) else f"\n[{lo:.2f}, {hi:.2f}]"
                ax.text(j, i, f"{r[auc]:.2f}{ci}", ha="center", va="center", fontsize=7.5,
                        color="white" if abs(r[auc] - 0.5) > 0.3 else "black")
            elif len(r):
                ax.text(j, i, "too few", ha="center", va="center", fontsize=7, color="0.4")
    ax.imshow(np.where(np.isnan(grid), 0.5, grid), cmap="RdBu", vmin=0, vmax=1, aspect="auto")
    for j, key in enumerate(keys):
        if np.isnan(grid[:, j]).all():
            ax.axvspan(j - 0.5, j + 0.5, color="0.88")
    labels = []
    for key in keys:
        r = first.loc[key]
        counts = " / ".join(f"{int(r[c])} {c[2:]}" for c in classes)
        ped = f"\n{int(r['n_pediatric'])} pediatric" if "n_pediatric" in r.index and pd.notna(r["n_pediatric"]) else ""
        labels.append(f"{key[0]}={key[1]}\n{counts}{ped}")
    ax.set_xticks(range(len(keys)))
    ax.set_xticklabels(labels, fontsize=8)
    ax.set_yticks(range(len(models)))
    ax.set_yticklabels(models, fontsize=8)
    ax.grid(False)
    ax.set_xlabel("test images in the group (counts by class; 'too few': no AUC, e.g. one class only)")
    ax.set_ylabel("model")
    sub = ("cell: test AUC [95% interval, patients as clusters]; blue above chance (0.5), red below"
           + (f"\nleft out (as in notebook 06): {', '.join(f'{n}: {why}' for n, why in left_out.items())}"
              if left_out else ""))
    ax.set_title(sub, fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_calibration(cal: dict, title: str):
    """Reliability diagram of every binary model (one panel each), Brier and ECE in the panel titles."""
    plt = _plt()
    items = list(cal["models"].items())
    n = max(1, len(items))
    cols = min(3, n)
    rows = int(math.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 4.0 * rows), squeeze=False)
    for ax in axes.ravel()[len(items):]:
        ax.axis("off")
    for ax, (name, c) in zip(axes.ravel(), items):
        rc = c["reliability"]
        ok = rc["count"] > 0
        ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=1, label="perfect calibration")
        ax.plot(rc.loc[ok, "mean_predicted"], rc.loc[ok, "observed_fraction"], "o-", label="model")
        for _, r in rc[ok].iterrows():
            ax.annotate(str(int(r["count"])), (r["mean_predicted"], r["observed_fraction"]), fontsize=7,
                        xytext=(3, 3), textcoords="offset points")
        ax.set_xlim(-0.02, 1.02)
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("mean predicted probability (fraction)")
        ax.set_ylabel("observed fraction positive")
        ax.set_title(f"{name} (n={c['n_test']})\nBrier {fmt(c['brier'])}\nECE {fmt(c['ece'])}", fontsize=8)
        ax.legend(fontsize="x-small", loc="upper left")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_clahe(result: dict, title: str, index: int = 0):
    """One test image without and with CLAHE; the paired AUC difference per model; the source-probe
    accuracy on plain and CLAHE images."""
    plt = _plt()
    fig, axes = plt.subplots(1, 4, figsize=(15, 3.8), gridspec_kw={"width_ratios": [1, 1, 1.5, 1.5]})
    for ax, v in zip(axes[:2], ("plain", "clahe")):
        ax.imshow(result["data"][v].test.x[index][..., 0], cmap="gray", vmin=0, vmax=255)
        ax.grid(False)
        ax.set_title(CLAHE_LABELS[v], fontsize=9)
        ax.set_xlabel("x (pixels)")
        ax.set_ylabel("y (pixels)")
    archs = list(result["paired"])
    _forest(axes[2], archs, [{"value": p["diff"], "ci95": p["ci95"]} for p in result["paired"].values()],
            color="k")
    axes[2].axvline(0, ls="--", c="grey", lw=1)
    axes[2].set(xlabel="AUC with - without CLAHE (95% paired CI)",
                title="Same model and test images: AUC difference")
    for j, v in enumerate(("plain", "clahe")):
        _forest(axes[3], ["source probe"], [result["probe"][v]["accuracy"]], color=f"C{j}",
                offset=(j - 0.5) * 0.25, label=CLAHE_LABELS[v])
    axes[3].axvline(result["probe"]["plain"]["chance_majority_share"], ls="--", c="grey", lw=1,
                    label="chance (majority source)")
    axes[3].set(xlim=(0, 1.02), xlabel="probe accuracy on test (95% CI)",
                title="Can pixels tell the collection?")
    axes[3].legend(fontsize="small", loc="lower left")
    fig.suptitle(title)
    fig.tight_layout()
    return fig
