"""Charts of the metadata (notebook 01) and of split composition (notebook 03)."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd


def _blank_labelled(values: pd.Series) -> pd.Series:
    """Strings, with NaN and empty/whitespace-only values spelled '(blank)' (a bar needs a name)."""
    text = values.fillna("").astype(str)
    return text.mask(text.str.strip() == "", "(blank)")


def bar_counts(values: pd.Series, title: str, xlabel: str, top: int | None = 25,
               order: list | None = None) -> plt.Figure:
    """Horizontal bar chart of value counts (missing and empty values shown as '(blank)')."""
    counts = _blank_labelled(values).value_counts()
    if order is not None:
        counts = counts.reindex([o for o in order if o in counts.index])
    elif top:
        counts = counts.head(top)
    fig, ax = plt.subplots(figsize=(7, 0.32 * len(counts) + 1.2))
    ax.barh(counts.index[::-1], counts.values[::-1], color="#4c72b0")
    for y, v in enumerate(counts.values[::-1]):
        ax.text(v, y, f" {v}", va="center", fontsize=8)
    ax.set_title(title)
    ax.set_xlabel("images (count)")
    ax.set_ylabel(xlabel)
    return fig


def age_histogram(df: pd.DataFrame, title: str = "Patient age at imaging, 10-year bins") -> plt.Figure:
    """Images per 10-year age bin, stacked by source (pediatric collection: 1-5 y, age not listed)."""
    bins = np.arange(0, 101, 10)
    fig, ax = plt.subplots(figsize=(7, 4))
    data = [df.loc[df["source"] == s, "age"].dropna() for s in sorted(df["source"].unique())]
    labels = [f"{s} (n={len(d)})" for s, d in zip(sorted(df["source"].unique()), data)]
    ax.hist(data, bins=bins, stacked=True, label=labels)
    n_ped = int((df["source"] == "pediatric").sum())
    ax.set_title(title + (f"\n(+{n_ped} pediatric normals aged 1-5 y, exact age not published)" if n_ped else ""))
    ax.set_xlabel("age (years)")
    ax.set_ylabel("images (count)")
    ax.set_xticks(bins)
    ax.legend(title="source")
    return fig


def images_per_patient_plot(df: pd.DataFrame) -> plt.Figure:
    """How many images each patient contributes: why splits must be by patient."""
    per = df.groupby(["source", "patient_id"]).size().rename("n").reset_index()
    fig, ax = plt.subplots(figsize=(7, 4))
    top = int(per["n"].max())
    for s, g in per.groupby("source"):
        counts = g["n"].value_counts().reindex(range(1, top + 1), fill_value=0)
        ax.plot(counts.index, counts.values, marker="o", label=f"{s} ({len(g)} patients)")
    ax.set_yscale("log")
    ax.set_title("Images per patient (several follow-ups per patient: split by patient)")
    ax.set_xlabel("images of one patient (count)")
    ax.set_ylabel("patients (count, log scale)")
    ax.legend()
    return fig


def crosstab_heatmap(df: pd.DataFrame, rows: str, cols: str, title: str,
                     row_label: str | None = None, col_label: str | None = None) -> plt.Figure:
    """Annotated heatmap of image counts for two categorical columns."""
    import seaborn as sns
    table = pd.crosstab(_blank_labelled(df[rows]), _blank_labelled(df[cols]))
    fig, ax = plt.subplots(figsize=(1.2 * table.shape[1] + 3, 0.45 * table.shape[0] + 1.8))
    sns.heatmap(table, annot=True, fmt="d", cmap="Blues", cbar_kws={"label": "images (count)"}, ax=ax,
                yticklabels=True, xticklabels=True)
    ax.tick_params(axis="y", labelrotation=0)  # seaborn turns crowded labels vertical: they then overlap
    ax.tick_params(axis="x", labelrotation=0)
    ax.set_title(title)
    ax.set_xlabel(col_label or cols)
    ax.set_ylabel(row_label or rows)
    return fig


def split_composition_plot(splits: pd.DataFrame, title: str) -> plt.Figure:
    """Images per split, by label (bars) and by source (hatched stacks)."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 4), sharey=True)
    order = ["train", "val", "test"]
    for ax, col in zip(axes, ["label", "source"]):
        table = pd.crosstab(splits["split"], splits[col]).reindex(order)
        table.plot(kind="bar", stacked=True, ax=ax, rot=0)
        ax.set_title(f"by {col}")
        ax.set_xlabel("split")
        ax.set_ylabel("images (count)")
        ax.legend(title=col)
    fig.suptitle(title)
    return fig
