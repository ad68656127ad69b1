"""Students' fixes for notebooks 01-04 (issue 11): blank bars named, flat tick labels, whole epochs,
no PosixPath echoed above every figure."""

from __future__ import annotations

import numpy as np
import pandas as pd

from cxrbook.data import eda
from cxrbook.plots import plt, savefig


def test_blank_and_missing_values_are_named_in_bar_charts_and_heatmaps():
    values = pd.Series(["COVID-19", "", "  ", None, "COVID-19"])
    fig = eda.bar_counts(values, "Raw finding", "finding")
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert sorted(labels) == ["(blank)", "COVID-19"]
    df = pd.DataFrame({"view": ["PA", "", None, "AP Supine"], "label": ["covid", "normal", "covid", ""]})
    fig = eda.crosstab_heatmap(df, "view", "label", "Images by view and label")
    ax = fig.axes[0]
    assert "(blank)" in [t.get_text() for t in ax.get_yticklabels()]
    assert "(blank)" in [t.get_text() for t in ax.get_xticklabels()]
    plt.close("all")


def test_heatmap_row_labels_stay_horizontal_when_crowded():
    views = ["PA", "AP", "AP Supine", "L", "Axial", "Coronal", "(blank)"] * 3
    df = pd.DataFrame({"view": views, "label": ["covid", "normal", "unknown"] * 7})
    ax = eda.crosstab_heatmap(df, "view", "label", "Images by view and label").axes[0]
    assert all(t.get_rotation() == 0 for t in ax.get_yticklabels())
    plt.close("all")


def test_learning_curves_have_whole_epoch_ticks():
    from cxrbook.models.training import plot_history
    fig = plot_history({"loss": [1.0, 0.8], "val_loss": [1.1, 0.9], "auc": [0.5, 0.6], "val_auc": [0.5, 0.7]},
                       "curves")
    fig.canvas.draw()
    for ax in fig.axes:
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert ticks and all(float(t).is_integer() for t in ticks), ticks
    plt.close("all")


def test_savefig_result_is_a_path_that_notebooks_do_not_echo(tmp_path):
    from IPython.core.formatters import DisplayFormatter
    fig, ax = plt.subplots()
    ax.set_title("t")
    path = savefig(fig, tmp_path, "x")
    assert path.is_file() and path.name == "x.png"
    data, _ = DisplayFormatter().format(path)
    assert data == {}  # IPython publishes nothing for it: no "Out: PosixPath(...)" above the figure
    plt.close("all")


def test_describe_counts_are_integers_in_split_order():
    """04-06 print this table before training: train/val/test, whole numbers, classes in task order."""
    from pathlib import Path

    from cxrbook.evaluation import experiment as E
    from cxrbook.data.pipeline import CachedData, SplitArrays

    def arrays(labels):
        n = len(labels)
        return SplitArrays(x=np.zeros((n, 4, 4), np.uint8), labels=np.array(labels),
                           patient_id=np.array([f"p{i}" for i in range(n)]),
                           image_path=np.array([f"i{i}" for i in range(n)]), source=np.array(["s"] * n))
    data = CachedData(arrays(["covid", "normal", "normal"]), arrays(["covid", "normal"]),
                      arrays(["covid", "covid", "normal"]), "k", Path("."), False, 4, False)
    table = E.describe(data, ("normal", "covid"))
    assert list(table.columns) == [(v, s) for v in ("images", "patients") for s in ("train", "val", "test")]
    assert list(table.index) == ["normal", "covid"]
    assert all(str(t).startswith("int") for t in table.dtypes)
    assert table.loc["covid", ("images", "test")] == 2
