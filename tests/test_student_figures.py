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


# --------------------------------------------------------------------------- round three (issue 19)

def test_every_score_distribution_panel_has_its_own_x_numbers():
    """08's grid: a shared x axis left the numbers on the bottom row only."""
    from cxrbook.external.plots import plot_score_distributions
    rng = np.random.default_rng(0)
    groups = {f"m{i}": {"internal COVID-19": rng.uniform(0, 1, 5), "external adult normals (NIH)": rng.uniform(0, 1, 5)}
              for i in range(5)}
    fig = plot_score_distributions(groups, {n: 0.5 for n in groups}, "scores")
    fig.canvas.draw()
    shown = [ax for ax in fig.axes if ax.get_visible()]
    assert len(shown) == 5
    for ax in shown:
        labels = [t.get_text() for t in ax.get_xticklabels() if t.get_visible()]
        assert any(labels), f"panel {ax.get_title()!r} has no x-axis numbers"
        assert ax.get_xlabel()
    plt.close("all")


def test_normals_legend_sits_outside_the_panels():
    """07's first figure: a legend inside the panel covered the all-normals model's specificity near 0."""
    from types import SimpleNamespace

    from cxrbook.audit.plots import plot_normals

    def run(v):
        m = {"value": v, "ci95": [max(0.0, v - 0.1), min(1.0, v + 0.1)]}
        return SimpleNamespace(metric=lambda name: m, report={"n_test": 20})
    result = {"classes": ("normal", "covid"), "runs": {"adult": run(0.8), "all": run(0.9), "all_on_adult_test": run(0.0)},
              "difference": {m: {"value": 0.1, "ci95": [-0.1, 0.3]} for m in
                             ("accuracy", "sensitivity", "specificity", "roc_auc", "f1")}}
    fig = plot_normals(result, "normals")
    fig.canvas.draw()
    assert all(ax.get_legend() is None for ax in fig.axes), "a legend inside a panel can hide points"
    assert len(fig.legends) == 1
    legend_box = fig.legends[0].get_window_extent()
    for ax in fig.axes:
        assert not legend_box.overlaps(ax.get_window_extent()), "the figure legend overlaps a panel"
    plt.close("all")


def _groups_table(rows: list[tuple]) -> pd.DataFrame:
    """(model, attribute, group, n_normal, n_covid, n_pediatric, status, auc, lo, hi) -> a groups table."""
    out = []
    for model, attr, group, n_normal, n_covid, n_ped, status, auc, lo, hi in rows:
        out.append({"model": model, "attribute": attr, "group": group, "n_images": n_normal + n_covid,
                    "n_patients": n_normal + n_covid, "n_normal": n_normal, "n_covid": n_covid,
                    "n_pediatric": n_ped, "status": status, "roc_auc": auc, "roc_auc_lo": lo, "roc_auc_hi": hi})
    return pd.DataFrame(out)


def test_groups_overview_is_one_figure_across_models():
    from cxrbook.audit.plots import plot_groups
    t = _groups_table([(m, "view", g, 5, 10, ped, "ok", 0.9, 0.8, 1.0) for m in ("a", "b", "flat")
                       for g, ped in (("AP", 5), ("PA", 0))]
                      + [(m, "sex", "M", 0, 12, 0, "too few (one class only)", None, None, None) for m in ("a", "b", "flat")])
    fig = plot_groups(t, "groups", left_out={"flat": "constant scores"})
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["a", "b"]   # the left-out model is not drawn
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert labels[0].startswith("view=AP") and "5 pediatric" in labels[0] and "0 pediatric" in labels[1]
    texts = [t.get_text() for t in ax.texts]
    assert texts.count("too few") == 2 and texts.count("0.90\n[0.80, 1.00]") == 4
    assert "flat: constant scores" in ax.get_title()
    plt.close("all")
