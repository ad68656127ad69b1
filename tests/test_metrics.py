"""Tests of cxrbook.metrics: thresholds, metrics vs scikit-learn, patient bootstrap, records, plots."""

from __future__ import annotations

import json
import math
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from sklearn.metrics import (  # noqa: E402
    accuracy_score,
    average_precision_score,
    brier_score_loss,
    confusion_matrix,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
)

from cxrbook import metrics as M  # noqa: E402

BIN = ("normal", "covid")
TRI = ("covid", "other_pneumonia", "normal")


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def binary_data(n: int = 200, seed: int = 1, images_per_patient: int = 3):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    s = np.clip(rng.normal(0.35 + 0.3 * y, 0.2), 0, 1).round(2)  # ties on purpose
    pid = np.array([f"p{i // images_per_patient}" for i in range(n)])
    return y, s, pid


def three_class_data(n: int = 180, seed: int = 2):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    logits = rng.normal(size=(n, 3))
    logits[np.arange(n), y] += 1.2
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    pid = np.array([f"q{i // 2}" for i in range(n)])
    return y, p, pid


# --------------------------------------------------------------------------- threshold / labels

def test_constant_sigmoid_predicts_every_image_positive_not_argmax():
    scores = np.full((50, 1), 0.9)                 # (n, 1) sigmoid output, like model.predict
    labels = M.predict_labels(scores, threshold=0.5)
    assert labels.tolist() == [1] * 50
    assert np.argmax(scores, axis=1).tolist() == [0] * 50   # what the published work did
    assert not np.array_equal(labels, np.argmax(scores, axis=1))
    assert M.predict_labels(scores.ravel(), 0.5).tolist() == [1] * 50
    y = np.r_[np.zeros(25, int), np.ones(25, int)]
    m = M.compute_metrics(y, scores, BIN, threshold=0.5)
    assert m["confusion_matrix"] == [[0, 25], [0, 25]]
    assert m["sensitivity"] == 1.0 and m["specificity"] == 0.0
    assert math.isnan(m["npv"])                    # no negative predictions: undefined, no error


def test_predict_labels_requires_threshold_for_one_column_and_argmaxes_many():
    with pytest.raises(ValueError):
        M.predict_labels(np.array([0.2, 0.8]))
    with pytest.raises(ValueError):
        M.predict_labels(np.array([[0.2], [0.8]]))
    assert M.predict_labels(np.array([0.2, 0.5, 0.8]), 0.5).tolist() == [0, 1, 1]
    p = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]])
    assert M.predict_labels(p).tolist() == [0, 2]
    with pytest.raises(ValueError):
        M.compute_metrics([0, 1], [0.2, 0.8], BIN)        # binary without threshold


def test_choose_threshold_separable_and_finite():
    y = np.array([0, 0, 0, 0, 1, 1, 1])
    s = np.array([0.05, 0.2, 0.3, 0.41, 0.7, 0.8, 0.95])
    t = M.choose_threshold(y, s)
    assert math.isfinite(t) and 0.0 <= t <= 1.0
    pred = M.predict_labels(s, t)
    assert np.array_equal(pred, y)
    assert M.choose_threshold(y, s, rule="fixed") == 0.5
    # scores all identical: the only thresholds are inf (dropped) and the score itself
    t2 = M.choose_threshold([0, 1, 0, 1], [0.3, 0.3, 0.3, 0.3])
    assert t2 == pytest.approx(0.3)
    with pytest.raises(ValueError):
        M.choose_threshold(y, s, rule="median")


def test_choose_threshold_ties_go_to_closest_to_half():
    # Youden's J is 0.5 at both t=0.9 and t=0.2: the tie goes to 0.2 (closer to 0.5)
    y = np.array([0, 1, 0, 1])
    s = np.array([0.1, 0.2, 0.7, 0.9])
    fpr_tpr = {t: (np.mean(s[y == 0] >= t), np.mean(s[y == 1] >= t)) for t in s}
    js = {t: tp - fp for t, (fp, tp) in fpr_tpr.items()}
    best = max(js.values())
    tied = [t for t, j in js.items() if abs(j - best) < 1e-12]
    assert len(tied) > 1
    assert M.choose_threshold(y, s) == pytest.approx(min(tied, key=lambda t: abs(t - 0.5)))


# --------------------------------------------------------------------------- metrics vs sklearn

def test_binary_metrics_match_sklearn():
    y, s, _ = binary_data()
    t = 0.5
    pred = (s >= t).astype(int)
    m = M.compute_metrics(y, s, BIN, threshold=t)
    cm = confusion_matrix(y, pred, labels=[0, 1])
    tn, fp, fn, tp = cm.ravel()
    assert m["confusion_matrix"] == cm.tolist()
    assert m["accuracy"] == pytest.approx(accuracy_score(y, pred))
    assert m["sensitivity"] == pytest.approx(recall_score(y, pred))
    assert m["ppv"] == pytest.approx(precision_score(y, pred))
    assert m["f1"] == pytest.approx(f1_score(y, pred))
    assert m["roc_auc"] == pytest.approx(roc_auc_score(y, s))
    assert m["pr_auc"] == pytest.approx(average_precision_score(y, s))
    assert m["brier"] == pytest.approx(brier_score_loss(y, s))
    assert m["specificity"] == pytest.approx(tn / (tn + fp))
    assert m["npv"] == pytest.approx(tn / (tn + fn))
    assert m["accuracy"] == pytest.approx(np.trace(cm) / len(y))
    # ECE against the reliability table
    rc = M.reliability_curve(y, s)
    ok = rc["count"] > 0
    ece = (rc.loc[ok, "count"] * (rc.loc[ok, "mean_predicted"] - rc.loc[ok, "observed_fraction"]).abs()
           ).sum() / len(y)
    assert m["ece"] == pytest.approx(ece)
    assert rc["count"].sum() == len(y) and len(rc) == 10


def test_binary_accepts_class_names_and_undefined_metrics_are_nan():
    y = np.array(["normal", "covid", "covid"])
    m = M.compute_metrics(y, [0.1, 0.9, 0.6], BIN, threshold=0.5)
    assert m["accuracy"] == 1.0
    only_neg = M.compute_metrics([0, 0, 0], [0.1, 0.2, 0.3], BIN, threshold=0.5)
    for name in ("roc_auc", "pr_auc", "sensitivity", "ppv", "f1"):
        assert math.isnan(only_neg[name]), name
    assert only_neg["specificity"] == 1.0


def test_three_class_metrics_match_sklearn():
    y, p, _ = three_class_data()
    m = M.compute_metrics(y, p, TRI)
    pred = p.argmax(axis=1)
    cm = confusion_matrix(y, pred, labels=[0, 1, 2])
    assert m["confusion_matrix"] == cm.tolist()
    assert m["accuracy"] == pytest.approx(accuracy_score(y, pred))
    assert m["accuracy"] == pytest.approx(np.trace(cm) / len(y))
    assert m["macro_auc"] == pytest.approx(roc_auc_score(y, p, multi_class="ovr", average="macro"))
    assert m["macro_f1"] == pytest.approx(f1_score(y, pred, average="macro"))
    assert m["brier"] == pytest.approx(brier_score_loss(y, p, labels=[0, 1, 2]))
    rec = recall_score(y, pred, average=None)
    for i, c in enumerate(TRI):
        assert m[f"sensitivity_{c}"] == pytest.approx(rec[i])
        assert m[f"auc_{c}"] == pytest.approx(roc_auc_score(y == i, p[:, i]))


@pytest.mark.parametrize("classes", [BIN, TRI])
def test_vectorized_weighted_metrics_equal_sklearn_with_sample_weight(classes):
    y, s, _ = binary_data(120, seed=5) if len(classes) == 2 else three_class_data(120, seed=5)
    pred = M.predict_labels(s, 0.5) if len(classes) == 2 else s.argmax(axis=1)
    rng = np.random.default_rng(0)
    W = rng.integers(0, 3, size=(4, len(y))).astype(float)
    W[0] = 1.0
    vec = M._weighted_metrics(W, y, s, pred, classes)
    # unit weights == compute_metrics (which uses sklearn)
    point = M.compute_metrics(y, s, classes, 0.5)
    for name, vals in vec.items():
        assert vals[0] == pytest.approx(point[name], abs=1e-12), name
    # integer weights == sklearn with sample_weight == the repeated-image resample
    for b in range(1, 4):
        idx = np.repeat(np.arange(len(y)), W[b].astype(int))
        rep = M.compute_metrics(y[idx], s[idx], classes, 0.5)
        for name, vals in vec.items():
            assert vals[b] == pytest.approx(rep[name], abs=1e-12, nan_ok=True), name
        if len(classes) == 2:
            assert vec["roc_auc"][b] == pytest.approx(roc_auc_score(y, s, sample_weight=W[b]))
            assert vec["pr_auc"][b] == pytest.approx(average_precision_score(y, s, sample_weight=W[b]))


# --------------------------------------------------------------------------- bootstrap

def test_bootstrap_intervals_contain_point_estimates():
    for classes, (y, s, pid), t in [(BIN, binary_data(), 0.5), (TRI, three_class_data(), None)]:
        report = M.evaluate(y, s, pid, classes, threshold=t, n_boot=300, seed=3)
        assert report["n_test"] == len(y) and report["n_patients"] == len(set(pid))
        for name, m in report["metrics"].items():
            lo, hi = m["ci95"]
            assert lo <= m["value"] <= hi, name
            assert hi - lo > 0, name
        cm = np.array(report["confusion_matrix"])
        assert report["metrics"]["accuracy"]["value"] == pytest.approx(np.trace(cm) / len(y))


def test_patient_bootstrap_wider_than_image_bootstrap_when_one_patient_owns_many_images():
    # 30 single-image patients all classified correctly, one patient with 50 images all missed
    y = np.r_[np.ones(50, int), np.tile([0, 1], 15)]
    s = np.r_[np.full(50, 0.2), np.tile([0.1, 0.9], 15)]
    pid_patient = np.r_[["big"] * 50, [f"s{i}" for i in range(30)]]
    pid_image = np.arange(len(y))                 # every image its own "patient"
    ci_p = M.bootstrap_ci(y, s, pid_patient, BIN, threshold=0.5, n_boot=500, seed=0)
    ci_i = M.bootstrap_ci(y, s, pid_image, BIN, threshold=0.5, n_boot=500, seed=0)
    width = lambda ci: ci["accuracy"][1] - ci["accuracy"][0]  # noqa: E731
    assert width(ci_p) > 2 * width(ci_i)
    assert width(ci_p) > 0.4


def test_bootstrap_reproducible_with_seed():
    y, s, _ = binary_data(80, seed=7)
    pid = np.arange(len(y))
    a = M.bootstrap_ci(y, s, pid, BIN, 0.5, n_boot=200, seed=11)
    b = M.bootstrap_ci(y, s, pid, BIN, 0.5, n_boot=200, seed=11)
    c = M.bootstrap_ci(y, s, pid, BIN, 0.5, n_boot=200, seed=12)
    assert a == b
    assert a != c


def test_bootstrap_skips_undefined_resamples():
    # 2 positive patients among 12: many resamples have no positive image -> AUC undefined there
    y = np.r_[np.zeros(10, int), np.ones(2, int)]
    s = np.r_[np.linspace(0.05, 0.6, 10), [0.7, 0.4]]
    ci = M.bootstrap_ci(y, s, np.arange(12), BIN, 0.5, n_boot=300, seed=0)
    assert all(math.isfinite(v) for v in ci["roc_auc"])
    assert 0.0 <= ci["roc_auc"][0] <= ci["roc_auc"][1] <= 1.0


def test_bootstrap_is_fast():
    y, s, pid = binary_data(200, seed=3, images_per_patient=2)
    start = time.perf_counter()
    M.bootstrap_ci(y, s, pid, BIN, 0.5, n_boot=2000, seed=0)
    y3, p3, pid3 = three_class_data(200)
    M.bootstrap_ci(y3, p3, pid3, TRI, n_boot=2000, seed=0)
    assert time.perf_counter() - start < 10.0


# --------------------------------------------------------------------------- paired test

def test_paired_auc_identical_models():
    y, s, pid = binary_data()
    r = M.paired_auc_test(y, s, s.copy(), pid, n_boot=300, seed=0)
    assert r["diff"] == 0.0 and r["p_value"] == 1.0
    assert r["ci95"] == [0.0, 0.0]


def test_paired_auc_clearly_better_model():
    y, weak, pid = binary_data(240, seed=4)
    rng = np.random.default_rng(9)
    strong = np.clip(0.1 + 0.8 * y + rng.normal(0, 0.05, len(y)), 0, 1)
    r = M.paired_auc_test(y, strong, weak, pid, n_boot=500, seed=0)
    assert r["auc_a"] > r["auc_b"]
    assert r["diff"] == pytest.approx(r["auc_a"] - r["auc_b"])
    assert r["ci95"][0] > 0 and r["p_value"] < 0.01
    y3, p3, pid3 = three_class_data()
    r3 = M.paired_auc_test(y3, p3, p3, pid3, n_boot=100)
    assert r3["auc_a"] == pytest.approx(roc_auc_score(y3, p3, multi_class="ovr"))
    assert r3["p_value"] == 1.0


# --------------------------------------------------------------------------- records

def _record(**kw):
    y, s, pid = binary_data()
    report = M.evaluate(y, s, pid, BIN, threshold=0.47, n_boot=100, seed=0)
    return M.metrics_record(report, "densenet121", "covid_vs_normal", "imagenet",
                            extra={"image_size": 224, "seed": 42}, threshold_rule="youden", **kw)


def test_record_schema_and_round_trip(tmp_path):
    rec = _record()
    for key in M.REQUIRED_KEYS:
        assert key in rec
    assert rec["threshold_rule"] == "youden" and rec["extra"]["n_bootstrap"] == 100
    rec["metrics"]["ppv"] = {"value": float("nan"), "ci95": [float("nan"), None]}
    path = M.save_metrics(rec, tmp_path / "metrics" / "densenet121.json")
    text = path.read_text()
    assert "NaN" not in text and json.loads(text) == json.loads(json.dumps(json.loads(text), sort_keys=True))
    assert list(json.loads(text)) == sorted(json.loads(text))
    loaded = M.load_metrics(path)
    assert loaded["metrics"]["ppv"] == {"value": None, "ci95": [None, None]}
    assert loaded["metrics"]["roc_auc"] == rec["metrics"]["roc_auc"]
    assert loaded["confusion_matrix"] == rec["confusion_matrix"]
    y3, p3, pid3 = three_class_data()
    rec3 = M.metrics_record(M.evaluate(y3, p3, pid3, TRI, n_boot=50), "m", "three_class", "random")
    assert rec3["threshold"] is None and rec3["threshold_rule"] == "argmax"
    M.validate_record(rec3)


def test_validate_record_rejections():
    rec = _record()
    bad = {k: v for k, v in rec.items() if k != "threshold"}
    with pytest.raises(ValueError, match="threshold"):
        M.validate_record(bad)
    bad = json.loads(json.dumps(rec))
    del bad["metrics"]["roc_auc"]["ci95"]
    with pytest.raises(ValueError, match="roc_auc"):
        M.validate_record(bad)
    bad = json.loads(json.dumps(rec))
    bad["metrics"]["accuracy"]["value"] = 0.929     # the published bug: not trace/n
    bad["metrics"]["accuracy"]["ci95"] = [0.0, 1.0]
    with pytest.raises(ValueError, match="accuracy"):
        M.validate_record(bad)
    bad = json.loads(json.dumps(rec))
    bad["threshold"] = None
    with pytest.raises(ValueError, match="threshold"):
        M.validate_record(bad)


def test_metrics_table_and_markdown():
    rec = _record()
    table = M.metrics_table([rec, {**rec, "model": "resnet50"}])
    assert list(table["model"]) == ["densenet121", "resnet50"]
    assert {"task", "weights", "n_test", "threshold", "roc_auc"} <= set(table.columns)
    assert pd.Series(table["roc_auc"]).str.fullmatch(r"\d\.\d{3} \[\d\.\d{3}, \d\.\d{3}\]").all()
    md = M.table_markdown(table)
    lines = md.strip().splitlines()
    assert lines[0].startswith("| model |") and set(lines[1]) <= set("|-") and len(lines) == 4


def test_classification_report_df():
    df = M.classification_report_df([0, 1, 1, 0], [0, 1, 0, 0], BIN)
    assert {"normal", "covid", "macro avg"} <= set(df.index)
    assert df.loc["covid", "recall"] == pytest.approx(0.5)


# --------------------------------------------------------------------------- plots

def _assert_labelled(fig):
    assert (fig._suptitle and fig._suptitle.get_text()) or any(ax.get_title() for ax in fig.axes)
    for ax in fig.axes:
        if ax.get_label() == "<colorbar>":
            continue
        assert ax.get_xlabel(), ax
        assert ax.get_ylabel(), ax


def test_plots_return_titled_labelled_figures(tmp_path):
    from cxrbook.plots import savefig
    y, s, _ = binary_data()
    y3, p3, _ = three_class_data()
    m = M.compute_metrics(y, s, BIN, 0.5)
    figs = {
        "cm": M.plot_confusion(m["confusion_matrix"], BIN, "Confusion (test)"),
        "rocpr": M.plot_roc_pr(y, s, BIN, "ROC / PR (test)"),
        "rocpr3": M.plot_roc_pr(y3, p3, TRI, "ROC / PR three-class"),
        "rel": M.plot_reliability(y, s, "Reliability (test)"),
        "overlay": M.plot_roc_overlay({"a": (y, s), "b": (y, 1 - s)}, "ROC overlay"),
    }
    for name, fig in figs.items():
        assert isinstance(fig, matplotlib.figure.Figure), name
        _assert_labelled(fig)
        assert savefig(fig, tmp_path, name).exists()
    roc_ax = figs["rocpr"].axes[0]
    assert roc_ax.get_xlabel() == "False positive rate (1 - specificity)"
    assert len(figs["rocpr3"].axes[0].get_lines()) == 4       # 3 classes + chance line
